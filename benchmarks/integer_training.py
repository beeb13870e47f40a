"""What training in integers costs: one MLP VAE (784-256-64-16, 4-bit weights) trained three ways on the same data
and seed - float32, 4-bit weights with float activations, and ``arithmetic: int8`` (4-bit weights, int8
activations, the forward exactly the integer model's) - with the training time and the validation −ELBO.

    python benchmarks/integer_training.py [--epochs 2] [--n-train 20000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from evaluator.data import load_data
from evaluator.elbo import evaluate_neg_elbo
from evaluator.train import TrainConfig, seeded_model, train
from search_space import ArchSpec

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "integer_training.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_data("mnist", args.data_root, n_train=args.n_train, n_eval=2000)
    rows = []
    for name, kw in (("float32", dict(bits=32)), ("4-bit weights, float activations", dict(bits=4)),
                     ("int8 (4-bit weights)", dict(bits=4, arithmetic="int8"))):
        spec = ArchSpec.mlp((256, 64), 16, **kw)
        model = seeded_model(spec, 0)
        t0 = time.perf_counter()
        train(model, data.train, TrainConfig(epochs=args.epochs, device="cpu"))
        seconds = time.perf_counter() - t0
        val = evaluate_neg_elbo(model, data.val)
        rows.append({"model": name, "spec_id": spec.id, "train_s": seconds, **val})
        print(f"{name:34s} train {seconds:6.1f} s  val -ELBO {val['neg_elbo']:.2f} (KL {val['kl']:.2f})", flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
