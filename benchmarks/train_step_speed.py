"""Milliseconds per training step of four specs on each device asked for (CUDA and/or this machine's CPU).

Each spec is trained for one epoch of ``--n-train`` MNIST images at batch 100 (200 steps at the default
20,000) by the one training loop (``evaluator.train``), ``--repeats`` times (the median is reported, every
run is kept), after a 20-step warm-up of its own (CUDA context, kernels, allocator). Seconds are
``TrainResult.seconds`` (the loop's own clock, synchronised on CUDA).

    python benchmarks/train_step_speed.py --data-root .data --devices cpu
    python benchmarks/train_step_speed.py --data-root .data --devices cuda,cpu --out benchmarks/results/train_step_speed_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_out import earlier_json  # noqa: E402
from evaluator import TrainConfig, load_data, seeded_model, train  # noqa: E402
from evaluator.train import check_device  # noqa: E402
from search_space import ArchSpec, VaenasInputError  # noqa: E402


def specs() -> dict[str, ArchSpec]:
    target = yaml.safe_load((REPO / "studies/presets/compression_target.yaml").read_text())["enqueue"][0]
    return {
        # the mnist_fast preset's knee (trial 19 of its issue-35 run): one hidden layer of 64, latent 8, 8/32-bit
        "mlp-64-lat8-mixed": ArchSpec(family="mlp", enc_hidden=(64,), latent_dim=8, weight_bits=(8, 32, 32, 8)),
        "mlp-400x2-fp32": ArchSpec.mlp((400, 400), 32, bits=32),
        "mlp-400x2-4bit": ArchSpec.mlp((400, 400), 32, bits=4),
        # conv 32/64, mixed 3-8-bit uniform and k-means weights, 30 % structured pruning (the report's target row)
        "conv-target-v2best": ArchSpec.from_dict(target),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=".data")
    ap.add_argument("--devices", default="cpu", help="comma-separated: cpu, cuda")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5, help="timed epochs per spec and device; the median is reported")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    devices = args.devices.split(",")
    try:  # bad input: one line, exit 2, before anything is trained or written
        if args.repeats < 1:
            raise VaenasInputError(f"--repeats: must be >= 1, got {args.repeats}")
        for dev in devices:
            check_device(dev, "--devices")
        out = Path(args.out) if args.out else None
        if out is not None:
            earlier_json(out, {"meta", "rows"}, "train_step_speed")
        data = load_data("mnist", args.data_root, n_train=args.n_train, n_eval=1000)
    except VaenasInputError as e:
        print(f"train_step_speed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    rows, todo = [], specs()
    for dev in devices:
        for name, spec in todo.items():
            warm = seeded_model(spec, 0, dev)
            train(warm, data.train, TrainConfig(max_steps=20, batch_size=100, device=dev))
            runs = []
            for _ in range(args.repeats):
                model = seeded_model(spec, 0, dev)
                runs.append(train(model, data.train, TrainConfig(epochs=1, batch_size=100, lr=0.002, device=dev)))
            r = sorted(runs, key=lambda t: t.seconds)[len(runs) // 2]  # the median run
            row = {"device": dev, "spec": name, "spec_id": spec.id, "steps": r.steps, "seconds": round(r.seconds, 3),
                   "ms_per_step": round(1000 * r.seconds / r.steps, 3), "final_loss": round(r.final_loss, 2),
                   "repeats": len(runs), "ms_per_step_all": [round(1000 * t.seconds / t.steps, 3) for t in runs]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if out is not None:
        meta = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "gpu": gpu,
                "machine": platform.machine(), "n_train": args.n_train}
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
