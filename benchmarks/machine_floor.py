"""The physical floor of this machine for batch-1 inference: memory bandwidth and peak MAC rates, measured with
small C loops (one thread), so benchmarks/deploy_latency.py can show how far each artifact is from its floor.

* ``bandwidth_gbs``: reading a 256 MiB buffer (sum of 64-bit words, -O2), GB/s - a model whose weights do not
  fit in cache cannot run faster than its weight bytes / this;
* ``gemv``: one 784x512 matrix-vector product (the shape of an MNIST VAE's first layer), weights in cache,
  GMAC/s: float32 at ``-O2`` (no vectorisation: float sums may not be reordered), int8 x int8 -> int32 at
  ``-O2`` and at ``-O3 -march=native`` (the host's own instruction set).

A model's floor on a backend is ``max(weight bytes / bandwidth, MACs / peak rate)``; with weights in cache
(every benchmark model here: at most ~1 MB) the MAC rate decides.

    python benchmarks/machine_floor.py [--out benchmarks/results/machine_floor.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

SOURCE = r"""
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#define N 784
#define O 512
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static int8_t xq[N], wq[O * N];
static float xf[N], wf[O * N];
static int32_t yq[O];
static float yf[O];
__attribute__((noinline)) static void gemv_i8(void)
{
    int o, i;
    for (o = 0; o < O; o++) {
        int32_t a = 0;
        for (i = 0; i < N; i++)
            a += (int32_t)xq[i] * (int32_t)wq[o * N + i];
        yq[o] = a;
    }
}
__attribute__((noinline)) static void gemv_f32(void)
{
    int o, i;
    for (o = 0; o < O; o++) {
        float a = 0.0f;
        for (i = 0; i < N; i++)
            a += xf[i] * wf[o * N + i];
        yf[o] = a;
    }
}
static double best(void (*f)(void), int reps)
{
    double b = 1e30;
    int r, k;
    for (r = 0; r < 7; r++) {
        double t0 = now(), t;
        for (k = 0; k < reps; k++)
            f();
        t = (now() - t0) / reps;
        b = t < b ? t : b;
    }
    return b;
}
int main(int argc, char **argv)
{
    size_t n = (size_t)256 << 20, i;
    uint64_t *buf = malloc(n), s = 0;
    double t0, bw = 0;
    int r;
    (void)argc;
    for (i = 0; i < N; i++) { xq[i] = (int8_t)(i * 7); xf[i] = (float)(i % 13) * 0.1f; }
    for (i = 0; i < (size_t)O * N; i++) { wq[i] = (int8_t)(i * 13); wf[i] = (float)(i % 7) * 0.1f; }
    if (argv[1][0] == 'b') {
        for (i = 0; i < n / 8; i++) buf[i] = i;
        for (r = 0; r < 5; r++) {
            double t;
            t0 = now();
            for (i = 0; i < n / 8; i++) s += buf[i];
            t = now() - t0;
            bw = bw > n / t / 1e6 ? bw : n / t / 1e6;
        }
        printf("%.3f %llu\n", bw, (unsigned long long)s);
    } else if (argv[1][0] == 'i') {
        printf("%.4f %d\n", (double)O * N / best(gemv_i8, 50) / 1e6, yq[3]);
    } else {
        printf("%.4f %g\n", (double)O * N / best(gemv_f32, 20) / 1e6, yf[3]);
    }
    return 0;
}
"""


def run(flags: list[str], arg: str, tmp: Path) -> float:
    exe = tmp / ("floor" + "".join(f.replace("-", "_").replace("=", "") for f in flags))
    if not exe.exists():
        subprocess.run(["cc", "-std=c99", *flags, "-o", str(exe), str(tmp / "floor.c")], check=True)
    return float(subprocess.run([str(exe), arg], capture_output=True, text=True, check=True).stdout.split()[0])


def measure() -> dict:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "floor.c").write_text(SOURCE)
        return {
            "bandwidth_gbs": run(["-O2"], "b", tmp),
            "gemv": {"shape": "784x512, batch 1, 1 thread, weights in cache",
                     "f32_O2_gmacs": run(["-O2"], "f", tmp),
                     "i8_O2_gmacs": run(["-O2"], "i", tmp),
                     "i8_O3_native_gmacs": run(["-O3", "-march=native"], "i", tmp)},
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "results" / "machine_floor.json"))
    args = ap.parse_args(argv)
    doc = measure()
    Path(args.out).write_text(json.dumps(doc, indent=2))
    g = doc["gemv"]
    print(f"memory bandwidth (read): {doc['bandwidth_gbs']:.1f} GB/s")
    print(f"GEMV 784x512: float32 -O2 {g['f32_O2_gmacs']:.2f} GMAC/s; int8 -O2 {g['i8_O2_gmacs']:.2f} GMAC/s; "
          f"int8 -O3 -march=native {g['i8_O3_native_gmacs']:.2f} GMAC/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
