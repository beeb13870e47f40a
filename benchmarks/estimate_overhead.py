"""Per-trial overhead of supernet estimates vs the study's size: the loop alone, scoring stubbed out.

Runs a supernet-mode study (MNIST, the `mnist_supernet` preset's space and objectives, a 1-epoch
supernet on 5,000 images so setup is quick) whose scoring is replaced by a constant-time stub, so
what is left is what grows with a study if anything does: the strategy's proposal over the
history, ask/tell on the in-memory mirror, the one storage write. Prints the mean seconds per
trial around trial 100, 500 and 1,000 (start-to-start gaps of the 50 trials before each).

    python benchmarks/estimate_overhead.py --data-root .data
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402

from evaluator import Objectives  # noqa: E402
from evaluator.supernet import SupernetEvaluator  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.run import run_search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def stub(self, spec, seed=None):
    """Constant-time scoring: figures drawn from the spec id (deterministic)."""
    r = random.Random(spec.id)
    return Objectives(spec_id=spec.id, neg_elbo=r.uniform(90, 200), flops=1, bitops=1, params=1,
                      size_bytes=r.randint(1000, 10**6), latency_ms=r.uniform(0.01, 1), neg_elbo_is_estimate=True), None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--strategy", default="evolution")
    args = ap.parse_args(argv)
    d = yaml.safe_load((REPO / "studies" / "presets" / "mnist_supernet.yaml").read_text())
    d.update(name="overhead", n_train=5000, budget={"trials": args.trials}, strategy={"name": args.strategy},
             supernet={"epochs": 1, "n_val": 500, "remeasure": 0, "calibrate": False, "latency_table": False})
    if args.data_root:
        d["data_root"] = args.data_root
    SupernetEvaluator.evaluate_with_model = stub
    with tempfile.TemporaryDirectory() as runs:
        cfg = StudyConfig.from_dict(d)
        run_search(cfg, runs_dir=runs, progress=False)
        st = optuna.load_study(study_name="overhead", storage=f"sqlite:///{Path(runs) / 'overhead' / 'study.db'}")
        starts = np.array(sorted(t.datetime_start.timestamp() for t in st.trials))
    gaps = np.diff(starts)
    for at in (100, 500, 1000):
        if at - 50 < len(gaps):
            w = gaps[max(0, at - 50):min(at, len(gaps))]
            print(f"{args.strategy}: loop overhead per trial around trial {at}: {w.mean() * 1e3:.2f} ms "
                  f"(median {np.median(w) * 1e3:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
