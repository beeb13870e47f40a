"""Search efficiency: anytime hypervolume vs wall time of from-scratch search with and without rungs, and supernet mode.

The `mnist` preset's space, objectives (−ELBO, packed bytes, latency on onnxruntime) and bounds;
every trial trained with one recipe no cheaper than 2 epochs on 20,000 images (``--epochs``,
``--n-train``: a cheap recipe flatters random search). Methods, ``--seeds`` seeds each:

* ``random``, ``nsga2``, ``evolution``: ``--trials`` trials, each trained in full;
* the same three with rungs (``budget.rungs: [0.1, 0.3, 1.0]``, ``keep: 0.33``), given the same
  wall time as random search needed for its trials (more trials fit in it);
* ``supernet``: evolution over supernet estimates, then ``--remeasure`` front specs trained with
  the same recipe; only re-measured trials count toward its hypervolume;
* ``evolution+screen``, ``random+screen``: ``--trials`` trials, each the best-predicted of a pool of
  16 proposals once 8 trials have finished (``strategy.screen``, :mod:`strategies.screening`);
* ``tpe``, ``gp``: Optuna's multi-objective TPE and GP samplers, ``--trials`` trials.

For each run the anytime hypervolume (measured, feasible COMPLETE trials only; stopped and
estimated trials never count) is taken from the trials' completion times. The target is the
mean final hypervolume of random search at ``--trials`` trials; for each method: the wall time at
which its mean curve first reaches the target, and the speed-up = random's wall time / that.

Each finished run is cached in the results JSON (``--out``), so the script resumes where it
stopped; an unfinished run is started again. It prints the total wall time it spent.

    python benchmarks/search_efficiency.py --data-root .data                  # hours on 2 cores
    python benchmarks/search_efficiency.py --data-root .data --trials 6 --n-train 2000 --epochs 0.3 \\
        --seeds 1 --out /tmp/se.json --png /tmp/se.png                       # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import yaml  # noqa: E402

from strategies.pareto import Bound, hypervolume  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.trials import is_estimate, is_feasible  # noqa: E402
from studies.run import run_search  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNGS = {"rungs": [0.1, 0.3, 1.0], "keep": 0.33}
METHODS = ["random", "nsga2", "evolution", "random+rungs", "nsga2+rungs", "evolution+rungs", "supernet",
           "evolution+screen", "random+screen", "tpe", "gp"]
SCREEN = {"pool": 16, "startup": 8}  # +screen: each trial trains the best-predicted of 16 proposals


def study_dict(method: str, seed: int, args, timeout: float | None) -> dict:
    d = yaml.safe_load((REPO / "studies" / "presets" / "mnist.yaml").read_text())
    strategy = method.split("+")[0]
    d.update(name=f"se-{method.replace('+', '-')}-{seed}", seed=seed, n_train=args.n_train,
             train={"epochs": args.epochs, "batch_size": 100, "lr": 0.001, "lr_schedule": "cosine"},
             latency={"repeats": 30, "warmup": 5})
    d["strategy"] = {"name": "evolution" if strategy == "supernet" else strategy}
    if strategy == "nsga2":
        d["strategy"]["options"] = {"population_size": 16}
    if method.endswith("+screen"):
        d["strategy"]["screen"] = SCREEN
    budget = {"trials": args.trials}
    if method.endswith("+rungs"):
        budget = {"trials": args.trials * 10, "timeout_s": timeout, **RUNGS}
    if method == "supernet":
        budget = {"trials": args.supernet_trials}
        d["supernet"] = {"epochs": args.supernet_epochs, "n_val": 1000, "remeasure": args.remeasure, "calibrate": True}
    d["budget"] = budget
    if args.data_root:
        d["data_root"] = args.data_root
    return d


def anytime(study: optuna.Study, bounds: list[Bound], t0: float) -> list[tuple[float, float]]:
    """(seconds since ``t0``, hypervolume of the measured feasible trials completed by then)."""
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                   if is_feasible(t) and not is_estimate(t)), key=lambda t: t.datetime_complete)
    pts, curve = [], []
    for t in done:
        pts.append(list(t.values))
        curve.append((t.datetime_complete.timestamp() - t0, hypervolume(pts, bounds)))
    return curve


def run_one(method: str, seed: int, args, timeout: float | None) -> dict:
    cfg = StudyConfig.from_dict(study_dict(method, seed, args, timeout))
    runs = Path(tempfile.mkdtemp(prefix="vaenas-se-"))
    try:
        t0 = time.time()
        s = run_search(cfg, runs_dir=runs, progress=False)
        wall = time.time() - t0
        study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{runs / cfg.name / 'study.db'}")
        trials = study.get_trials(deepcopy=False)
        return {"method": method, "seed": seed, "wall_s": wall, "curve": anytime(study, cfg.bounds, t0),
                "final_hv": s.hypervolume, "finished": s.finished, "remeasured": s.remeasured,
                "stopped": sum(1 for t in trials if "stopped_at_rung" in trial_attrs(t)),
                "screen_tau": screen_tau(study, cfg),
                "complete": sum(1 for t in trials if t.state == optuna.trial.TrialState.COMPLETE)}
    finally:
        shutil.rmtree(runs, ignore_errors=True)


def screen_tau(study: optuna.Study, cfg: StudyConfig) -> float | None:
    """The predictor's Kendall τ on the trials it chose (predicted −ELBO before training vs measured)."""
    from strategies.screening import held_out_tau, screened_pairs

    pairs = screened_pairs(study.get_trials(deepcopy=False), cfg.objectives, "neg_elbo")
    return held_out_tau(pairs) if pairs else None


