"""Every strategy on MNIST: same space, objectives, per-trial training budget, bounds and trial budget.

Each (strategy, seed) is a real vaenas study (``studies.run.run_search``, SQLite in a temporary
runs dir): −ELBO on the validation split vs packed size vs measured latency. Hypervolume over the
feasible finished trials, in trial order, at 25/50/100% of the budget; mean ± std over seeds;
wall time per study. Writes a markdown table, ``benchmarks/results/strategies.json`` and a PNG of
hypervolume vs trials per strategy (mean with a ±1 std band).

    python benchmarks/strategies.py --data-root .data                     # 5 strategies x 3 seeds x 40 trials
    python benchmarks/strategies.py --strategies random rl --seeds 1 --trials 6   # smoke run
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

from evaluator import hypervolume  # noqa: E402
from strategies import REGISTRY, extra_available  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.run import is_feasible, run_search  # noqa: E402

SPACE = {
    "family": ["mlp"], "latent_dim": [8, 16, 32], "activation": ["relu"],
    "mlp": {"depth": [1, 2], "width": [32, 64, 128, 256, 400]},
    "decoder": "mirror", "weight_bits": [2, 3, 4, 8, 32], "bits_per_layer": True,
}
OBJECTIVES = ["neg_elbo", "size_bytes", "latency_ms"]
BOUNDS = {"neg_elbo": [90, 250], "size_bytes": {"lo": 1000, "hi": 4000000, "log": True},
          "latency_ms": {"lo": 0.01, "hi": 2.0, "log": True}}


def study_config(strategy: str, seed: int, args) -> StudyConfig:
    return StudyConfig.from_dict({
        "name": f"bench-{strategy}-{seed}", "dataset": "mnist", "data_root": args.data_root, "n_train": args.n_train,
        "space": SPACE, "strategy": {"name": strategy}, "objectives": OBJECTIVES, "bounds": BOUNDS,
        "budget": {"trials": args.trials}, "seed": seed,
        "train": {"epochs": args.epochs, "batch_size": 100, "lr": 0.002, "device": "cpu"},
        "latency": {"repeats": 30, "warmup": 5, "threads": 1},
    })


def hv_curve(study: optuna.Study, bounds) -> list[float]:
    """Hypervolume after each finished trial (COMPLETE or failed), in trial order."""
    pts, out = [], []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state == optuna.trial.TrialState.COMPLETE or t.state == optuna.trial.TrialState.FAIL:
            if is_feasible(t):
                pts.append(t.values)
            out.append(hypervolume(pts, bounds) if pts else 0.0)
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
    args = ap.parse_args(argv)
    torch.set_num_threads(2)

    curves: dict[str, list[list[float]]] = {}
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
                walls.setdefault(name, []).append(wall)
                print(f"{name:10s} seed {seed}: HV {c[-1]:.4f} after {len(c)} trials, {wall:.0f}s", flush=True)

    fracs = (0.25, 0.5, 1.0)
    rows = []
    for name, cs in curves.items():
        a = np.array(cs)
        row = {"strategy": name, "seeds": len(cs), "trials": args.trials, "wall_s_mean": float(np.mean(walls[name]))}
        for f in fracs:
            i = max(1, int(round(f * args.trials))) - 1
            row[f"hv@{int(f * 100)}%"] = [float(a[:, i].mean()), float(a[:, i].std())]
        rows.append(row)
    ref = next((r for r in rows if r["strategy"] == "random"), None)
    print()
    print("| strategy | HV @25% | HV @50% | HV @100% | wall s / study |" + (" beats random @100%? |" if ref else ""))
    print("|---|---|---|---|---|" + ("---|" if ref else ""))
    for r in rows:
        cells = " | ".join(f"{r[k][0]:.4f} ± {r[k][1]:.4f}" for k in ("hv@25%", "hv@50%", "hv@100%"))
        beat = ""
        if ref:
            beat = " — |" if r is ref else f" {'yes' if r['hv@100%'][0] > ref['hv@100%'][0] else 'NO'} |"
        print(f"| {r['strategy']} | {cells} | {r['wall_s_mean']:.0f} |{beat}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "curves": curves, "walls": walls}, indent=2))
    tmp.replace(out)
    print(f"\nwrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
