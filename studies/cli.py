"""The ``vaenas`` command line. Exit codes: 0 success, 1 failure, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from search_space import ArchSpec, SearchSpace, VaenasInputError

SEED_MLP = ArchSpec.mlp((400, 400), 20)


class CliError(VaenasInputError):
    pass


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _load_arch(path: str) -> ArchSpec:
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--arch: file {path!r} does not exist")
    text = p.read_text()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--arch: {path!r} is not valid JSON ({e})") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):  # an exported arch file wraps the spec
        d = d["spec"]
    return ArchSpec.from_dict(d)


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from evaluator import TrainConfig, evaluate_neg_elbo, iwae_nll, load_data, seeded_model, train
    from search_space import pack_model

    spec = _load_arch(args.arch) if args.arch else SEED_MLP
    if args.bits is not None:
        spec = spec.replace(weight_bits=(args.bits,) * len(spec.weight_bits))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, lr_schedule=args.lr_schedule)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out: {str(out)!r} exists and is not a directory")
    data = load_data(args.dataset, args.data_root, n_train=args.n_train)
    model = seeded_model(spec, args.seed, args.device)
    print(f"training {spec.id} ({spec.family}, latent {spec.latent_dim}, bits {list(spec.weight_bits)}) "
          f"on {args.dataset} for {args.epochs:g} epochs", flush=True)
    res = train(model, data.train, cfg, progress=sys.stderr.isatty())
    test = evaluate_neg_elbo(model, data.test)
    report = {
        "spec": spec.to_dict(), "spec_id": spec.id, "dataset": args.dataset, "train": cfg.to_dict(),
        "train_seconds": res.seconds, "steps": res.steps, "test_neg_elbo": test["neg_elbo"], "test_kl": test["kl"],
        "params": sum(p.numel() for p in model.parameters()),
    }
    packed = pack_model(model)
    report["packed_bytes"] = len(packed)
    if args.iwae_k:
        report[f"test_iwae{args.iwae_k}_nll"] = iwae_nll(model, data.test, k=args.iwae_k)
    out.mkdir(parents=True, exist_ok=True)
    import io

    buf = io.BytesIO()
    torch.save({"format": "vaenas.checkpoint", "version": 1, "spec": spec.to_json(),
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, buf)
    _atomic_write(out / "model.pt", buf.getvalue())
    _atomic_write(out / "weights.packed.bin", packed)
    _atomic_write(out / "arch.json", spec.to_json(indent=2).encode())
    _atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
    print(f"test -ELBO {test['neg_elbo']:.2f} nats | params {report['params']:,} | packed {len(packed):,} bytes | "
          f"train {res.seconds:.1f}s")
    if args.iwae_k:
        print(f"test IWAE-{args.iwae_k} NLL {report[f'test_iwae{args.iwae_k}_nll']:.2f} nats")
    print(f"wrote {out}/model.pt, weights.packed.bin, arch.json, report.json")
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    space = SearchSpace.load(args.space)
    print(f"space {space.name!r}: {space.size():,} distinct specs (10^{space.log10_size():.1f}), "
          f"{len(space.dimensions())} named decisions")
    rng = random.Random(args.seed)
    for _ in range(args.sample):
        s = space.sample(rng)
        print(s.id, s.to_json())
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vaenas", description="Search for small, fast, low-bit VAEs.")
    sub = ap.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one architecture (default: the seed MLP VAE 784-400-400-20) and report")
    t.add_argument("--arch", help="arch spec JSON (or an exported arch file); default the seed MLP VAE")
    t.add_argument("--bits", type=int, help="override: every weight layer at this bit-width")
    t.add_argument("--dataset", default="mnist", help="mnist | fashion_mnist")
    t.add_argument("--data-root", help="dataset folder (default $VAENAS_DATA or ~/.cache/vaenas/data)")
    t.add_argument("--epochs", type=float, default=1.0)
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--lr-schedule", default="constant", help="constant | cosine")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--n-train", type=int, help="train on the first N training images only")
    t.add_argument("--iwae-k", type=int, default=0, help="also report the IWAE-k NLL (0: skip)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--out", default="runs/train", help="output folder")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("space", help="describe a search-space YAML: its size, and optionally sampled specs")
    s.add_argument("space")
    s.add_argument("--sample", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_space)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VaenasInputError as e:
        print(f"vaenas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaenas: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # a failure, not bad input: one line, exit 1
        print(f"vaenas: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
