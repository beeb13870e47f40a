"""Trials per hour on this machine: one process using every core, against ``--jobs N`` worker processes
that split the cores (``studies/workers.py``: each sets ``torch.set_num_threads(cores // jobs)``).

The recipe and space of ``search_efficiency.py`` (the `mnist` preset's space, objectives and bounds; 2 epochs
on 20,000 images per trial; latency measured on onnxruntime), random search, ``--trials`` trials, the same
seed for each setting, run one after the other. Prints wall time, trials per hour and the mean time a
trial spent training (``train_seconds``: longer when processes share the cores).

    python benchmarks/trials_per_hour.py --data-root .data              # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from bench_out import earlier_json  # noqa: E402
from search_efficiency import study_dict  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.run import run_search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(jobs: int, args) -> dict:
    d = study_dict("random", 0, args, None)
    d["name"] = f"tph-{jobs}"
    cfg = StudyConfig.from_dict(d)
    runs = Path(tempfile.mkdtemp(prefix="vaenas-tph-"))
    try:
        t0 = time.time()
        s = run_search(cfg, runs_dir=runs, progress=False, jobs=jobs)
        wall = time.time() - t0
        study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{runs / cfg.name / 'study.db'}")
        done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
        train_s = [trial_attrs(t)["train_seconds"] for t in done if "train_seconds" in trial_attrs(t)]
        return {"jobs": jobs, "wall_s": wall, "finished": s.finished, "trials_per_hour": 3600 * s.finished / wall,
                "mean_train_s": float(np.mean(train_s)), "hypervolume": s.hypervolume}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "trials_per_hour.json"))
    args = ap.parse_args(argv)
    earlier_json(Path(args.out), {"cores", "trials", "n_train", "epochs", "rows"}, "trials_per_hour")
    rows = []
    for jobs in args.jobs:
        r = run(jobs, args)
        rows.append(r)
        print(f"--jobs {jobs}: {r['finished']} trials in {r['wall_s']:.0f} s = {r['trials_per_hour']:.0f} trials/hour; "
              f"mean training time per trial {r['mean_train_s']:.2f} s", flush=True)
    Path(args.out).write_text(json.dumps({"cores": os.cpu_count(), "trials": args.trials, "n_train": args.n_train,
                                          "epochs": args.epochs, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
