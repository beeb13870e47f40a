"""Own data: a study's front on Fashion-MNIST at 8 bits (discretized logistic, bits/dim) against
hand-designed baselines at equal training, and the tabular preset's front (Gaussian, nats).

1. Fashion-MNIST 8-bit: the ``fashion_mnist_8bit`` preset (its per-trial proxy recipe: 2 epochs on
   20k images) finds a front of −ELBO vs packed bytes. Then every front spec and the seeds'
   hand-designed FP32 VAEs (MLP 784-400-400-20 and the conv VAE of the compression report) are
   retrained with one recipe (``--epochs`` on the 50k training split, Adam, cosine, 100-step
   warm-up, seed 0) and scored on the 10k test set: −ELBO in nats and bits/dim, packed bytes.
2. Tabular: the ``tabular_breast_cancer`` preset (scikit-learn's 569 x 30 table, standardised,
   Gaussian likelihood) runs to its budget; its front's specs and a hand-designed FP32 MLP
   (30-64-64-8) are retrained with the preset's recipe and scored on the test split (57 rows);
   a diagonal Gaussian fitted to the training split (the standardisation itself, no model) is the
   floor a VAE must beat.

Results are cached by spec id in ``--out`` (a rerun resumes). Usage::

    python benchmarks/own_data.py --data-root .data --out benchmarks/results/own_data.json \\
        --png benchmarks/results/own_data.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

from compression_report import SEED_CONV, SEED_MLP  # noqa: E402
from evaluator import TrainConfig, evaluate_neg_elbo, load_data, seeded_model, train  # noqa: E402
from search_space import ArchSpec, pack_model  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402
from studies.report import load_view  # noqa: E402
from studies.run import run_search  # noqa: E402

TAB_BASELINE = ArchSpec.mlp((64, 64), 8, input_shape=(30,), likelihood="gaussian")


def run_study(preset: str, args, trials: int | None = None):
    cfg = StudyConfig.load(REPO / "studies" / "presets" / f"{preset}.yaml")
    cfg.data_root = args.data_root
    runs = Path(args.runs_dir)
    resume = (runs / cfg.name / "study.db").exists()
    t0 = time.perf_counter()
    summary = run_search(cfg, runs_dir=runs, resume=resume, n_trials=trials, progress=False)
    view = load_view(cfg.name, runs)
    front = view.front
    print(f"{preset}: {summary.finished} trials, front {len(front)}, hypervolume {summary.hypervolume:.4f}, "
          f"{time.perf_counter() - t0:.0f} s this run", flush=True)
    return cfg, view, front


def front_specs(view, front) -> list[tuple[int, ArchSpec]]:
    """The front's distinct specs (a spec proposed twice is one reused trial, not two points), by trial."""
    seen, out = set(), []
    for _, t in front.sort_values("trial").iterrows():
        spec = ArchSpec.from_json(trial_attrs(view.study.trials[int(t["trial"])])["spec"])
        if spec.id not in seen:
            seen.add(spec.id)
            out.append((int(t["trial"]), spec))
    return out


def retrain_score(spec: ArchSpec, data, recipe: TrainConfig) -> dict:
    model = seeded_model(spec, recipe.seed, recipe.device)
    res = train(model, data.train, recipe)
    test = evaluate_neg_elbo(model, data.test)
    row = {"spec_id": spec.id, "spec": spec.to_dict(), "test_neg_elbo": test["neg_elbo"], "test_kl": test["kl"],
           "size_bytes": len(pack_model(model)), "params": model.num_params(), "train_seconds": res.seconds,
           "epochs": res.epochs, "mean_bits": spec.mean_bits}
    if "bits_per_dim" in test:
        row["test_bits_per_dim"] = test["bits_per_dim"]
    return row


def cached(results: dict, key: str, fn, out: Path) -> dict:
    if key not in results:
        results[key] = fn()
        out.write_text(json.dumps(results, indent=2))
    return results[key]


def fashion_part(args, results: dict, out: Path) -> list[dict]:
    cfg, view, front = run_study("fashion_mnist_8bit", args, args.trials)
    data = load_data(cfg.dataset, args.data_root)
    recipe = TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-3, lr_schedule="cosine", lr_warmup_steps=100,
                         seed=0)
    rows = []
    baselines = [("seed MLP 784-400-400-20, FP32 (hand-designed)", SEED_MLP),
                 ("seed conv VAE 32-64 + FC 256, FP32 (hand-designed)", SEED_CONV)]
    for label, spec in baselines:
        spec = spec.replace(likelihood="discretized_logistic")
        r = cached(results, f"fm8/{spec.id}/{args.epochs}", lambda: retrain_score(spec, data, recipe), out)
        rows.append({**r, "kind": "baseline", "label": label})
        print(f"  {label}: {r['test_bits_per_dim']:.4f} bits/dim, {r['size_bytes']:,} B", flush=True)
    for trial, spec in front_specs(view, front):
        t = front.set_index("trial").loc[trial]
        r = cached(results, f"fm8/{spec.id}/{args.epochs}", lambda: retrain_score(spec, data, recipe), out)
        rows.append({**r, "kind": "front", "label": f"front trial {trial}",
                     "val_neg_elbo_proxy": float(t["neg_elbo"]), "val_bits_per_dim_proxy": float(t["bits_per_dim"])})
        print(f"  front {spec.id} ({spec.family}, mean {spec.mean_bits:.1f} bits): {r['test_bits_per_dim']:.4f} "
              f"bits/dim, {r['size_bytes']:,} B", flush=True)
    return rows


