"""Evaluator overhead: one MLP spec evaluated for 1 epoch on MNIST; the time outside training
(validation −ELBO, FLOP counting, packing, latency) must be < 25% of the total.

    python benchmarks/evaluator_overhead.py [--data-root DIR] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evaluator import Evaluator, LatencyConfig, Objectives, TrainConfig, load_data
from search_space import ArchSpec

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--out", default=str(HERE / "results" / "evaluator_overhead.json"))
    args = ap.parse_args(argv)
    data = load_data("mnist", args.data_root)
    spec = ArchSpec.mlp((400, 400), 20, bits=4)
    ev = Evaluator(data, TrainConfig(epochs=args.epochs, batch_size=100), LatencyConfig())
    t0 = time.perf_counter()
    obj = ev.evaluate(spec)
    total = time.perf_counter() - t0
    assert isinstance(obj, Objectives), obj
    outside = total - obj.train_seconds
    frac = outside / total
    print(f"spec {spec.id}: total {total:.2f}s, training {obj.train_seconds:.2f}s, outside training {outside:.2f}s "
          f"({100 * frac:.1f}%; scoring itself {obj.eval_seconds:.2f}s)")
    print(f"objectives: -ELBO {obj.neg_elbo:.2f}, flops {obj.flops:,}, bitops {obj.bitops:,}, params {obj.params:,}, "
          f"size {obj.size_bytes:,} B, latency {obj.latency_ms:.4f} ms (IQR {obj.latency_iqr_ms:.4f}, {obj.latency_path})")
    ok = frac < 0.25
    print(("PASS" if ok else "FAIL") + "  outside_training_lt_25pct")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"total_s": total, "train_s": obj.train_seconds, "outside_s": outside,
                               "fraction": frac, "objectives": obj.to_dict()}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
