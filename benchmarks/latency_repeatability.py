"""Latency repeatability: N sampled specs (default 20) each measured twice in one run.

Prints the Spearman rank correlation between the two passes (target >= 0.95) and the median
IQR/median ratio of the individual measurements. Specs are untrained (latency does not depend
on weight values); the second pass runs in reverse order so drift cannot masquerade as agreement.

    python benchmarks/latency_repeatability.py [--n 20] [--repeats 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch
from scipy.stats import spearmanr

from evaluator import LatencyConfig, measure_latency, seeded_model
from search_space import SearchSpace

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=str(HERE.parent / "studies" / "presets" / "space_mixed.yaml"))
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "latency_repeatability.json"))
    args = ap.parse_args(argv)
    space = SearchSpace.load(args.space)
    rng = random.Random(args.seed)
    specs = []
    while len(specs) < args.n:
        s = space.sample(rng)
        if s not in specs:
            specs.append(s)
    models = [seeded_model(s, 0) for s in specs]
    cfg = LatencyConfig(batch_size=args.batch_size, threads=args.threads, warmup=args.warmup, repeats=args.repeats)
    first = {i: measure_latency(m, cfg) for i, m in enumerate(models)}
    second = {i: measure_latency(models[i], cfg) for i in reversed(range(len(models)))}
    a = [first[i].median_ms for i in range(len(models))]
    b = [second[i].median_ms for i in range(len(models))]
    rho = spearmanr(a, b).statistic
    ratios = [r.iqr_ms / r.median_ms for r in list(first.values()) + list(second.values())]
    print(f"{'spec':12} {'family':6} {'path':30} {'pass1 ms':>9} {'pass2 ms':>9} {'IQR/med':>8}")
    for i, s in enumerate(specs):
        print(f"{s.id:12} {s.family:6} {first[i].path:30} {a[i]:9.4f} {b[i]:9.4f} {first[i].iqr_ms / a[i]:8.3f}")
    med_ratio = statistics.median(ratios)
    print(f"\nSpearman rank correlation pass1 vs pass2: {rho:.4f} (target >= 0.95)")
    print(f"median IQR/median ratio: {med_ratio:.4f}")
    print(f"threads={args.threads} batch={args.batch_size} repeats={args.repeats} torch={torch.__version__}")
    ok = rho >= 0.95
    print(("PASS" if ok else "FAIL") + "  spearman_ge_0.95")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "spearman": rho, "median_iqr_over_median": med_ratio,
                               "pass1_ms": a, "pass2_ms": b, "spec_ids": [s.id for s in specs],
                               "paths": [first[i].path for i in range(len(specs))]}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
