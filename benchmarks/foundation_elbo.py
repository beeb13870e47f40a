"""Correctness benchmark for the foundation: the seed MLP VAE 784-400-400-20 (ReLU) on MNIST.

Trains the FP32 model and the same spec with every weight layer at 4 bits (QAT from scratch),
same seed and budget, then reports test −ELBO, IWAE-k NLL and packed size. Targets (issue 2):
FP32 test −ELBO <= 100 nats; 4-bit within 3% of FP32. Exits 1 if a target is missed.

    python benchmarks/foundation_elbo.py --data-root .data            # 30 epochs, IWAE-1000
    python benchmarks/foundation_elbo.py --epochs 1 --iwae-k 10       # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from evaluator import TrainConfig, evaluate_neg_elbo, iwae_nll, load_data, seeded_model, train
from search_space import ArchSpec, pack_model, packed_size_bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=float, default=30)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iwae-k", type=int, default=1000)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--qat-delay", type=float, default=0.5,
                    help="fraction of the QAT run trained with float weights before fake quantisation starts")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="benchmarks/results/foundation_elbo.json")
    args = ap.parse_args(argv)

    data = load_data(args.dataset, args.data_root)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                      lr_schedule=args.lr_schedule)
    rows = []
    for label, bits in (("FP32", 32), (f"{args.bits}-bit QAT", args.bits)):
        spec = ArchSpec.mlp((400, 400), 20, bits=bits)
        model = seeded_model(spec, args.seed, args.device)
        run_cfg = cfg if bits == 32 else TrainConfig(**{**cfg.to_dict(), "qat_delay": args.qat_delay})
        res = train(model, data.train, run_cfg, progress=sys.stderr.isatty())
        t0 = time.perf_counter()
        test = evaluate_neg_elbo(model, data.test)
        val = evaluate_neg_elbo(model, data.val)
        nll = iwae_nll(model, data.test, k=args.iwae_k)
        packed = pack_model(model)
        assert len(packed) == packed_size_bytes(spec)
        rows.append({
            "model": label, "spec_id": spec.id, "weight_bits": bits, "params": model.num_params(),
            "packed_bytes": len(packed), "val_neg_elbo": val["neg_elbo"], "test_neg_elbo": test["neg_elbo"],
            "test_kl": test["kl"], f"test_iwae{args.iwae_k}_nll": nll, "train_s": res.seconds,
            "eval_s": time.perf_counter() - t0, "steps": res.steps,
        })
        print(f"{label}: test -ELBO {test['neg_elbo']:.2f} nats, IWAE-{args.iwae_k} NLL {nll:.2f}, "
              f"{len(packed)} bytes, train {res.seconds:.0f}s", flush=True)

    fp, q = rows
    rel = (q["test_neg_elbo"] - fp["test_neg_elbo"]) / fp["test_neg_elbo"]
    checks = {
        "fp32_test_neg_elbo_le_100": fp["test_neg_elbo"] <= 100.0,
        f"{args.bits}bit_within_3pct": abs(rel) <= 0.03,
    }
    k = args.iwae_k
    print()
    print(f"| model | weight bits | params | packed bytes | val −ELBO | test −ELBO | test KL | test IWAE-{k} NLL | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['weight_bits']} | {r['params']:,} | {r['packed_bytes']:,} | {r['val_neg_elbo']:.2f} | "
              f"{r['test_neg_elbo']:.2f} | {r['test_kl']:.2f} | {r[f'test_iwae{k}_nll']:.2f} | {r['train_s']:.0f} |")
    print(f"\n{args.bits}-bit vs FP32 test −ELBO: {100 * rel:+.2f}%  |  compression {fp['packed_bytes'] / q['packed_bytes']:.1f}x")
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": platform.python_version()}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "relative_gap": rel, "checks": checks}, indent=2))
    tmp.replace(out)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
