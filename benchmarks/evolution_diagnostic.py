"""Why does (or doesn't) regularized evolution beat random search on the MNIST strategies study?

Runs the exact study of ``benchmarks/strategy_comparison.py`` (same space, objectives, bounds, per-trial
training) for random search and one or more evolution variants, keeps the SQLite studies, and
measures, per variant, over the trials after evolution's random warm-up (the population size):

* ``front hit rate``: fraction of proposals that were non-dominated by every earlier feasible
  trial when they finished (a "useful" proposal);
* ``mean HV gain``: mean hypervolume increase per trial (normalised with the study's bounds);
* for evolution, by re-running its (deterministic) selection on the same history: the share of
  the population on rank 0, how often the tournament winner was a crowding extreme (infinite
  distance) and which objective's min or max it was, the decision (Hamming) distance from the
  parent to the child, and the child's normalised objective-space distance from its parent.

    python benchmarks/evolution_diagnostic.py --data-root .data
    python benchmarks/evolution_diagnostic.py --data-root .data --variants random evolution \
        'evolution:{"selection": "hv"}'
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import optuna  # noqa: E402
import torch  # noqa: E402

from strategies.pareto import hypervolume, normalise  # noqa: E402
from strategies.pareto import non_dominated_mask  # noqa: E402
from search_space import ArchSpec  # noqa: E402
from strategies import create_sampler  # noqa: E402
from strategies.base import observations, trial_rng  # noqa: E402
from strategies.evolution import RegularizedEvolution  # noqa: E402
from studies.config import StudyConfig  # noqa: E402
from studies.trials import is_feasible  # noqa: E402
from studies.run import run_search  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402

_bench = importlib.util.spec_from_file_location("bench_strategies", Path(__file__).with_name("strategy_comparison.py"))
bench = importlib.util.module_from_spec(_bench)
_bench.loader.exec_module(bench)


def parse_variant(v: str) -> tuple[str, str, dict]:
    name, _, opts = v.partition(":")
    options = json.loads(opts) if opts else {}
    label = name if not options else name + "(" + ",".join(f"{k}={val}" for k, val in options.items()) + ")"
    return label, name, options


class Traced(RegularizedEvolution):
    """Same selection as the strategy, recording the first proposal's parents for each trial."""

    def select(self, alive, rng):
        winners = super().select(alive, rng)
        self.last = winners
        return winners


def hamming(space, a, b) -> int:
    pa, pb = space.to_params(a), space.to_params(b)
    return sum(pa.get(k) != pb.get(k) for k in set(pa) | set(pb))


def analyse(study: optuna.Study, cfg: StudyConfig, name: str, options: dict, warmup: int) -> dict:
    bounds = cfg.bounds
    trials = sorted([t for t in study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)], key=lambda t: t.number)
    pts = [tuple(t.values) for t in trials]
    hits, gains = [], []
    for i in range(warmup, len(pts)):
        prev = np.array(pts[:i])
        v = np.array(pts[i])
        dominated = bool(np.any(np.all(prev <= v, axis=1) & np.any(prev < v, axis=1)))
        hits.append(not dominated)
        gains.append(hypervolume(pts[: i + 1], bounds) - hypervolume(pts[:i], bounds))
    out = {"front_hit_rate": float(np.mean(hits)), "mean_hv_gain": float(np.mean(gains)),
           "final_hv": hypervolume(pts, bounds)}
    final = np.array(pts)
    front = final[non_dominated_mask(final)]
    nf = normalise(front, bounds)
    out["front_size"] = int(len(front))
    out["front_norm_min"] = nf.min(0).round(3).tolist()
    if name != "evolution":
        return out
    # replay evolution's selection on the history each trial saw
    space = cfg.space
    ev = Traced(space, cfg.seed, **options)
    hist_all = observations(study)
    rank0, extreme, which, ham, odist = [], [], [], [], []
    for t in trials[warmup:]:
        history = [o for o in hist_all if o.number < t.number]
        alive = [o for o in history if o.values is not None and o.feasible][-ev.population_size:]
        if len(alive) < ev.population_size:
            continue
        stats = ev.population_stats(alive)
        rank0.append(float(np.mean(stats["ranks"] == 0)))
        rng = trial_rng(cfg.seed, t.number)
        ev.select(alive, rng)
        p = ev.last[0]
        j = alive.index(p)
        extreme.append(bool(np.isinf(stats["crowd"][j])))
        vals = np.array([o.values for o in alive])
        tags = [f"{'min' if vals[j, m] == vals[:, m].min() else 'max'}-{cfg.objectives[m]}"
                for m in range(vals.shape[1]) if vals[j, m] in (vals[:, m].min(), vals[:, m].max())]
        which.extend(tags or ["interior"])
        child = ArchSpec.from_json(trial_attrs(t)["spec"])
        ham.append(hamming(space, p.spec, child))
        odist.append(float(np.linalg.norm(normalise([t.values], bounds)[0] - normalise([p.values], bounds)[0])))
    tags, counts = np.unique(which, return_counts=True)
    out.update({
        "population_rank0_share": float(np.mean(rank0)),
        "parent_is_crowding_extreme": float(np.mean(extreme)),
        "parent_position": {str(k): int(c) for k, c in zip(tags, counts)},
        "child_decision_distance_mean": float(np.mean(ham)),
        "child_decision_distance_hist": np.bincount(ham).tolist(),
        "child_objective_distance_mean": float(np.mean(odist)),
    })
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--variants", nargs="+", default=["random", "evolution"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--warmup", type=int, default=16, help="trials excluded from the per-proposal figures")
    ap.add_argument("--out", default="benchmarks/results/evolution_diagnostic.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        for v in args.variants:
            label, name, options = parse_variant(v)
            per_seed = []
            for seed in range(args.seeds):
                cfg = bench.study_config(name, seed, args)
                cfg = StudyConfig.from_dict({**cfg.raw, "name": f"diag-{len(results)}-{seed}",
                                             "strategy": {"name": name, "options": options}})
                create_sampler(name, cfg.space, seed, options)  # bad options fail before training
                t0 = time.perf_counter()
                summary = run_search(cfg, runs_dir=runs, progress=False)
                study = optuna.load_study(study_name=cfg.name, storage=summary.storage)
                r = analyse(study, cfg, name, options, args.warmup)
                r["wall_s"] = time.perf_counter() - t0
                per_seed.append(r)
                print(f"{label} seed {seed}: " + json.dumps({k: r[k] for k in r if not k.endswith("hist")}), flush=True)
            results[label] = per_seed
    print()
    keys = ["final_hv", "front_hit_rate", "mean_hv_gain", "front_size", "population_rank0_share",
            "parent_is_crowding_extreme", "child_decision_distance_mean", "child_objective_distance_mean"]
    print("| variant | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for label, rs in results.items():
        cells = []
        for k in keys:
            vals = [r[k] for r in rs if k in r]
            cells.append(f"{np.mean(vals):.4g} ± {np.std(vals):.2g}" if vals else "—")
        print(f"| {label} | " + " | ".join(cells) + " |")
    for label, rs in results.items():
        if "parent_position" in rs[0]:
            tot: dict[str, int] = {}
            for r in rs:
                for k, c in r["parent_position"].items():
                    tot[k] = tot.get(k, 0) + c
            print(f"{label} parent position (objective extremes within the population): {tot}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
