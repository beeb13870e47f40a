"""Deployable exports side by side: file size and batch-1 latency per backend, for N models (default 20).

Each model is an integer spec (``arithmetic: int8``: int8 activations, its searched 2-8-bit weights) beside its
float twin (the same architecture with every layer at 32 bits, float arithmetic), both exported by the same
generators and timed the same way. Backends: ONNX in onnxruntime, the C library compiled with
``cc -std=c99 -O2`` (``c``) and, as a build option for the host's own instruction set, with
``-O3 -march=native`` (``c_native``, both twins), the ExecuTorch ``.pte`` with XNNPACK, PyTorch eager fp32.
Every model is exported once per backend and timed twice: pass 1
over the models in order, pass 2 in reverse order (so drift cannot pass for agreement), each pass in
``--rounds`` rounds that visit every model (so a transient stall of the machine hits all models
alike; a model's latency in a pass is the median of all its timed runs); Spearman's
rank correlation between the passes per backend (target >= 0.95). Each model also has a float twin
(the same architecture with every layer at 32 bits) exported and timed the same way, which gives
the int-vs-float verdict per backend: the median over models of quantised / float latency. Each artifact's
GMAC/s (MACs / latency) is printed beside the machine's floor (``machine_floor.py``: GEMV GMAC/s and memory
bandwidth), with the floor latency ``max(weight bytes / bandwidth, MACs / peak MAC rate)`` per model.

Sizes: ``onnx`` = encoder.onnx + decoder.onnx bytes; ``c`` = ``size``'s text+data of ``vae_model.o``
(the flash the model takes); ``pte`` = model.pte bytes; ``packed`` = pack_model's bytes (the
weights alone); ``fp32`` = 4 bytes per parameter. Models are untrained (latency and size do not
depend on weight values; all models run with one thread).

Integer models are untrained but calibrated (their activation quantisers have seen one batch of random binary
images): the integer kernels' work does not depend on the values, only the table activations' lookups would.

    python benchmarks/deploy_latency.py [--n 20] [--repeats 200] [--rounds 5] [--backends onnxruntime,c,c_native,executorch,torch]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from evaluator import LatencyConfig
from evaluator.costs import count_flops
from evaluator.latency import Prepared, prepare
from search_space import ArchSpec, build_vae, pack_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_floor import measure as measure_floor  # noqa: E402

HERE = Path(__file__).resolve().parent
BACKENDS = ("onnxruntime", "c", "c_native", "executorch", "torch")
NATIVE = ("-std=c99", "-O3", "-march=native")


def specs(n: int, seed: int) -> list[ArchSpec]:
    """Half MLP, half conv, MNIST-shaped, every layer quantised to a bit-width from {2,3,4,5,6,8}."""
    rng = random.Random(seed)
    out: list[ArchSpec] = []
    while len(out) < n:
        bits = lambda k: tuple(rng.choice((2, 3, 4, 5, 6, 8)) for _ in range(k))  # noqa: E731
        if len(out) % 2 == 0:
            hidden = tuple(rng.choice((64, 128, 256, 512)) for _ in range(rng.randint(1, 2)))
            s = ArchSpec(family="mlp", enc_hidden=hidden, latent_dim=rng.choice((8, 16, 32)),
                         weight_bits=bits(2 * len(hidden) + 2))
        else:
            nc = rng.randint(1, 2)
            fc = tuple(rng.choice((64, 128)) for _ in range(rng.randint(0, 1)))
            s = ArchSpec(family="conv", enc_channels=tuple(rng.choice((8, 16, 32)) for _ in range(nc)),
                         kernels=tuple(rng.choice((3, 4)) for _ in range(nc)), strides=(2,) * nc, enc_hidden=fc,
                         latent_dim=rng.choice((8, 16, 32)), weight_bits=bits(2 * nc + 2 * len(fc) + 2))
        if s.id not in {x.id for x in out}:
            out.append(s)
    return out


def prepare_native(model, cfg: LatencyConfig, workdir: Path) -> Prepared:
    """The C library built with the host's own instruction set (``-O3 -march=native``), timed by its driver."""
    p = prepare(model, LatencyConfig(backend="c", repeats=cfg.repeats, warmup=cfg.warmup), workdir)
    subprocess.run(["cc", *NATIVE, "-o", "vae_demo", "main.c", "vae_model.c", "-lm"], cwd=workdir, check=True)
    return Prepared(p.times, "C99 (cc -O3 -march=native, 1 thread)")


