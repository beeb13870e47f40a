"""Every strategy on MNIST: same space, objectives, per-trial training budget, bounds and trial budget.

Each (strategy, seed) is a real vaenas study (``studies.run.run_search``, SQLite in a temporary
runs dir): −ELBO on the validation split vs packed size vs measured latency. Hypervolume over the
feasible finished trials, in trial order, at 25/50/100% of the budget; mean ± std over seeds;
wall time per study. Writes a markdown table, ``benchmarks/results/strategies.json`` and a PNG of
hypervolume vs trials per strategy (mean with a ±1 std band).

    python benchmarks/strategy_comparison.py --data-root .data                     # 5 strategies x 3 seeds x 40 trials
    python benchmarks/strategy_comparison.py --strategies random rl --seeds 1 --trials 6   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the `strategies` package: keep its own folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from strategies.pareto import hypervolume, non_dominated_mask  # noqa: E402
from strategies import REGISTRY, extra_available  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.trials import is_feasible  # noqa: E402
from studies.run import run_search  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402

SPACE = {
    "family": ["mlp"], "latent_dim": [8, 16, 32], "activation": ["relu"],
    "mlp": {"depth": [1, 2], "width": [32, 64, 128, 256, 400]},
    "decoder": "mirror", "weight_bits": [2, 3, 4, 8, 32], "bits_per_layer": True,
}
OBJECTIVES = ["neg_elbo", "size_bytes", "latency_ms"]
BOUNDS = {"neg_elbo": [90, 250], "size_bytes": {"lo": 1000, "hi": 4000000, "log": True},
          "latency_ms": {"lo": 0.01, "hi": 2.0, "log": True}}


def study_config(strategy: str, seed: int, args, **extra) -> StudyConfig:
    return StudyConfig.from_dict({**extra,
        "name": f"bench-{strategy}-{seed}", "dataset": "mnist", "data_root": args.data_root, "n_train": args.n_train,
        "space": SPACE, "strategy": {"name": strategy}, "objectives": OBJECTIVES, "bounds": BOUNDS,
        "budget": {"trials": args.trials}, "seed": seed,
        "train": {"epochs": args.epochs, "batch_size": 100, "lr": 0.002, "device": "cpu"},
        "latency": {"repeats": 30, "warmup": 5, "threads": 1},
    })


def share_latency_across_studies() -> dict:
    """Measure each spec's latency once per benchmark run; every study that trains it gets that value.

    Timing jitter on a shared 2-core machine moves points across the front: re-running random
    search with the same seed (same specs, bit-identical −ELBO) changed its final hypervolume by up
    to 0.009 (``results/evolution_diagnostic_hv.json`` vs ``..._crowding.json``), more than the gaps
    between strategies. Common random numbers: all strategies see the same latency for the same spec.
    """
    import evaluator.objectives as eo

    real, cache = eo.measure_latency, {}

    def cached(model, cfg):
        if model.spec.id not in cache:
            cache[model.spec.id] = real(model, cfg)
        return cache[model.spec.id]

    eo.measure_latency = cached
    return cache


def hv_curve(study: optuna.Study, bounds, columns: list[int] | None = None) -> list[float]:
    """Hypervolume after each finished trial (COMPLETE or failed), in trial order (optionally of some objectives)."""
    pts, out = [], []
    cols = columns if columns is not None else list(range(len(bounds)))
    bs = [bounds[i] for i in cols]
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE or t.state == optuna.trial.TrialState.FAIL:
            if is_feasible(t):
                pts.append([t.values[i] for i in cols])
            out.append(hypervolume(pts, bs) if pts else 0.0)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--strategies", nargs="+", default=[n for n in REGISTRY if extra_available(n)])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/results/strategies.json")
    ap.add_argument("--png", default="benchmarks/results/strategies_hv.png")
    ap.add_argument("--darts", type=float, nargs="*", default=None, metavar="LAMBDA",
                    help="also run a DARTS lambda sweep study (seed 0) over these lambdas and plot its front "
                         "beside the strategies' (default sweep if given without values)")
    ap.add_argument("--darts-steps", type=int, default=300)
    ap.add_argument("--fronts-png", default="benchmarks/results/strategies_fronts.png")
    ap.add_argument("--fresh-latency", action="store_true",
                    help="measure latency in every trial (default: once per spec per run, shared by all studies)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    if not args.fresh_latency:
        share_latency_across_studies()

    curves: dict[str, list[list[float]]] = {}
    fronts: dict[str, list[tuple[float, float]]] = {}  # seed 0's trials: (size_bytes, −ELBO)
    darts_rows: list[dict] = []
    curves2: dict[str, list[list[float]]] = {}  # hypervolume of (−ELBO, size) only: no timing in it
    walls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as runs:
        for name in args.strategies:
            for seed in range(args.seeds):
                cfg = study_config(name, seed, args)
                t0 = time.perf_counter()
                summary = run_search(cfg, runs_dir=runs, progress=False)
                wall = time.perf_counter() - t0
                study = optuna.load_study(study_name=cfg.name, storage=summary.storage)
                c = hv_curve(study, cfg.bounds)[: args.trials]
                curves.setdefault(name, []).append(c)
                curves2.setdefault(name, []).append(hv_curve(study, cfg.bounds, [0, 1])[: args.trials])
                if seed == 0:
                    fronts[name] = [(t.values[1], t.values[0]) for t in study.get_trials(deepcopy=False)
                                    if is_feasible(t)]
                walls.setdefault(name, []).append(wall)
                print(f"{name:10s} seed {seed}: HV {c[-1]:.4f} after {len(c)} trials, {wall:.0f}s", flush=True)
        if args.darts is not None:
            lambdas = args.darts or [0, 1, 3, 10, 30, 100, 300, 1000]
            cfg = study_config("random", 0, args, darts={"lambdas": lambdas, "steps": args.darts_steps})
            cfg = StudyConfig.from_dict({**cfg.raw, "name": "bench-darts-0", "budget": {"trials": len(lambdas)}})
            t0 = time.perf_counter()
            summary = run_search(cfg, runs_dir=runs, progress=False)
            study = optuna.load_study(study_name=cfg.name, storage=summary.storage)
            by_id = {trial_attrs(t).get("spec_id"): t for t in study.get_trials(deepcopy=False)
                     if trial_attrs(t).get("proposed_by") == "darts" and is_feasible(t)}
            for s in study.user_attrs["darts_sweep"]:
                t = by_id.get(s["spec_id"])
                spec = json.loads(s["spec"])
                darts_rows.append({"lambda": s["lambda"], "spec_id": s["spec_id"], "duplicate": s["duplicate"],
                                   "enc_hidden": spec["enc_hidden"], "latent_dim": spec["latent_dim"],
                                   "weight_bits": spec["weight_bits"], "expected_size_bytes": s["expected_size_bytes"],
                                   "size_bytes": t.values[1] if t else None, "neg_elbo": t.values[0] if t else None,
                                   "latency_ms": t.values[2] if t else None})
            fronts["darts"] = [(r["size_bytes"], r["neg_elbo"]) for r in darts_rows
                               if not r["duplicate"] and r["size_bytes"] is not None]
            print(f"darts sweep: {len(lambdas)} lambdas, {time.perf_counter() - t0:.0f}s "
                  f"(sweep {study.user_attrs['darts_seconds']:.0f}s)", flush=True)

    fracs = (0.25, 0.5, 1.0)
    rows = []
    for name, cs in curves.items():
        a = np.array(cs)
        row = {"strategy": name, "seeds": len(cs), "trials": args.trials, "wall_s_mean": float(np.mean(walls[name]))}
        for f in fracs:
            i = max(1, int(round(f * args.trials))) - 1
            row[f"hv@{int(f * 100)}%"] = [float(a[:, i].mean()), float(a[:, i].std())]
        a2 = np.array(curves2[name])
        row["hv2@100%"] = [float(a2[:, -1].mean()), float(a2[:, -1].std())]
        rows.append(row)
    ref = next((r for r in rows if r["strategy"] == "random"), None)
    print()
    print("| strategy | HV @25% | HV @50% | HV @100% | HV(−ELBO, size) @100% | wall s / study |"
          + (" beats random @100%? |" if ref else ""))
    print("|---|---|---|---|---|---|" + ("---|" if ref else ""))
    for r in rows:
        cells = " | ".join(f"{r[k][0]:.4f} ± {r[k][1]:.4f}" for k in ("hv@25%", "hv@50%", "hv@100%", "hv2@100%"))
        beat = ""
        if ref:
            beat = " — |" if r is ref else f" {'yes' if r['hv@100%'][0] > ref['hv@100%'][0] else 'NO'} |"
        print(f"| {r['strategy']} | {cells} | {r['wall_s_mean']:.0f} |{beat}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if darts_rows:
        print("\n| λ | hidden | latent | bits | E[size] (logits) | packed bytes | −ELBO | latency ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r in darts_rows:
            dup = " (same spec as a smaller λ)" if r["duplicate"] else ""
            print(f"| {r['lambda']:g} | {r['enc_hidden']} | {r['latent_dim']} | {r['weight_bits']} | "
                  f"{r['expected_size_bytes']:,.0f} | {r['size_bytes']:,.0f} | {r['neg_elbo']:.2f} | "
                  f"{r['latency_ms']:.3f} |{dup}" if r["size_bytes"] is not None else
                  f"| {r['lambda']:g} | {r['enc_hidden']} | {r['latent_dim']} | {r['weight_bits']} | "
                  f"{r['expected_size_bytes']:,.0f} | — | — | — |{dup}")
        distinct = [r for r in darts_rows if not r["duplicate"] and r["size_bytes"] is not None]
        exp = [r["expected_size_bytes"] for r in darts_rows]
        span = max(r["size_bytes"] for r in distinct) / min(r["size_bytes"] for r in distinct) if distinct else 0
        mono = all(a >= b for a, b in zip(exp, exp[1:]))
        print(f"{'PASS' if len(distinct) >= 5 else 'FAIL'}  darts: {len(distinct)} distinct specs (>= 5)")
        print(f"{'PASS' if span >= 4 else 'FAIL'}  darts: packed sizes span {span:.1f}x (>= 4x)")
        print(f"{'PASS' if mono else 'FAIL'}  darts: expected size non-increasing in λ")
    if fronts:
        fig, ax = plt.subplots(figsize=(7.5, 5))
        for name, pts in fronts.items():
            if not pts:
                continue
            a = np.array(pts, dtype=float)
            nd = a[non_dominated_mask(a)]
            nd = nd[np.argsort(nd[:, 0])]
            if name == "darts":
                ax.scatter(a[:, 0], a[:, 1], marker="*", s=160, color="black", zorder=4,
                           label=f"DARTS λ sweep ({len(a)} specs)")
                ax.step(nd[:, 0], nd[:, 1], where="post", color="black", lw=1.5, ls="--")
            else:
                ax.step(nd[:, 0], nd[:, 1], where="post", lw=1.2, label=f"{name} (seed 0, {len(a)} trials)")
        ax.set_xscale("log")
        ax.set_xlabel("packed size (bytes)")
        ax.set_ylabel("validation −ELBO (nats, measured)")
        ax.set_title("MNIST: 2-D fronts (−ELBO vs size) per strategy, seed 0")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.savefig(args.fronts_png, dpi=120, bbox_inches="tight")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, cs in curves.items():
        a = np.array(cs)
        x = np.arange(1, a.shape[1] + 1)
        m, s = a.mean(0), a.std(0)
        ax.plot(x, m, label=f"{name} (final {m[-1]:.3f})")
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume (−ELBO, size, latency; normalised, ref = 1)")
    ax.set_title(f"MNIST, {args.seeds} seeds, {args.trials} trials, {args.n_train} images × {args.epochs:g} epoch/trial")
    ax.grid(alpha=0.3)
    ax.legend()
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120, bbox_inches="tight")
    out = Path(args.out)
    meta = {"args": vars(args), "space": SPACE, "objectives": OBJECTIVES, "bounds": BOUNDS, "torch": torch.__version__,
            "machine": platform.machine(), "python": platform.python_version()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "curves": curves, "curves_elbo_size": curves2,
                               "walls": walls, "darts": darts_rows, "fronts_seed0": fronts}, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
