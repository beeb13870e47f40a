"""Training cost per step of the compression dimensions (issue 18): the seed MLP 784-400-400-20 at 4 bits,
uniform vs k-means, rank 1/2, structured 50 %, unstructured 50 %, through the one training loop.

    python benchmarks/compression_train_cost.py --data-root .data [--n-train 10000 --epochs 2]

Prints milliseconds per optimiser step (wall time of ``evaluator.train`` / steps) and the final loss. Pruning
re-ranks weights by magnitude every 1 % of the run, so a short run (here 200 steps: every 2 steps) shows that
cost far more than a 30-epoch one (every 150 steps).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from evaluator import load_data  # noqa: E402
from evaluator.train import TrainConfig, seeded_model, train  # noqa: E402
from search_space import ArchSpec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data("mnist", args.data_root, n_train=args.n_train)
    base = ArchSpec.mlp((400, 400), 20, bits=4)
    variants = {
        "uniform 4-bit": base,
        "k-means 4-bit": base.replace(quantizer=("kmeans",) * 6),
        "rank 1/2": base.replace(rank=(0.5,) * 6),
        "structured 50%": base.replace(sparsity=(0.5, 0.5, 0, 0.5, 0.5, 0), pruning="structured"),
        "unstructured 50%": base.replace(sparsity=(0.5,) * 6),
    }
    for name, spec in variants.items():
        model = seeded_model(spec, 0, "cpu")
        r = train(model, data.train, TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-3))
        print(f"{name:18} {r.seconds / r.steps * 1000:7.2f} ms/step  ({r.steps} steps, final loss {r.final_loss:.1f})",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
