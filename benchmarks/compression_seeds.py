"""How much of the compression report's verdict is the seed? Retrain named rows of a finished report
with other seeds, on the report's own recipe (read from its JSON), and compare each row with the
FP32 MLP of the same seed.

    python benchmarks/compression_seeds.py --report benchmarks/results/compression_mnist.json \\
        --rows mlp-fp32 vaenas-best-16x --seeds 1 2 --data-root .data

Only rows trained from their spec alone (FP32, QAT, k-means, magnitude and structured pruning, found
architectures) can be retrained here: L1, SVD/rank, and student rows need the report itself. The seed sets the initial weights,
the batch order and every sample drawn in training, and the noise of the test −ELBO's one-sample
estimate (as in the report). Writes ``<report>_seeds.{json,md}`` beside the report and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from compression_report import report_data, train_config  # noqa: E402 - the report's recipe, one owner
from evaluator import evaluate_neg_elbo, seeded_model, train  # noqa: E402
from search_space import ArchSpec  # noqa: E402

BUILT_FROM_ANOTHER = ("L1", "SVD", "rank", "student")  # an extra loss, an SVD start or a teacher: the report's job


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", required=True, help="a compression report's JSON")
    ap.add_argument("--rows", nargs="+", required=True, help="row names to retrain (the FP32 MLP is always included)")
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    path = Path(args.report)
    if not path.is_file():
        print(f"compression_seeds: --report {path} does not exist; run benchmarks/compression_report.py first",
              file=sys.stderr)
        return 2
    report = json.loads(path.read_text())
    recipe, by_name = report["meta"]["recipe"], {r["name"]: r for r in report["rows"]}
    names = ["mlp-fp32"] + [n for n in args.rows if n != "mlp-fp32"]
    for n in names:
        if n not in by_name:
            print(f"compression_seeds: no row {n!r} in {path}; choose from {', '.join(by_name)}", file=sys.stderr)
            return 2
        if any(w in by_name[n]["kind"] for w in BUILT_FROM_ANOTHER):
            print(f"compression_seeds: row {n!r} ({by_name[n]['kind']}) needs an extra loss, an SVD start or a "
                  "teacher; rerun the report with --seed for it", file=sys.stderr)
            return 2
    data = report_data(recipe, args.data_root)
    out = {"report": str(path), "recipe": recipe, "seeds": {}}
    for seed in args.seeds:
        cfg = train_config(recipe, args.device, seed=seed)
        res = {}
        for n in names:
            spec = ArchSpec.from_dict(by_name[n]["spec"])
            model = seeded_model(spec, seed, args.device)
            t = train(model, data.train, cfg)
            res[n] = evaluate_neg_elbo(model, data.test, seed=seed)["neg_elbo"]
            print(f"seed {seed} {n:>22}: −ELBO {res[n]:.2f}  (train {t.seconds:.0f}s)", flush=True)
        out["seeds"][str(seed)] = res
    out["seeds"].setdefault(str(recipe["seed"]), {n: by_name[n]["test_neg_elbo"] for n in names})
    md = table(out, names)
    print(md)
    stem = path.with_suffix("")
    Path(f"{stem}_seeds.json").write_text(json.dumps(out, indent=1) + "\n")
    Path(f"{stem}_seeds.md").write_text(md + "\n")
    return 0


def table(out: dict, names: list[str]) -> str:
    """Each row's test −ELBO per seed, its gap to the FP32 MLP of the same seed, and the mean gap."""
    seeds = sorted(out["seeds"], key=int)
    lines = [f"Test −ELBO (nats) per seed; gap: vs the FP32 MLP of the same seed. Recipe: {out['recipe']['epochs']:g} "
             f"epochs, {out['recipe']['dataset']}, qat_delay {out['recipe']['qat_delay']} (the report's).", "",
             "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | gap per seed | mean gap |",
             "|---|" + "---|" * (len(seeds) + 2)]
    for n in names:
        vals = [out["seeds"][s][n] for s in seeds]
        gaps = [out["seeds"][s][n] / out["seeds"][s]["mlp-fp32"] - 1 for s in seeds]
        lines.append(f"| {n} | " + " | ".join(f"{v:.2f}" for v in vals) + " | "
                     + " / ".join(f"{100 * g:+.2f}%" for g in gaps) + f" | {100 * statistics.mean(gaps):+.2f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
