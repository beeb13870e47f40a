"""The Cortex-M target: instructions per reconstruction of the integer C library against its float twin, both
cross-compiled with Debian's ``arm-none-eabi-gcc -O2`` and run once in an emulator of the core
(:mod:`evaluator.mcu`), for the 20 models of ``deploy_latency.py`` and the MLPerf Tiny anomaly-detection
autoencoder's shape (640-128-128-128-128-8, mirrored; 8-bit weights).

An instruction count is not a cycle count. The float twin runs on the M4F's single-precision FPU (hard float)
and on the M0+ in software (soft float). Flash = text + data and RAM = data + bss + the stack the run reached,
from ``arm-none-eabi-size`` and the emulator.

    python benchmarks/cortex_m.py [--n 20] [--cpu cortex-m4] [--out benchmarks/results/cortex_m.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from evaluator import mcu
from evaluator.costs import count_flops
from search_space import ArchSpec, pack_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_latency import calibrated, specs  # noqa: E402

HERE = Path(__file__).resolve().parent
AD_SHAPE = ArchSpec(family="mlp", enc_hidden=(128,) * 4, latent_dim=8, weight_bits=(8,) * 10, input_shape=(640,),
                    arithmetic="int8")


def measure(spec: ArchSpec, cpu: str, seed: int, tmp: Path) -> dict:
    model = calibrated(spec, seed)
    x = (torch.rand(spec.n_inputs, generator=torch.Generator().manual_seed(seed)) > 0.5).float().numpy()
    r = mcu.measure(spec, pack_model(model), tmp / f"{spec.id}-{cpu}", cpu, x)
    r.pop("out")
    macs = count_flops(spec).macs
    return {**r, "macs": macs, "per_mac": r["instructions"] / macs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", default="cortex-m4")
    ap.add_argument("--out", default=str(HERE / "results" / "cortex_m.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for i, s in enumerate(specs(args.n, args.seed)):
            q = measure(s.replace(arithmetic="int8"), args.cpu, i, tmp)
            f = measure(s.replace(weight_bits=(32,) * len(s.weight_bits)), args.cpu, i, tmp)
            rows.append({"i": i, "spec_id": s.id, "family": s.family, "bits": list(s.weight_bits), "int": q, "float": f,
                         "ratio": q["instructions"] / f["instructions"]})
            print(f"{i}: {s.family} int {q['instructions']:,} ({q['per_mac']:.2f}/MAC) float {f['instructions']:,} "
                  f"({f['per_mac']:.2f}/MAC) ratio {rows[-1]['ratio']:.3f}  {time.perf_counter() - t0:.0f} s", flush=True)
        ad = {cpu: measure(AD_SHAPE, cpu, 0, tmp) for cpu in mcu.CORES}
    third = sum(r["ratio"] <= 1 / 3 for r in rows)
    doc = {"args": vars(args), "rows": rows, "ad_shape": {"spec": AD_SHAPE.to_dict(), **ad},
           "at_most_a_third": third, "median_ratio": statistics.median(r["ratio"] for r in rows),
           "median_int_per_mac": statistics.median(r["int"]["per_mac"] for r in rows),
           "median_float_per_mac": statistics.median(r["float"]["per_mac"] for r in rows),
           "seconds": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(doc, indent=2, default=lambda v: v.item() if isinstance(v, np.generic) else v))
    print(table(doc))
    return 0


def table(doc: dict) -> str:
    lines = ["| # | model | family | MACs | int instructions (per MAC) | float instructions (per MAC) | int / float | "
             "int flash B | int RAM B | float flash B | float RAM B |", "|" + "---|" * 11]
    for r in doc["rows"]:
        q, f = r["int"], r["float"]
        lines.append(f"| {r['i']} | {r['spec_id']} | {r['family']} | {q['macs']:,} | {q['instructions']:,} "
                     f"({q['per_mac']:.2f}) | {f['instructions']:,} ({f['per_mac']:.2f}) | {r['ratio']:.3f} | "
                     f"{q['flash_bytes']:,} | {q['ram_bytes']:,} | {f['flash_bytes']:,} | {f['ram_bytes']:,} |")
    n = len(doc["rows"])
    lines += ["", f"int <= 1/3 of float on {doc['at_most_a_third']}/{n} models (target >= 18/{n}); median ratio "
              f"{doc['median_ratio']:.3f}; median instructions per MAC: int {doc['median_int_per_mac']:.2f}, float "
              f"{doc['median_float_per_mac']:.2f}", "",
              "MLPerf Tiny AD shape (640-128x4-8 mirrored, 8-bit weights, int8):", "",
              "| core | instructions | per MAC | flash B | RAM B | stack B |", "|---|---|---|---|---|---|"]
    for cpu, a in doc["ad_shape"].items():
        if cpu == "spec":
            continue
        lines.append(f"| {cpu} | {a['instructions']:,} | {a['per_mac']:.2f} | {a['flash_bytes']:,} | {a['ram_bytes']:,} | "
                     f"{a['stack_bytes']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