def tabular_part(args, results: dict, out: Path) -> tuple[list[dict], float]:
    cfg, view, front = run_study("tabular_breast_cancer", args)
    data = load_data(cfg.dataset)
    recipe = TrainConfig(**{**cfg.train.to_dict(), "seed": 0})
    # the floor: a diagonal Gaussian of the training split = N(0, 1) per standardised feature
    floor = float(-torch.distributions.Normal(0.0, 1.0).log_prob(data.test.double()).sum(1).mean())
    rows = []
    r = cached(results, f"tab/{TAB_BASELINE.id}", lambda: retrain_score(TAB_BASELINE, data, recipe), out)
    rows.append({**r, "kind": "baseline", "label": "MLP 30-64-64-8, FP32 (hand-designed)"})
    for trial, spec in front_specs(view, front):
        t = front.set_index("trial").loc[trial]
        r = cached(results, f"tab/{spec.id}", lambda: retrain_score(spec, data, recipe), out)
        rows.append({**r, "kind": "front", "label": f"front trial {trial}", "val_neg_elbo_proxy": float(t["neg_elbo"])})
    for r in rows:
        print(f"  {r['label']} {r['spec_id']}: test −ELBO {r['test_neg_elbo']:.2f} nats, {r['size_bytes']:,} B",
              flush=True)
    print(f"  diagonal Gaussian of the training split (no model): {floor:.2f} nats", flush=True)
    return rows, floor


def table(rows: list[dict], image: bool) -> str:
    head = "| | spec | family | mean bits | packed bytes | test −ELBO (nats) |" + (" bits/dim |" if image else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["size_bytes"]):
        fam = r["spec"]["family"]
        line = (f"| {r['label']} | {r['spec_id']} | {fam} | {r['mean_bits']:.1f} | {r['size_bytes']:,} | "
                f"{r['test_neg_elbo']:.2f} |")
        if image:
            line += f" {r['test_bits_per_dim']:.4f} |"
        lines.append(line)
    return "\n".join(lines)


def plot(fm: list[dict], tab: list[dict], floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, rows, key, ylabel in ((axes[0], fm, "test_bits_per_dim", "test bits/dim (Fashion-MNIST 8-bit)"),
                                  (axes[1], tab, "test_neg_elbo", "test −ELBO, nats (breast cancer, standardised)")):
        for kind, style in (("front", {"marker": "o", "color": "tab:blue"}), ("baseline", {"marker": "s", "color": "tab:red"})):
            rs = [r for r in rows if r["kind"] == kind]
            ax.scatter([r["size_bytes"] for r in rs], [r[key] for r in rs], s=60, edgecolors="black",
                       label="study front, retrained" if kind == "front" else "hand-designed FP32", **style)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("packed model size (bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[1].axhline(floor, color="grey", ls="--", label="diagonal Gaussian of the training split")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle("Own data: fronts found by vaenas vs hand-designed VAEs, equal training", fontsize=10)
    fig.savefig(path, dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--runs-dir", default="runs/bench_own_data")
    ap.add_argument("--trials", type=int, default=None, help="override the Fashion-MNIST preset's budget")
    ap.add_argument("--epochs", type=float, default=5, help="Fashion-MNIST retraining epochs (same for every model)")
    ap.add_argument("--out", default="benchmarks/results/own_data.json")
    ap.add_argument("--png", default="benchmarks/results/own_data.png")
    args = ap.parse_args(argv)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    t0 = time.perf_counter()
    torch.set_num_threads(2)
    fm = fashion_part(args, results, out)
    tab, floor = tabular_part(args, results, out)
    print("\n## Fashion-MNIST 8-bit (discretized logistic)\n" + table(fm, True))
    print("\n## Breast cancer table (Gaussian)\n" + table(tab, False))
    print(f"\nfloor (diagonal Gaussian of the training split): {floor:.2f} nats; total wall time this run "
          f"{time.perf_counter() - t0:.0f} s")
    results["summary"] = {"fashion_mnist_8bit": fm, "tabular": tab, "tabular_floor_nats": floor,
                          "fm_epochs": args.epochs}
    out.write_text(json.dumps(results, indent=2))
    plot(fm, tab, floor, Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
