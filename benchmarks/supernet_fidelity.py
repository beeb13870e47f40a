"""Supernet fidelity: does the −ELBO estimated with inherited weights rank specs like standalone training?

Trains one MLP (or, with `--family conv`, conv) supernet on MNIST (sandwich rule + in-place distillation), samples N distinct
specs of the same space, and for each: the ESTIMATE (validation −ELBO of ``supernet.extract``)
and the MEASUREMENT (validation −ELBO after standalone training from scratch, same epochs and
recipe for every spec). The estimate is depth-calibrated as in studies (``evaluator/supernet.py``:
the smallest and largest spec of each depth are trained standalone with the same recipe and
their offsets interpolated in log(params)); the raw τ and the τ within each depth are printed
too. Prints Kendall τ and Spearman ρ (target: τ >= 0.7), writes a scatter PNG and
``benchmarks/results/supernet_fidelity.json``. Options: ``--finetune-steps N`` fine-tunes each
spec's inherited weights N steps before estimating (anchors too, as studies do); ``--sweep-finetune``
scores other fine-tune lengths on the same supernet and ground truth; ``--ceiling-seed S`` trains
every spec a second time with seed S and prints the seed-vs-seed τ, the ground truth's noise ceiling.

    python benchmarks/supernet_fidelity.py --data-root .data
    python benchmarks/supernet_fidelity.py --data-root .data --family conv --lr-warmup 100 \
        --finetune-steps 50 --sweep-finetune 0,100,200 --ceiling-seed 1 \
        --out benchmarks/results/supernet_fidelity_conv.json --png benchmarks/results/supernet_fidelity_conv.png
    python benchmarks/supernet_fidelity.py --data-root .data --n-specs 4 --supernet-epochs 0.2 --epochs 0.2   # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

from evaluator import TrainConfig, evaluate_neg_elbo, load_data, seeded_model, train
from evaluator.supernet import DepthCalibration, SandwichConfig, anchor_specs, finetune_config, train_supernet
from search_space.supernet import group_of
from search_space import SearchSpace

CONV_SPACE = {
    "family": ["conv"], "latent_dim": [8, 16, 32], "activation": ["relu"],
    "conv": {"depth": [1, 2], "channels": [8, 16, 32], "kernel": [3, 5], "stride": [2],
             "fc_depth": [0, 1], "fc_width": [64, 128, 256]},
    "decoder": "mirror", "weight_bits": [2, 4, 8, 32], "bits_per_layer": True,
}
SPACE = {
    "family": ["mlp"], "latent_dim": [8, 16, 32], "activation": ["relu"],
    "mlp": {"depth": [1, 2], "width": [64, 128, 256, 400]},
    "decoder": "mirror", "weight_bits": [2, 4, 8, 32], "bits_per_layer": True,
}


SHAPE_KEYS = ("enc_hidden", "enc_channels", "kernels")


def shape(spec) -> dict:
    """The layer shape of a spec for printing and the JSON rows (conv fields only for conv specs)."""
    return {k: list(getattr(spec, k)) for k in SHAPE_KEYS if k == "enc_hidden" or spec.family == "conv"}


def finetuned(net, spec, data, cfg: TrainConfig, steps: int):
    """The spec's inherited weights after ``steps`` constant-lr steps (as SupernetEvaluator does)."""
    model = net.extract(spec)
    train(model, data.train, finetune_config(cfg, steps))
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-specs", type=int, default=20)
    ap.add_argument("--supernet-epochs", type=float, default=10)
    ap.add_argument("--epochs", type=float, default=5, help="standalone epochs (the same for every spec)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-warmup", type=int, default=0,
                    help="linear lr warm-up steps for the supernet and every standalone run (0: none)")
    ap.add_argument("--n-random", type=int, default=2, help="random specs per sandwich step")
    ap.add_argument("--kd-weight", type=float, default=1.0, help="in-place distillation weight")
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="fine-tune each spec's inherited weights this many steps before estimating")
    ap.add_argument("--sweep-finetune", default="",
                    help="comma-separated fine-tune step counts also scored against the same standalone "
                         "figures (calibrated τ and ρ each; e.g. 0,100,200); the pass/fail stays --finetune-steps")
    ap.add_argument("--no-per-depth-max", action="store_true",
                    help="sandwich: train only the overall largest spec, not the widest of every depth")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", choices=["mlp", "conv"], default="mlp",
                    help="which space: the MLP one or the conv one (elastic channels and kernels)")
    ap.add_argument("--out", default="benchmarks/results/supernet_fidelity.json")
    ap.add_argument("--png", default="benchmarks/results/supernet_fidelity.png")
    ap.add_argument("--no-calibrate", action="store_true",
                    help="skip the per-depth calibration on standalone-trained anchor specs")
    ap.add_argument("--ceiling-seed", type=int, default=None,
                    help="also train every spec standalone with this seed: Kendall tau between the two seeds' "
                         "figures is the noise ceiling of the ground truth")
    ap.add_argument("--no-reuse", action="store_true",
                    help="retrain every standalone spec even if --out holds its figure for the same recipe")
    args = ap.parse_args(argv)
    try:
        sweep_steps = [int(v) for v in args.sweep_finetune.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--sweep-finetune: expected comma-separated integers, got {args.sweep_finetune!r}")
    torch.set_num_threads(2)
    from scipy.stats import kendalltau, spearmanr

    space_dict = SPACE if args.family == "mlp" else CONV_SPACE
    space = SearchSpace.from_dict(space_dict)
    data = load_data("mnist", args.data_root, n_train=args.n_train)
    cfg = TrainConfig(epochs=args.supernet_epochs, batch_size=100, lr=args.lr, seed=args.seed, lr_schedule="cosine",
                      lr_warmup_steps=args.lr_warmup, device="cpu")
    t0 = time.perf_counter()
    net, res = train_supernet(space, data, cfg, SandwichConfig(n_random=args.n_random, kd_weight=args.kd_weight, seed=args.seed,
                                                           per_depth_max=not args.no_per_depth_max))
    t_super = time.perf_counter() - t0
    print(f"supernet: {res.steps} steps in {t_super:.0f}s, final sandwich loss {res.final_loss:.1f}", flush=True)

    rng = random.Random(args.seed)
    specs, seen = [], set()
    while len(specs) < args.n_specs:
        s = space.sample(rng)
        if s.id not in seen:
            seen.add(s.id)
            specs.append(s)
    # standalone figures do not depend on the supernet: reuse them from --out when the recipe matches
    cached: dict[str, dict] = {}
    recipe = {k: vars(args)[k] for k in ("data_root", "n_train", "epochs", "lr", "lr_warmup", "seed")}
    if not args.no_reuse and Path(args.out).exists():
        old = json.loads(Path(args.out).read_text())
        oargs = old["meta"]["args"]
        if old["meta"]["space"] == space_dict and all(oargs.get(k) == v for k, v in recipe.items()):
            cached = {r["spec_id"]: r for r in old["rows"] + old.get("anchors", [])}
    rows = []
    scfg = TrainConfig(epochs=args.epochs, batch_size=100, lr=args.lr, seed=args.seed, lr_schedule="cosine",
                       lr_warmup_steps=args.lr_warmup, device="cpu")
    def estimate(spec, steps: int | None = None) -> float:
        steps = args.finetune_steps if steps is None else steps
        if steps:
            return evaluate_neg_elbo(finetuned(net, spec, data, scfg, steps), data.val)["neg_elbo"]
        return evaluate_neg_elbo(net.extract(spec), data.val)["neg_elbo"]

    def standalone(spec, seed: int | None = None) -> tuple[float, float]:
        key = "measured_neg_elbo" if seed is None else f"measured_neg_elbo_seed{seed}"
        if key not in cached.setdefault(spec.id, {}):  # trained once per run (the sweep reuses it)
            seed_ = args.seed if seed is None else seed
            model = seeded_model(spec, seed_, "cpu")
            r = train(model, data.train, TrainConfig(**{**scfg.to_dict(), "seed": seed_}))
            cached[spec.id][key] = evaluate_neg_elbo(model, data.val)["neg_elbo"]
            cached[spec.id].setdefault("train_s", r.seconds)
        return cached[spec.id][key], cached[spec.id]["train_s"]

    # per-depth calibration on anchors (smallest and largest spec of each depth), as studies do
    anchors, cal = [], None
    if not args.no_calibrate:
        cal = DepthCalibration()
        for spec in anchor_specs(space):
            est_a, (meas_a, secs) = estimate(spec), standalone(spec)
            anchors.append({"spec_id": spec.id, "group": group_of(spec), **shape(spec), "latent_dim": spec.latent_dim,
                            "weight_bits": list(spec.weight_bits), "estimate_neg_elbo": est_a,
                            "measured_neg_elbo": meas_a, "train_s": secs})
            cal.add(spec, meas_a, est_a)
            print(f"anchor {spec.id} {shape(spec)} L={spec.latent_dim} bits={list(spec.weight_bits)}: "
                  f"estimate {est_a:.2f}, standalone {meas_a:.2f}", flush=True)
    for i, spec in enumerate(specs):
        t1 = time.perf_counter()
        raw = estimate(spec)
        est = raw + cal.offset(spec) if cal is not None else raw
        t_est = time.perf_counter() - t1
        reused = "measured_neg_elbo" in cached.get(spec.id, {})
        meas, train_s = standalone(spec)
        rows.append({"spec_id": spec.id, "group": group_of(spec), **shape(spec), "latent_dim": spec.latent_dim,
                     "weight_bits": list(spec.weight_bits), "estimate_neg_elbo": est, "raw_estimate_neg_elbo": raw,
                     "measured_neg_elbo": meas,
                     "estimate_s": t_est, "train_s": train_s, "standalone_reused": reused})
        if args.ceiling_seed is not None:
            rows[-1][f"measured_neg_elbo_seed{args.ceiling_seed}"] = standalone(spec, args.ceiling_seed)[0]
        print(f"[{i + 1:2d}/{len(specs)}] {spec.id} {shape(spec)} L={spec.latent_dim} "
              f"bits={list(spec.weight_bits)}: estimate {est:.2f}, standalone {meas:.2f} nats", flush=True)

    est = [r["estimate_neg_elbo"] for r in rows]
    meas = [r["measured_neg_elbo"] for r in rows]
    raws = [r["raw_estimate_neg_elbo"] for r in rows]
    tau = float(kendalltau(est, meas).statistic)
    rho = float(spearmanr(est, meas).statistic)
    tau_raw = float(kendalltau(raws, meas).statistic)
    by_depth = {}
    for d in sorted({r["group"] for r in rows}, key=str):
        rs = [r for r in rows if r["group"] == d]
        if len(rs) > 2:
            by_depth[d] = float(kendalltau([r["raw_estimate_neg_elbo"] for r in rs],
                                           [r["measured_neg_elbo"] for r in rs]).statistic)
    ok = tau >= 0.7
    sweep = {}
    for steps in sweep_steps:  # the same supernet, specs, anchors and standalone figures; only the fine-tune differs
        t1 = time.perf_counter()
        c = DepthCalibration()
        if not args.no_calibrate:
            for spec in anchor_specs(space):
                c.add(spec, standalone(spec)[0], estimate(spec, steps))
        e = [estimate(spec, steps) + c.offset(spec) for spec in specs]
        sweep[steps] = {"kendall_tau": float(kendalltau(e, meas).statistic),
                        "spearman": float(spearmanr(e, meas).statistic), "seconds": time.perf_counter() - t1}
    ceiling, vs_other = None, None
    if args.ceiling_seed is not None:
        other = [r[f"measured_neg_elbo_seed{args.ceiling_seed}"] for r in rows]
        ceiling = float(kendalltau(other, meas).statistic)
        mean2 = [(a + b) / 2 for a, b in zip(meas, other)]
        vs_other = {f"seed{args.ceiling_seed}": float(kendalltau(est, other).statistic),
                    "mean_of_two_seeds": float(kendalltau(est, mean2).statistic)}
    print()
    print("| spec | layers | latent | bits | supernet −ELBO (raw estimate) | calibrated estimate | "
          "standalone −ELBO (measured) |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["measured_neg_elbo"]):
        print(f"| {r['spec_id']} | {({k: r[k] for k in SHAPE_KEYS if k in r})} | {r['latent_dim']} | {r['weight_bits']} | "
              f"{r['raw_estimate_neg_elbo']:.2f} | {r['estimate_neg_elbo']:.2f} | {r['measured_neg_elbo']:.2f} |")
    print(f"\nraw estimates: Kendall τ = {tau_raw:.3f} (within one depth: "
          + ", ".join(f"depth {d}: {t:.3f}" for d, t in by_depth.items()) + ")")
    print(f"{'calibrated' if cal is not None else 'raw'} estimates: Kendall τ = {tau:.3f}, Spearman ρ = {rho:.3f} over {len(rows)} specs "
          f"(supernet {t_super:.0f}s; estimate {sum(r['estimate_s'] for r in rows) / len(rows):.2f}s/spec; "
          f"standalone {sum(r['train_s'] for r in rows) / len(rows):.1f}s/spec)")
    for steps, r in sweep.items():
        print(f"fine-tune sweep: {steps} steps per spec: calibrated Kendall τ = {r['kendall_tau']:.3f}, "
              f"Spearman ρ = {r['spearman']:.3f} ({r['seconds']:.0f}s for {len(specs)} specs + anchors)")
    if ceiling is not None:
        print(f"noise ceiling: standalone seed {args.seed} vs seed {args.ceiling_seed}: Kendall τ = {ceiling:.3f} "
              f"(the same recipe twice; an estimator cannot be expected to rank better than this)")
        print(f"the same estimates against seed {args.ceiling_seed}'s standalone figures: Kendall τ = "
              f"{vs_other[f'seed{args.ceiling_seed}']:.3f}; against the mean of both seeds: "
              f"{vs_other['mean_of_two_seeds']:.3f}")
    print(f"{'PASS' if ok else 'FAIL'}  kendall_tau_ge_0.7")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    bits = [sum(r["weight_bits"]) / len(r["weight_bits"]) for r in rows]
    sc = ax.scatter(meas, est, c=bits, cmap="viridis", s=50, edgecolors="black")
    lo, hi = min(est + meas), max(est + meas)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="estimate = measured")
    ax.set_xlabel(f"standalone-trained validation −ELBO (measured, {args.epochs:g} epochs)")
    how = [f"{args.finetune_steps}-step fine-tune"] if args.finetune_steps else []
    how += ["calibrated per group"] if cal is not None else []
    ax.set_ylabel("supernet validation −ELBO (ESTIMATE" + "".join(", " + h for h in how) + ")")
    ax.set_title(f"{args.family.upper()} supernet fidelity on MNIST: Kendall τ {tau:.2f}, Spearman ρ {rho:.2f}")
    fig.colorbar(sc, ax=ax, label="mean weight bits")
    ax.legend()
    ax.grid(alpha=0.3)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    out = Path(args.out)
    meta = {"args": vars(args), "space": space_dict, "torch": torch.__version__, "machine": platform.machine(),
            "python": platform.python_version(), "supernet_seconds": t_super, "supernet_steps": res.steps}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "anchors": anchors, "kendall_tau": tau, "spearman": rho,
                              "kendall_tau_raw": tau_raw, "kendall_tau_within_depth_raw": by_depth, "pass": ok,
                              "kendall_tau_seed_vs_seed": ceiling, "kendall_tau_vs_other_seed": vs_other,
                              "finetune_sweep": sweep,
                              "calibration": cal.to_dict() if cal is not None else None}, indent=2))
    tmp.replace(out)
    print(f"wrote {out} and {png}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