def hv_at(curve: list, t: float) -> float:
    hv = 0.0
    for s, v in curve:
        if s > t:
            break
        hv = v
    return hv


def time_to(curves: list[list], target: float, horizon: float) -> float | None:
    """First time the mean (over seeds) anytime hypervolume reaches ``target``; None if never."""
    times = sorted({s for c in curves for s, _ in c})
    for t in times:
        if t <= horizon and np.mean([hv_at(c, t) for c in curves]) >= target - 1e-12:
            return t
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--supernet-trials", type=int, default=1000)
    ap.add_argument("--supernet-epochs", type=float, default=10)
    ap.add_argument("--remeasure", type=int, default=20)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_efficiency.json"))
    ap.add_argument("--png", default=str(REPO / "benchmarks" / "results" / "search_efficiency.png"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    settings = {k: getattr(args, k) for k in ("trials", "n_train", "epochs", "supernet_trials", "supernet_epochs",
                                              "remeasure")}
    res = json.loads(out.read_text()) if out.exists() else {}
    if res.get("settings") not in (None, settings):
        print(f"{out} holds runs with other settings ({res['settings']}); pass another --out", file=sys.stderr)
        return 2
    res.update(settings=settings, machine=f"{platform.machine()} {platform.processor() or ''}".strip())
    runs = res.setdefault("runs", {})
    t_script = time.time()
    methods = args.methods.split(",")
    for method in ["random"] + [m for m in methods if m != "random"]:  # random first: it sets the others' time
        for seed in range(args.seeds):
            key = f"{method}/{seed}"
            if key in runs:
                continue
            ref = [runs[f"random/{s}"]["wall_s"] for s in range(args.seeds) if f"random/{s}" in runs]
            timeout = float(np.mean(ref)) if ref else None
            print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
            runs[key] = run_one(method, seed, args, timeout)
            r = runs[key]
            print(f"  {r['wall_s']:.0f} s, {r['finished']} finished ({r['stopped']} stopped), final hypervolume "
                  f"{r['final_hv']:.4f}", flush=True)
            res["script_seconds"] = res.get("script_seconds", 0.0) + (time.time() - t_script)
            t_script = time.time()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1))
    report(res, methods, args)
    return 0


def report(res: dict, methods: list[str], args) -> None:
    runs = res["runs"]
    ref = [runs[f"random/{s}"] for s in range(args.seeds)]
    target = float(np.mean([r["final_hv"] for r in ref]))
    t_ref = float(np.mean([r["wall_s"] for r in ref]))
    print(f"\ntarget: random search's mean final hypervolume at {args.trials} trials = {target:.4f}, reached in "
          f"{t_ref:.0f} s (mean over {args.seeds} seeds); recipe {args.epochs:g} epochs on {args.n_train} images")
    if target <= 0:
        print("random search reached no hypervolume at all (every −ELBO outside the bounds?): no time-to-target")
    print(f"{'method':18} {'mean wall s':>11} {'final HV':>9} {'time to target s':>17} {'speed-up':>9}")
    rows = {}
    for m in methods:
        rs = [runs.get(f"{m}/{s}") for s in range(args.seeds)]
        if not all(rs):
            continue
        horizon = max(r["wall_s"] for r in rs)
        tt = time_to([r["curve"] for r in rs], target, horizon)
        rows[m] = {"wall_s": float(np.mean([r["wall_s"] for r in rs])), "final_hv": float(np.mean([r["final_hv"] for r in rs])),
                   "time_to_target_s": tt, "speedup": (t_ref / tt) if tt else None}
        x = rows[m]
        print(f"{m:18} {x['wall_s']:11.0f} {x['final_hv']:9.4f} {tt if tt is not None else float('nan'):17.0f} "
              f"{(x['speedup'] or float('nan')):9.2f}x")
    print(f"script wall time so far: {res.get('script_seconds', 0) / 3600:.2f} h")
    res["summary"] = {"target_hv": target, "random_wall_s": t_ref, "methods": rows}
    Path(args.out).write_text(json.dumps(res, indent=1))
    _png(res, methods, args, target)


def _png(res, methods, args, target) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for m in methods:
        rs = [res["runs"].get(f"{m}/{s}") for s in range(args.seeds)]
        if not all(rs):
            continue
        horizon = max(r["wall_s"] for r in rs)
        ts = np.geomspace(1, horizon, 200)
        ax.plot(ts, [np.mean([hv_at(r["curve"], t) for r in rs]) for t in ts], label=m,
                ls="--" if "rungs" in m else "-")
    ax.axhline(target, color="k", lw=0.8, ls=":", label=f"target: random at {args.trials} trials")
    ax.set_xscale("log")
    ax.set_xlabel("wall time, s (2 CPU cores)")
    ax.set_ylabel(f"hypervolume (mean of {args.seeds} seeds; measured trials only)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    raise SystemExit(main())
