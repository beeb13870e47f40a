"""Anomaly detection with small VAEs: the one-class protocol on MNIST and Fashion-MNIST, and a real table.

One-class protocol (Ruff et al. 2018): each class in turn is normal; the model trains on that class's
training images only (less the 10 % held out for validation); the official test set, all ten classes,
is the test split. Per class, the same ``--specs`` specs (drawn once from the space below, each
<= ``--max-bytes`` packed) are trained and scored on validation with every score; the Pareto front is
(validation AUROC, packed bytes). Reported per class: the front's best *test* AUROC and its bytes,
the smallest front model within 1 point of that, and - the honest figure - the test AUROC of the
model with the best *validation* AUROC. Which score won (on validation) is counted over every trial:
the score searched as a dimension.

Table: scikit-learn's breast-cancer data, benign normal, malignant the anomalies (Gaussian likelihood,
features standardised on the normal training rows).

    python benchmarks/anomaly.py [--datasets mnist fashion_mnist breast_cancer] [--specs 10] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from evaluator.anomaly import test_figures
from evaluator.data import load_data
from evaluator.latency import LatencyConfig
from evaluator.objectives import EvalFailure, Evaluator
from evaluator.train import TrainConfig
from search_space import SearchSpace, pack_model
from strategies.pareto import non_dominated_mask

HERE = Path(__file__).resolve().parent
IMAGE_SPACE = {"family": ["mlp"], "latent_dim": [8, 16, 32], "activation": ["relu", "silu"],
               "mlp": {"depth": [1, 2], "width": [64, 128, 256]}, "decoder": "mirror", "weight_bits": [2, 4, 8],
               "bits_per_layer": True}
TABLE_SPACE = {**IMAGE_SPACE, "latent_dim": [2, 4, 8], "mlp": {"depth": [1, 2], "width": [16, 32, 64]}}
TINY_SPACE = {**IMAGE_SPACE, "latent_dim": [4, 8, 16], "mlp": {"depth": [1, 2], "width": [8, 16, 24, 32]}}  # --tiny
TASK = {"kind": "anomaly", "score": "all", "threshold": {"fpr": 0.05}}
DATASETS = {"mnist": ("mnist", range(10), IMAGE_SPACE),
            "fashion_mnist": ("fashion_mnist", range(10), IMAGE_SPACE),
            "breast_cancer": ({"source": "sklearn", "name": "breast_cancer", "likelihood": "gaussian"}, ["benign"],
                              TABLE_SPACE)}


def draw_specs(space: dict, data, n: int, max_bytes: int, seed: int):
    from evaluator.costs import static_costs

    sp = SearchSpace.from_dict(space).bind_data(data.input_shape, data.likelihood, "benchmark")
    rng, out = random.Random(seed), []
    for _ in range(10_000):
        s = sp.sample(rng)
        if static_costs(s).size_bytes <= max_bytes and s.id not in {x.id for x in out}:
            out.append(s)
        if len(out) == n:
            break
    return out


def one_class(name: str, normal, space: dict, args) -> dict:
    ds = DATASETS[name][0]
    data = load_data(ds, args.data_root, task={**TASK, "normal": [normal]})
    specs = draw_specs(space, data, args.specs, args.max_bytes, args.seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device="cpu",
                      lr_schedule="cosine")
    ev = Evaluator(data, cfg, LatencyConfig(backend="torch", repeats=2, warmup=0))
    rows = []
    t0 = time.perf_counter()
    for spec in specs:
        res, model = ev.evaluate_with_model(spec)
        if isinstance(res, EvalFailure):
            rows.append({"spec_id": spec.id, "failed": res.reason})
            continue
        test = test_figures(model, data.score_test, data.test_labels, res.anomaly)
        rows.append({"spec_id": spec.id, "bytes": len(pack_model(model)), "val_auroc": res.auroc,
                     "score": res.anomaly["score"], "val_auroc_by_score": res.anomaly["val_auroc_by_score"],
                     "threshold_val_fpr": res.anomaly["val_fpr"], **test})
    ok = [r for r in rows if "failed" not in r]
    mask = non_dominated_mask([[-r["val_auroc"], r["bytes"]] for r in ok])
    front = [r for r, m in zip(ok, mask) if m]
    best = max(front, key=lambda r: r["test_auroc"])
    small = min((r for r in front if r["test_auroc"] >= best["test_auroc"] - 0.01), key=lambda r: r["bytes"])
    chosen = max(ok, key=lambda r: r["val_auroc"])
    out = {"normal": normal, "counts": data.anomaly_counts, "seconds": time.perf_counter() - t0, "rows": rows,
           "front_best_test_auroc": best["test_auroc"], "front_best_bytes": best["bytes"],
           "smallest_within_1pt_test_auroc": small["test_auroc"], "smallest_within_1pt_bytes": small["bytes"],
           "val_chosen_test_auroc": chosen["test_auroc"], "val_chosen_bytes": chosen["bytes"],
           "val_chosen_score": chosen["score"], "val_chosen_test_fpr": chosen["test_fpr"],
           "val_chosen_test_tpr": chosen["test_tpr"]}
    print(f"{name} normal {normal}: front best test AUROC {best['test_auroc']:.4f} at {best['bytes']:,} B; smallest "
          f"within 1 pt {small['test_auroc']:.4f} at {small['bytes']:,} B; best-on-validation model: test AUROC "
          f"{chosen['test_auroc']:.4f} ({chosen['score']}, {chosen['bytes']:,} B, test FPR {chosen['test_fpr']:.3f} "
          f"at its validation threshold); {out['seconds']:.0f} s", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--classes", nargs="+", type=int, default=None, help="only these normal classes (images)")
    ap.add_argument("--specs", type=int, default=10)
    ap.add_argument("--epochs", type=float, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--max-bytes", type=int, default=None, help="packed-size cap of the drawn specs (default 65536)")
    ap.add_argument("--tiny", action="store_true", help="the moonshot: image specs <= 16 KB (widths 8-32; sets "
                                                            "--max-bytes 16384 unless given)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "anomaly.json"))
    args = ap.parse_args(argv)
    args.max_bytes = args.max_bytes or (16384 if args.tiny else 65536)
    torch.set_num_threads(args.threads)
    doc = {"args": vars(args), "task": TASK, "results": {}}
    for name in args.datasets:
        _, classes, space = DATASETS[name]
        space = TINY_SPACE if args.tiny and name != "breast_cancer" else space
        if args.classes is not None and name != "breast_cancer":
            classes = args.classes
        runs = [one_class(name, c, space, args) for c in classes]
        wins = Counter(r["score"] for run in runs for r in run["rows"] if "score" in r)
        summary = {k: float(np.mean([r[k] for r in runs])) for k in (
            "front_best_test_auroc", "smallest_within_1pt_test_auroc", "val_chosen_test_auroc")}
        summary["max_bytes_chosen"] = max(max(r["front_best_bytes"], r["val_chosen_bytes"]) for r in runs)
        summary["score_wins_on_validation"] = dict(wins)
        doc["results"][name] = {"classes": runs, "summary": summary}
        print(f"{name} mean over {len(runs)} normal classes: front best test AUROC "
              f"{summary['front_best_test_auroc']:.4f}, smallest within 1 pt {summary['smallest_within_1pt_test_auroc']:.4f}, "
              f"best-on-validation {summary['val_chosen_test_auroc']:.4f}; every chosen model <= "
              f"{summary['max_bytes_chosen']:,} B; score with the best validation AUROC per trial: {dict(wins)}",
              flush=True)
        Path(args.out).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