def calibrated(spec: ArchSpec, seed: int):
    """An untrained model of ``spec`` whose activation quantisers have seen one batch (integer specs)."""
    torch.manual_seed(seed)
    model = build_vae(spec)
    if spec.is_integer:
        with torch.no_grad():
            model.train()(torch.rand(64, *spec.input_shape).round())
    return model.eval()


def file_sizes(spec: ArchSpec, folders: dict[str, Path]) -> dict[str, int]:
    sizes = {"packed": None, "fp32": None}
    if "onnxruntime" in folders:
        sizes["onnx"] = sum((folders["onnxruntime"] / f).stat().st_size for f in ("encoder.onnx", "decoder.onnx"))
    if "c" in folders:
        subprocess.run(["cc", "-std=c99", "-O2", "-c", "-o", "vae_model.o", "vae_model.c"], cwd=folders["c"], check=True)
        t, d = (int(v) for v in subprocess.run(["size", "vae_model.o"], cwd=folders["c"], capture_output=True, text=True,
                                               check=True).stdout.splitlines()[1].split()[:2])
        sizes["c"] = t + d
    if "executorch" in folders:
        sizes["pte"] = (folders["executorch"] / "model.pte").stat().st_size
    return sizes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=200, help="timed runs per model, backend and pass")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs before each round's timed runs")
    ap.add_argument("--rounds", type=int, default=5, help="a pass visits every model this many times")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--out", default=str(HERE / "results" / "deploy_latency.json"))
    args = ap.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    torch.set_num_threads(1)
    floor = measure_floor()
    print(f"machine floor: {json.dumps(floor)}", flush=True)
    models = []
    for s in specs(args.n, args.seed):
        models.append(("quant", s.replace(arithmetic="int8")))
        models.append(("float", s.replace(weight_bits=(32,) * len(s.weight_bits))))
    tmp = Path(tempfile.mkdtemp(prefix="vaenas-deploy-bench-"))
    prepared, rows = {}, []
    t0 = time.perf_counter()
    for i, (kind, spec) in enumerate(models):
        model = calibrated(spec, i)
        folders = {}
        row = {"i": i // 2, "kind": kind, "spec_id": spec.id, "family": spec.family, "params": model.num_params(),
               "macs": count_flops(spec).macs,
               "mean_bits": round(spec.mean_bits, 2), "packed_bytes": len(pack_model(model)),
               "fp32_bytes": 4 * model.num_params(), "prepare_s": {}}
        for b in backends:
            d = tmp / f"{i}-{b}"
            d.mkdir()
            ts = time.perf_counter()
            cfg = LatencyConfig(backend="c" if b == "c_native" else b, repeats=args.repeats, warmup=args.warmup)
            prepared[(i, b)] = (prepare_native if b == "c_native" else prepare)(model, cfg, d)
            row["prepare_s"][b] = round(time.perf_counter() - ts, 2)
            folders[b] = d
        row["sizes"] = {k: v for k, v in file_sizes(spec, folders).items() if v is not None}
        row["floor_ms"] = floor_ms(row, floor, spec.is_integer)
        rows.append(row)
        print(f"prepared {i + 1}/{len(models)} ({kind} {spec.family} {spec.id}) {time.perf_counter() - t0:.0f} s",
              flush=True)
    order = list(range(len(models)))
    per_round = max(2, args.repeats // args.rounds)
    for p, seq in (("pass1", order), ("pass2", order[::-1])):
        runs: dict = {}
        for _ in range(args.rounds):  # each model's runs spread over the pass: a transient stall hits all alike
            for i in seq:
                for b in backends:
                    runs.setdefault((i, b), []).extend(prepared[(i, b)].times(args.warmup, per_round))
        for (i, b), ts in runs.items():
            rows[i].setdefault(p, {})[b] = statistics.median(ts)
        print(f"{p} done {time.perf_counter() - t0:.0f} s", flush=True)
    paths = {b: prepared[(0, b)].path for b in backends}
    quant = [r for r in rows if r["kind"] == "quant"]
    floats = {r["i"]: r for r in rows if r["kind"] == "float"}
    summary = {}
    for b in backends:
        rho = spearmanr([r["pass1"][b] for r in quant], [r["pass2"][b] for r in quant]).statistic
        ratios = [statistics.mean([r["pass1"][b], r["pass2"][b]]) /
                  statistics.mean([floats[r["i"]]["pass1"][b], floats[r["i"]]["pass2"][b]]) for r in quant]
        med = statistics.median(ratios)
        faster = sum(x < 1 for x in ratios)
        verdict = (f"quantised is {1 / med:.2f}x FASTER than float32 (median over {len(ratios)} models; faster on "
                   f"{faster}/{len(ratios)})" if med < 1 else
                   f"quantised is {med:.2f}x SLOWER than float32 (median over {len(ratios)} models; faster on "
                   f"{faster}/{len(ratios)})")
        gmacs = [r["macs"] / (statistics.mean([r["pass1"][b], r["pass2"][b]]) * 1e6) for r in quant]
        f_gmacs = [floors["macs"] / (statistics.mean([floors["pass1"][b], floors["pass2"][b]]) * 1e6)
                   for floors in floats.values()]
        summary[b] = {"path": paths[b], "spearman": rho, "median_quant_over_float": med, "verdict": verdict,
                      "faster": faster, "median_speedup": 1 / med, "median_int_gmacs": statistics.median(gmacs),
                      "median_float_gmacs": statistics.median(f_gmacs)}
    doc = {"args": vars(args), "floor": floor, "backends": summary, "rows": rows,
           "seconds": time.perf_counter() - t0, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(table(rows, backends, summary))
    return 0 if all(s["spearman"] >= 0.95 for s in summary.values()) else 1


def floor_ms(row: dict, floor: dict, integer: bool) -> float:
    """The model's floor latency on this machine: reading its weights once, or its MACs at the peak rate."""
    g = floor["gemv"]
    rate = g["i8_O3_native_gmacs"] if integer else g["f32_O2_gmacs"]
    weight_bytes = row["packed_bytes"]
    return max(weight_bytes / (floor["bandwidth_gbs"] * 1e6), row["macs"] / (rate * 1e6))


def table(rows, backends, summary) -> str:
    short = {"onnxruntime": "ORT", "c": "C", "c_native": "C native", "executorch": "ET", "torch": "torch"}
    head = ("| # | model | family | MACs | mean bits | packed B | ONNX B | C text+data B | PTE B | floor ms | "
            + " | ".join(f"{short[b]} int ms (float ms) speed-up, int GMAC/s" for b in backends) + " |")
    lines = [head, "|" + "---|" * (10 + len(backends))]
    floats = {r["i"]: r for r in rows if r["kind"] == "float"}
    for r in rows:
        if r["kind"] != "quant":
            continue
        s, f = r["sizes"], floats[r["i"]]
        cells = []
        for b in backends:
            qi, fl = statistics.mean([r["pass1"][b], r["pass2"][b]]), statistics.mean([f["pass1"][b], f["pass2"][b]])
            cells.append(f"{qi:.4f} ({fl:.4f}) {fl / qi:.2f}x, {r['macs'] / (qi * 1e6):.2f}")
        lines.append(f"| {r['i']} | {r['spec_id']} | {r['family']} | {r['macs']:,} | {r['mean_bits']} | "
                     f"{r['packed_bytes']:,} | {s.get('onnx', 0):,} | {s.get('c', 0):,} | {s.get('pte', 0):,} | "
                     f"{r['floor_ms']:.4f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| backend | what ran | Spearman pass1 vs pass2 | int faster on | median speed-up (float / int) | "
                 "median GMAC/s int (float) |")
    lines.append("|---|---|---|---|---|---|")
    for b in backends:
        s = summary[b]
        lines.append(f"| {b} | {s['path']} | {s['spearman']:.3f} | {s['faster']}/{len(floats)} | "
                     f"{s['median_speedup']:.2f}x | {s['median_int_gmacs']:.2f} ({s['median_float_gmacs']:.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
