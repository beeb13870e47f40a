"""Deployable exports side by side: file size and batch-1 latency per backend, for N models (default 20).

Every model is exported once per backend (ONNX in onnxruntime, the C library compiled with
``cc -std=c99 -O2``, the ExecuTorch ``.pte`` with XNNPACK, PyTorch eager fp32) and timed twice: pass 1
over the models in order, pass 2 in reverse order (so drift cannot pass for agreement), each pass in
``--rounds`` rounds that visit every model (so a transient stall of the machine hits all models
alike; a model's latency in a pass is the median of all its timed runs); Spearman's
rank correlation between the passes per backend (target >= 0.95). Each model also has a float twin
(the same architecture with every layer at 32 bits) exported and timed the same way, which gives
the int-vs-float verdict per backend: the median over models of quantised / float latency.

Sizes: ``onnx`` = encoder.onnx + decoder.onnx bytes; ``c`` = ``size``'s text+data of ``vae_model.o``
(the flash the model takes); ``pte`` = model.pte bytes; ``packed`` = pack_model's bytes (the
weights alone); ``fp32`` = 4 bytes per parameter. Models are untrained (latency and size do not
depend on weight values; all models run with one thread).

    python benchmarks/deploy_latency.py [--n 20] [--repeats 200] [--rounds 5] [--backends onnxruntime,c,executorch,torch]
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
from evaluator.latency import prepare
from search_space import ArchSpec, build_vae, pack_model

HERE = Path(__file__).resolve().parent
BACKENDS = ("onnxruntime", "c", "executorch", "torch")


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
    models = []
    for s in specs(args.n, args.seed):
        models.append(("quant", s))
        models.append(("float", s.replace(weight_bits=(32,) * len(s.weight_bits))))
    tmp = Path(tempfile.mkdtemp(prefix="vaenas-deploy-bench-"))
    prepared, rows = {}, []
    t0 = time.perf_counter()
    for i, (kind, spec) in enumerate(models):
        torch.manual_seed(i)
        model = build_vae(spec).eval()
        folders = {}
        row = {"i": i // 2, "kind": kind, "spec_id": spec.id, "family": spec.family, "params": model.num_params(),
               "mean_bits": round(spec.mean_bits, 2), "packed_bytes": len(pack_model(model)),
               "fp32_bytes": 4 * model.num_params(), "prepare_s": {}}
        for b in backends:
            d = tmp / f"{i}-{b}"
            d.mkdir()
            ts = time.perf_counter()
            prepared[(i, b)] = prepare(model, LatencyConfig(backend=b, repeats=args.repeats, warmup=args.warmup), d)
            row["prepare_s"][b] = round(time.perf_counter() - ts, 2)
            folders[b] = d
        row["sizes"] = {k: v for k, v in file_sizes(spec, folders).items() if v is not None}
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
        summary[b] = {"path": paths[b], "spearman": rho, "median_quant_over_float": med, "verdict": verdict}
    doc = {"args": vars(args), "backends": summary, "rows": rows, "seconds": time.perf_counter() - t0,
           "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(doc, indent=2))
    print(table(rows, backends, summary))
    return 0 if all(s["spearman"] >= 0.95 for s in summary.values()) else 1


def table(rows, backends, summary) -> str:
    short = {"onnxruntime": "ORT", "c": "C", "executorch": "ET", "torch": "torch"}
    head = ("| # | model | family | params | mean bits | packed B | fp32 B | ONNX B | C text+data B | PTE B | "
            + " | ".join(f"{short[b]} ms (pass 2)" for b in backends) + " |")
    lines = [head, "|" + "---|" * (10 + len(backends))]
    for r in rows:
        if r["kind"] != "quant":
            continue
        s = r["sizes"]
        lines.append(f"| {r['i']} | {r['spec_id']} | {r['family']} | {r['params']:,} | {r['mean_bits']} | "
                     f"{r['packed_bytes']:,} | {r['fp32_bytes']:,} | {s.get('onnx', 0):,} | {s.get('c', 0):,} | "
                     f"{s.get('pte', 0):,} | "
                     + " | ".join(f"{r['pass1'][b]:.3f} ({r['pass2'][b]:.3f})" for b in backends) + " |")
    lines.append("")
    lines.append("| backend | what ran | Spearman pass1 vs pass2 | quantised / float32 latency (median) | verdict |")
    lines.append("|---|---|---|---|---|")
    for b in backends:
        s = summary[b]
        lines.append(f"| {b} | {s['path']} | {s['spearman']:.3f} | {s['median_quant_over_float']:.2f} | {s['verdict']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
