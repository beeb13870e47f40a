"""Issue 18's compression target in budget mode (issue 35): the best −ELBO under 1/32 of the FP32 MLP's bytes.

Runs a one-objective study (``--preset``, default ``studies/presets/compression_budget.yaml``: −ELBO alone,
``size_bytes <= 1/32`` of the FP32 MLP's measured packed bytes), picks its best feasible trial as the
compression report does (:func:`compression_report.pick_target`) and retrains it with the report's own
recipe and scorer (``RowTrainer``: same epochs, batch, lr, schedule, QAT delay, seed; test −ELBO on the
whole test split; ``pack_model``'s exact bytes). The FP32 MLP's row - the reference - is read from the
report's JSON (``benchmarks/results/compression_<dataset>.json``), whose recipe must be the one asked for.
Prints the verdict and writes ``benchmarks/results/budget_target_<dataset>.json``.

    python benchmarks/budget_target.py --dataset mnist --data-root .data          # 22 min on 2 cores (MNIST)
    python benchmarks/budget_target.py --dataset fashion_mnist --data-root .data  # 22 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import compression_report as cr  # noqa: E402
from bench_out import earlier_json  # noqa: E402

OUT_KEYS = {"recipe", "reference", "limit", "study", "study_trial", "study_seconds", "row", "met"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--preset", default=str(ROOT / "studies/presets/compression_budget.yaml"))
    ap.add_argument("--trials", type=int, default=None, help="override the preset's trial budget")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"budget_target_{args.dataset}.json")
    earlier_json(out, OUT_KEYS, "budget_target")  # refuse someone else's file before hours of work
    report = json.loads((ROOT / "benchmarks" / "results" / f"compression_{args.dataset}.json").read_text())
    recipe = report["meta"]["recipe"]
    mlp = cr.row_named(report["rows"], "mlp-fp32")
    limit = mlp["packed_bytes"] // cr.GOAL_RATIO
    for k in ("epochs", "lr", "seed", "iwae_k", "iwae_n", "n_train", "n_test", "batch_size", "qat_delay"):
        setattr(args, k, recipe.get(k))
    args.fresh = False
    print(f"reference: the FP32 MLP, test −ELBO {mlp['test_neg_elbo']:.2f} in {mlp['packed_bytes']:,} B "
          f"(compression report); limit 1/{cr.GOAL_RATIO} = {limit:,} B; recipe {recipe}", flush=True)
    t0 = time.time()
    cfg = cr.study_config(args.preset, args, args.dataset, args.trials, constraints={"size_bytes": limit})
    view = cr.run_study(cfg, args)
    n, why = cr.pick_target(view.trials, limit)
    spec = cr._specs(view, [n])[n]
    study_s = time.time() - t0
    data = cr.report_data(recipe, args.data_root)
    model_dir = Path(args.runs_dir) / f"budget_target_{args.dataset}"
    model_dir.mkdir(parents=True, exist_ok=True)
    rt = cr.RowTrainer(args, data, cr.train_config(recipe, args.device), {}, model_dir)
    row, _ = rt.trained("vaenas-budget-32x", "found by vaenas", "budget mode", spec, note=why)
    met = row["packed_bytes"] <= limit and row["test_neg_elbo"] <= mlp["test_neg_elbo"]
    gap = 100 * (row["test_neg_elbo"] / mlp["test_neg_elbo"] - 1)
    print(f"\n{why}\nretrained: test −ELBO {row['test_neg_elbo']:.2f} nats in {row['packed_bytes']:,} B "
          f"({mlp['packed_bytes'] / row['packed_bytes']:.1f}x smaller than the FP32 MLP, {gap:+.2f} %): target "
          f"(<= {limit:,} B at <= {mlp['test_neg_elbo']:.2f}) {'MET' if met else f'MISSED by {gap:.2f} points'}; "
          f"study {study_s:.0f} s, retrain {row['train_seconds']:.0f} s", flush=True)
    out.write_text(json.dumps({"recipe": recipe, "reference": mlp, "limit": limit, "study": cfg.name,
                               "study_trial": n, "study_seconds": study_s, "row": row, "met": met}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
