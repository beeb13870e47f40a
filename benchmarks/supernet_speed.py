"""Supernet speed: train a supernet, score 1,000 specs on it, re-measure the front; vs random search at 16x the time.

Part 1 (one ``vaenas`` study in supernet mode, MNIST, the space/objectives/bounds/per-trial
recipe of ``benchmarks/strategy_comparison.py``): supernet training + ``--trials`` estimated trials +
standalone re-measurement of up to ``--remeasure`` front specs. Prints the wall time W of each
phase (target: all of it <= 15 minutes on 2 cores) and the hypervolume of the RE-MEASURED front
(the estimated front's hypervolume is printed too, labelled as an estimate).

Part 2: from-scratch random search (every trial trained standalone) with a wall-clock budget of
``--factor`` x W, ``--seeds`` seeds; its hypervolume at 1, 2, 4, 8 and 16 x W. Same bounds.

    python benchmarks/supernet_speed.py --data-root .data
    python benchmarks/supernet_speed.py --data-root .data --trials 50 --factor 1 --seeds 1    # smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from strategies.pareto import hypervolume  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.report import load_view, reported_mask  # noqa: E402
from studies.run import run_search  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402

_bench = importlib.util.spec_from_file_location("bench_strategies", Path(__file__).with_name("strategy_comparison.py"))
bench = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(bench)


def config(name: str, seed: int, args, supernet: bool, trials: int, timeout: float | None = None) -> StudyConfig:
    d = bench.study_config("random", seed, args).raw
    d = {**d, "name": name, "budget": {"trials": trials, "timeout_s": timeout}}
    d["strategy"] = {"name": args.strategy}
    if supernet:
        d["supernet"] = {"epochs": args.supernet_epochs, "n_val": args.n_val, "remeasure": args.remeasure,
                         "finetune_steps": args.finetune_steps}
    return StudyConfig.from_dict(d)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--trials", type=int, default=1000, help="specs scored on the supernet")
    ap.add_argument("--strategy", default="random")
    ap.add_argument("--supernet-epochs", type=float, default=10)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--n-val", type=int, default=2000)
    ap.add_argument("--remeasure", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=1.0, help="standalone epochs per trial (both parts)")
    ap.add_argument("--factor", type=float, default=16, help="random search's wall budget, in units of W")
    ap.add_argument("--seeds", type=int, default=3, help="random-search seeds")
    ap.add_argument("--skip-random", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/supernet_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    bench.share_latency_across_studies()  # one latency per spec in this run (see benchmarks/strategy_comparison.py)

    result: dict = {"args": vars(args), "torch": torch.__version__, "machine": platform.machine(),
                    "python": platform.python_version()}
    with tempfile.TemporaryDirectory() as runs:
        cfg = config("speed-supernet", 0, args, True, args.trials)
        t0 = time.perf_counter()
        summary = run_search(cfg, runs_dir=runs, progress=False)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=cfg.name, storage=summary.storage)
        trials = study.get_trials(deepcopy=False)
        search = [t for t in trials if trial_attrs(t).get("phase", "search") == "search"]
        again = [t for t in trials if trial_attrs(t).get("phase") == "remeasure"]
        sn_s = float(study.user_attrs.get("supernet_train_seconds", 0.0))
        cal_s = float(study.user_attrs.get("supernet_calibration", {}).get("seconds", 0.0))
        # the estimate phase: from the first estimate's start to the last one's end (supernet, calibration and
        # latency table come before it); per spec: start-to-start gaps, so storage writes and proposals count
        starts = np.array(sorted(t.datetime_start.timestamp() for t in search))
        est_s = max(t.datetime_complete.timestamp() for t in search) - starts[0]
        gaps = np.diff(starts)
        per_spec = {at: float(gaps[max(0, at - 50):min(at, len(gaps))].mean()) for at in (100, 1000)
                    if at - 50 < len(gaps)}
        # what is not scoring (−ELBO on the supernet, costs, latency table): proposals, storage, the loop
        scoring = np.array([trial_attrs(t).get("eval_seconds", 0.0) for t in
                            sorted(search, key=lambda t: t.datetime_start)][:-1])
        overhead = {at: float((gaps - scoring)[max(0, at - 50):min(at, len(gaps))].mean()) for at in per_spec}
        table = study.user_attrs.get("latency_table")
        meas_s = sum(trial_attrs(t).get("train_seconds", 0) + trial_attrs(t).get("eval_seconds", 0) for t in again)
        view = load_view(cfg.name, runs)
        df = view.trials
        rep = df[reported_mask(df)]
        hv_measured = hypervolume(rep[cfg.objectives].to_numpy(float), cfg.bounds)
        est = df[df["neg_elbo_is_estimate"] & df["feasible"]]
        hv_est = hypervolume(est[cfg.objectives].to_numpy(float), cfg.bounds)
        supernet_s = wall - est_s - meas_s
        print(f"supernet study: {len(search)} estimated trials + {len(again)} re-measured in {wall:.0f}s "
              f"(supernet training {sn_s:.0f}s, calibration on 4 anchors {cal_s:.0f}s, other setup "
              f"{supernet_s - sn_s - cal_s:.0f}s, estimates {est_s:.0f}s = "
              f"{1000 * est_s / max(1, len(search)):.0f} ms/spec, re-measurement {meas_s:.0f}s)", flush=True)
        print("  seconds per estimate (mean start-to-start gap of the 50 trials before): " + ", ".join(
            f"at trial {at}: {v * 1000:.1f} ms (of which {overhead[at] * 1000:.1f} ms outside scoring: proposal, "
            f"extraction, storage)" for at, v in per_spec.items()), flush=True)
        if table:
            from evaluator.latency_table import LatencyTable

            print("  " + LatencyTable.from_dict(table).describe(), flush=True)
        print(f"  hypervolume of the RE-MEASURED front: {hv_measured:.4f} "
              f"(of the supernet ESTIMATES, not comparable: {hv_est:.4f})", flush=True)
        ok = wall <= 15 * 60
        print(f"{'PASS' if ok else 'FAIL'}  supernet + {args.trials} evaluations + re-measuring "
              f"{len(again)} specs <= 15 min ({wall / 60:.1f} min)", flush=True)
        result.update({"per_spec_s_at_trial": per_spec, "overhead_s_at_trial": overhead, "latency_table": table, "wall_s": wall, "supernet_s": supernet_s, "supernet_train_s": sn_s, "calibration_s": cal_s, "estimate_s": est_s, "remeasure_s": meas_s,
                       "n_estimated": len(search), "n_remeasured": len(again), "hv_measured_front": hv_measured,
                       "hv_estimates": hv_est, "pass_15min": ok,
                       "remeasured": [{"spec_id": r["spec_id"], "estimate": r["estimate_neg_elbo"],
                                       "measured": r["neg_elbo"], "size_bytes": r["size_bytes"]}
                                      for _, r in df[df["phase"] == "remeasure"].iterrows()]})

        if not args.skip_random:
            marks = [m for m in (1, 2, 4, 8, 16) if m <= args.factor]
            rows = []
            for seed in range(args.seeds):
                rcfg = config(f"speed-random-{seed}", seed, args, False, 10**6, timeout=args.factor * wall)
                t1 = time.perf_counter()
                run_search(rcfg, runs_dir=runs, progress=False)
                rwall = time.perf_counter() - t1
                st = optuna.load_study(study_name=rcfg.name, storage=f"sqlite:///{Path(runs) / rcfg.name / 'study.db'}")
                done = sorted((t for t in st.get_trials(deepcopy=False)
                               if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.datetime_complete)
                start = min(t.datetime_start for t in st.get_trials(deepcopy=False))
                hv_at, n_at = {}, {}
                for m in marks:
                    pts = [t.values for t in done if (t.datetime_complete - start).total_seconds() <= m * wall]
                    hv_at[m], n_at[m] = (hypervolume(pts, rcfg.bounds) if pts else 0.0), len(pts)
                curve, pts = [], []
                for t in done:  # (seconds since the study started, hypervolume so far): any W can be read off
                    pts.append(t.values)
                    curve.append(((t.datetime_complete - start).total_seconds(), hypervolume(pts, rcfg.bounds)))
                rows.append({"seed": seed, "trials": len(done), "wall_s": rwall, "hv_at": hv_at, "trials_at": n_at,
                             "curve": curve})
                print(f"random seed {seed}: {len(done)} trials in {rwall:.0f}s; HV at " +
                      ", ".join(f"{m}W {hv_at[m]:.4f}" for m in marks), flush=True)
            result["random"] = rows
            print()
            print("| search | wall | trials trained standalone | hypervolume (measured) |")
            print("|---|---|---|---|")
            print(f"| supernet ({args.trials} estimates, {len(again)} re-measured) | {wall:.0f}s = W | "
                  f"{len(again)} | {hv_measured:.4f} |")
            for m in marks:
                hv = np.array([r["hv_at"][m] for r in rows])
                n = np.array([r["trials_at"][m] for r in rows])
                print(f"| random from scratch, {len(rows)} seeds | {m}W | {n.mean():.0f} | "
                      f"{hv.mean():.4f} ± {hv.std():.4f} |")
            beat = np.array([r["hv_at"][marks[-1]] for r in rows])
            print(f"supernet's measured front vs random at {marks[-1]}W: {hv_measured:.4f} vs {beat.mean():.4f} "
                  f"({'higher' if hv_measured > beat.mean() else 'LOWER'})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
