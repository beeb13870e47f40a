"""Is an early −ELBO a fair judge? Kendall τ between the −ELBO after 0.1 / 0.25 / 0.5 / 1 epoch and the final one.

Random specs of the `mnist` preset's space (what random search and a study's first trials see), each
trained once with a recipe, its validation −ELBO read at each early epoch (the rung hook of
:meth:`evaluator.Evaluator.evaluate_with_model`, a gate that never stops) and at the end. Two recipes:
``search_efficiency.py``'s (2 epochs on 20,000 images, cosine lr 1e-3, batch 100) and the same for
10 epochs. For each early point it prints

* Kendall τ (tau-b, as SciPy counts ties) of early vs final −ELBO over all specs, and within each of three
  packed-size buckets (tertiles of log bytes; a rung compares −ELBO *and* size, so within a size
  bucket is where the −ELBO ranking decides);
* what a rung at that point keeps: the study's own rule (:func:`strategies.pareto.promoted`,
  keep 1/3 by non-dominated sorting of (early −ELBO, bytes, latency)) applied to all specs at once,
  and the share of the full final hypervolume the kept specs' final points reach, against the share
  a random third keeps (mean of 200 draws);
* top-K after one epoch (K = a third, by early −ELBO): the share of the final top-K it holds.

    python benchmarks/rung_correlation.py --data-root .data                 # ~20 min on 2 cores
    python benchmarks/rung_correlation.py --data-root .data --specs 6 --n-train 2000 --recipes 2 --out /tmp/rc.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.append(str(Path(__file__).resolve().parent))  # for bench_out, after the installed packages

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from bench_out import earlier_json  # noqa: E402
from evaluator.data import load_data  # noqa: E402
from evaluator.objectives import EvalFailure, Evaluator  # noqa: E402
from strategies.pareto import hypervolume, kendall_tau, promoted  # noqa: E402
from studies.config import StudyConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EARLY_EPOCHS = (0.1, 0.25, 0.5, 1.0)
OBJECTIVES = ["neg_elbo", "size_bytes", "latency_ms"]


class Recorder:
    """A rung gate that records the −ELBO at each fraction and never stops training."""

    needs = ("neg_elbo",)

    def __init__(self, fractions):
        self.fractions = tuple(fractions)
        self.seen: dict[float, float] = {}

    def decide(self, rung: int, fraction: float, partial: dict) -> bool:
        self.seen[fraction] = float(partial["neg_elbo"])
        return True


def config(epochs: float, args) -> StudyConfig:
    d = yaml.safe_load((REPO / "studies" / "presets" / "mnist.yaml").read_text())
    d.update(name=f"rc-{epochs:g}", seed=0, n_train=args.n_train,
             train={"epochs": epochs, "batch_size": 100, "lr": 0.001, "lr_schedule": "cosine"},
             latency={"repeats": 30, "warmup": 5})
    if args.data_root:
        d["data_root"] = args.data_root
    return StudyConfig.from_dict(d)


def run_recipe(epochs: float, specs, ev: Evaluator) -> list[dict]:
    fractions = [e / epochs for e in EARLY_EPOCHS if e < epochs]
    rows = []
    for i, spec in enumerate(specs):
        gate = Recorder(fractions)
        t0 = time.perf_counter()
        res, _ = ev.evaluate_with_model(spec, 0, gate)
        if isinstance(res, EvalFailure):
            rows.append({"spec_id": spec.id, "failed": res.reason})
            continue
        rows.append({"spec_id": spec.id, "final": res.neg_elbo, "size_bytes": res.size_bytes,
                     "latency_ms": res.latency_ms, "seconds": time.perf_counter() - t0,
                     "early": {f"{f * epochs:g}": v for f, v in gate.seen.items()}})
        print(f"  {epochs:g} ep, spec {i + 1}/{len(specs)}: final {res.neg_elbo:.2f}, "
              + ", ".join(f"{k} ep {v:.1f}" for k, v in rows[-1]["early"].items()), flush=True)
    return rows


def buckets(sizes: np.ndarray, n: int = 3) -> np.ndarray:
    edges = np.quantile(np.log(sizes), np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(edges, np.log(sizes), side="right")


def analyse(rows: list[dict], bounds, rng_seed: int = 0) -> dict:
    ok = [r for r in rows if "failed" not in r and math.isfinite(r["final"])]
    final = np.array([r["final"] for r in ok])
    sizes = np.array([r["size_bytes"] for r in ok], float)
    b = buckets(sizes)
    full = [[r["final"], r["size_bytes"], r["latency_ms"]] for r in ok]
    hv_all = hypervolume(full, bounds)
    k = max(1, math.ceil(len(ok) / 3))
    rng = random.Random(rng_seed)
    rand_share = np.mean([hypervolume([full[i] for i in rng.sample(range(len(ok)), k)], bounds) / hv_all
                          for _ in range(200)]) if hv_all > 0 else float("nan")
    out = {"n": len(ok), "hv_all": hv_all, "random_third_hv_share": float(rand_share), "points": {}}
    for e in ok[0]["early"]:
        early = np.array([r["early"][e] for r in ok])
        within = [kendall_tau(early[b == j], final[b == j]) for j in range(3) if (b == j).sum() >= 3]
        pts = [[r["early"][e], r["size_bytes"], r["latency_ms"]] for r in ok]
        kept = [i for i in range(len(ok)) if promoted(i, pts, bounds, 1 / 3)]
        top_early = set(np.argsort(early)[:k])
        top_final = set(np.argsort(final)[:k])
        out["points"][e] = {
            "tau_all": kendall_tau(early, final), "tau_within_size_buckets": within,
            "tau_within_mean": float(np.mean(within)) if within else float("nan"),
            "rung_kept": len(kept),
            "rung_hv_share": hypervolume([full[i] for i in kept], bounds) / hv_all if hv_all > 0 else float("nan"),
            "topk_overlap": len(top_early & top_final) / k}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--specs", type=int, default=40)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--recipes", type=float, nargs="+", default=[2.0, 10.0], help="epochs of each recipe")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rung_correlation.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    res = earlier_json(out, {"settings", "recipes"}, "rung_correlation") or {}
    settings = {"specs": args.specs, "n_train": args.n_train}
    if res and res["settings"] != settings:  # cached recipes of other settings must not be relabelled
        print(f"rung_correlation: {out} holds runs with other settings ({res['settings']}); pass another --out",
              file=sys.stderr)
        return 2
    res["settings"] = settings
    t_all = time.time()
    for epochs in args.recipes:
        cfg = config(epochs, args)
        data = load_data(cfg.dataset, cfg.data_root, n_train=cfg.n_train)
        cfg.bind_data(data)
        rng = random.Random(0)
        specs, seen = [], set()
        while len(specs) < args.specs:
            s = cfg.space.sample(rng)
            if s.id not in seen:
                seen.add(s.id)
                specs.append(s)
        key = f"{epochs:g}"
        if key not in res.get("recipes", {}):
            t0 = time.time()
            rows = run_recipe(epochs, specs, Evaluator(data, cfg.train, cfg.latency))
            res.setdefault("recipes", {})[key] = {"rows": rows, "seconds": time.time() - t0}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(res, indent=1))
        rec = res["recipes"][key]
        rec["analysis"] = analyse(rec["rows"], cfg.bounds)
        report(key, rec)
    out.write_text(json.dumps(res, indent=1))
    print(f"script wall time {time.time() - t_all:.0f} s; wrote {out}")
    return 0


def report(key: str, rec: dict) -> None:
    a = rec["analysis"]
    print(f"\nrecipe {key} epochs ({a['n']} specs, {rec['seconds']:.0f} s): full final hypervolume {a['hv_all']:.4f}; "
          f"a random third keeps {a['random_third_hv_share']:.1%} of it")
    print(f"{'early epoch':>11} {'tau all':>8} {'tau within size':>16} {'rung keeps':>11} {'its HV share':>13} "
          f"{'top-third overlap':>18}")
    for e, p in a["points"].items():
        print(f"{e:>11} {p['tau_all']:8.3f} {p['tau_within_mean']:16.3f} {p['rung_kept']:11d} "
              f"{p['rung_hv_share']:13.1%} {p['topk_overlap']:18.1%}")


if __name__ == "__main__":
    raise SystemExit(main())
