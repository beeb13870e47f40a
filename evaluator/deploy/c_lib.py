"""The C99 library export: ``vae_model.h``/``vae_model.c`` (packed weights + reference inference),
``main.c`` (a command-line driver) and a ``Makefile``.

``vae_model.c`` holds the model as **one** ``const uint8_t vae_packed[]`` array, byte for byte
the ``weights.packed.bin`` that :func:`search_space.pack_model` writes (layout in
``search_space/packing.py``), and reads everything from it: sub-byte weight codes are unpacked on
the fly (LSB first; weight ``= (code - qmax) * scale``, the channel's float32 scale), float32
scales, biases and 32-bit weights are read little-endian byte by byte (any host). No malloc, no
dependency beyond ``libm``; one static float arena sized at export (``VAE_RAM_BYTES``, see
:mod:`.memory`). Inference is per example (a batch is a loop).

API (``vae_model.h``)::

    void vae_encode(const float *x, float *mu, float *logvar);   /* x: VAE_N_INPUT floats */
    void vae_decode(const float *z, float *out);                  /* out: VAE_N_OUTPUT floats */
    void vae_reconstruct(const float *x, float *out);             /* decode(mu) */

``main.c``: ``./vae_demo encode|decode|reconstruct [FILE]`` reads whitespace-separated floats
(one example after another) from FILE or stdin and prints each result on one line;
``./vae_demo bench REPEATS WARMUP BATCH [FILE]`` times ``BATCH`` reconstruction passes of one example
``REPEATS`` times and prints each time in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_space.activations import get_activation
from search_space.compression import index_bits
from search_space.packing import LayerOffsets, layer_offsets
from search_space.spec import ArchSpec
from .c_common import _hex_rows, header_source
from .memory import arena_floats, prefix_entries, ram_bytes
from search_space.plan import Step, decoder_steps, encoder_steps, tensor_sizes

C_FILES = ("vae_model.h", "vae_model.c", "main.c", "Makefile")
CFLAGS = "-std=c99 -O2 -Wall -Wextra -Werror"


_KERNELS = {
    "common": r"""
static float rd_f32(uint32_t off)
{
    const uint8_t *p = vae_packed + off;
    uint32_t u = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The j-th unsigned field of `bits` bits (1..31) of a bit stream starting at byte off, LSB first. */
static uint32_t field(uint32_t off, uint32_t j, uint32_t bits)
{
    uint32_t bit = j * bits, byte = off + (bit >> 3), sh = bit & 7u, got = 8u - sh;
    uint32_t v = (uint32_t)vae_packed[byte] >> sh;
    while (got < bits) {
        byte++;
        v |= (uint32_t)vae_packed[byte] << got;
        got += 8u;
    }
    return v & ((1u << bits) - 1u);
}

/* Where weight i of a layer is stored among its kept weights, or -1 if it was pruned (it is 0). */
static int32_t slot(const vae_layer *L, uint32_t i)
{
    uint32_t lo = 0, hi, k, j;
    if (L->x_off < 0)
        return (int32_t)i;
    if (L->idx_bits == 0) { /* bitmap: kept before this 64-weight block + those before i within it */
        uint32_t base = (uint32_t)L->x_off;
        if (!((vae_packed[base + (i >> 3)] >> (i & 7u)) & 1u))
            return -1;
        j = L->prefix[i >> 6];
        for (k = i & ~63u; k < i; k++)
            j += (vae_packed[base + (k >> 3)] >> (k & 7u)) & 1u;
        return (int32_t)j;
    }
    hi = L->kept; /* index list (ascending): binary search */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2u;
        if (field((uint32_t)L->x_off, mid, L->idx_bits) < i)
            lo = mid + 1u;
        else
            hi = mid;
    }
    return lo < L->kept && field((uint32_t)L->x_off, lo, L->idx_bits) == i ? (int32_t)lo : -1;
}

/* Weight i of a layer: float32 (bits == 32), a codebook entry (k-means) or (code - qmax) * the channel's
   scale (uniform); 0 if pruned. */
static float weight(const vae_layer *L, uint32_t i, float scale)
{
    int32_t j = slot(L, i);
    uint32_t v;
    if (j < 0)
        return 0.0f;
    if (L->bits == 32)
        return rd_f32(L->w_off + 4u * (uint32_t)j);
    v = field(L->w_off, (uint32_t)j, L->bits);
    if (L->kmeans)
        return rd_f32((uint32_t)L->p_off + 4u * v);
    return (float)((int32_t)v - ((1 << (L->bits - 1)) - 1)) * scale;
}

static float channel_scale(const vae_layer *L, int ch)
{
    return L->bits == 32 || L->kmeans ? 1.0f : rd_f32((uint32_t)L->p_off + 4u * (uint32_t)ch);
}

static float channel_bias(const vae_layer *L, int ch)
{
    return L->b_off < 0 ? 0.0f : rd_f32((uint32_t)L->b_off + 4u * (uint32_t)ch);
}
""",
    "linear": r"""
static void linear(const float *in, float *out, int n_in, int n_out, const vae_layer *L)
{
    int o, i;
    for (o = 0; o < n_out; o++) {
        float s = channel_scale(L, o), acc = 0.0f;
        uint32_t row = (uint32_t)o * (uint32_t)n_in;
        for (i = 0; i < n_in; i++)
            acc += in[i] * weight(L, row + (uint32_t)i, s);
        out[o] = acc + channel_bias(L, o);
    }
}
""",
    "conv": r"""
/* Conv2d, weight (O, C, k, k), zero padding p, stride s (PyTorch's layout and arithmetic). */
static void conv2d(const float *in, float *out, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                   const vae_layer *L)
{
    int o, oy, ox, c, ky, kx;
    for (o = 0; o < O; o++) {
        float sc = channel_scale(L, o), b = channel_bias(L, o);
        for (oy = 0; oy < OH; oy++)
            for (ox = 0; ox < OW; ox++) {
                float acc = 0.0f;
                for (c = 0; c < C; c++)
                    for (ky = 0; ky < k; ky++) {
                        int iy = oy * s - p + ky;
                        if (iy < 0 || iy >= H)
                            continue;
                        for (kx = 0; kx < k; kx++) {
                            int ix = ox * s - p + kx;
                            if (ix < 0 || ix >= W)
                                continue;
                            acc += in[(c * H + iy) * W + ix] *
                                   weight(L, (uint32_t)(((o * C + c) * k + ky) * k + kx), sc);
                        }
                    }
                out[(o * OH + oy) * OW + ox] = acc + b;
            }
    }
}
""",
    "tconv": r"""
/* ConvTranspose2d, weight (C, O, k, k), padding p, stride s, output size OH x OW (output_padding
   included), written as a gather: out[o][y][x] sums in[c][iy][ix] * w[c][o][ky][kx], y = iy*s - p + ky. */
static void tconv2d(const float *in, float *out, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                    const vae_layer *L)
{
    int o, y, x, c, ky, kx;
    for (o = 0; o < O; o++) {
        float sc = channel_scale(L, o), b = channel_bias(L, o);
        for (y = 0; y < OH; y++)
            for (x = 0; x < OW; x++) {
                float acc = 0.0f;
                for (c = 0; c < C; c++)
                    for (ky = 0; ky < k; ky++) {
                        int ty = y + p - ky, iy;
                        if (ty < 0 || ty % s)
                            continue;
                        iy = ty / s;
                        if (iy >= H)
                            continue;
                        for (kx = 0; kx < k; kx++) {
                            int tx = x + p - kx, ix;
                            if (tx < 0 || tx % s)
                                continue;
                            ix = tx / s;
                            if (ix >= W)
                                continue;
                            acc += in[(c * H + iy) * W + ix] *
                                   weight(L, (uint32_t)(((c * O + o) * k + ky) * k + kx), sc);
                        }
                    }
                out[(o * OH + y) * OW + x] = acc + b;
            }
    }
}
""",
    "actq": r"""
/* Activation quantisation of one example: 2^bits levels over its own [min, max] (as in training). */
static void act_quant(float *x, int n, int levels)
{
    int i;
    float lo = x[0], hi = x[0], scale;
    for (i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    scale = hi > lo ? (hi - lo) / (float)levels : 1.0f;
    for (i = 0; i < n; i++) {
        float q = nearbyintf((x[i] - lo) / scale);
        q = q < 0.0f ? 0.0f : (q > (float)levels ? (float)levels : q);
        x[i] = q * scale + lo;
    }
}
""",
}


def _layer_struct(o: LayerOffsets, var: str, prefix: str) -> str:
    lay = o.layout
    idx_bits = index_bits(lay.n_weights) if lay.index_format == "indices" else 0
    return (f"static const vae_layer {var} = {{{o.weights}u, {o.params}, {o.bias}, {o.index}, {prefix}, "
            f"{lay.kept}u, {lay.bits}u, {int(lay.is_kmeans)}u, {idx_bits}u}};")


def _prefix_table(o: LayerOffsets, packed: bytes, var: str) -> str:
    """Kept weights before each 64-weight block of a bitmap layer (so a weight's slot is found in <= 63 steps)."""
    lay = o.layout
    bits = np.unpackbits(np.frombuffer(packed, np.uint8)[o.index:o.index + lay.index_bytes],
                         bitorder="little")[:lay.n_weights]
    blocks = np.concatenate([[0], np.cumsum(bits.astype(np.int64))])[::64][:prefix_entries(lay.n_weights)]
    rows = ",\n".join("    " + ", ".join(f"{int(v)}u" for v in blocks[i:i + 12]) for i in range(0, len(blocks), 12))
    return f"static const uint32_t {var}[{len(blocks)}] = {{\n{rows}\n}};"


def _layer_tables(spec: ArchSpec, packed: bytes) -> tuple[dict[str, str], str]:
    """Each packed layer's descriptor variable, and the C defining them (plus bitmap prefix tables)."""
    names, lines = {}, []
    for k, o in enumerate(layer_offsets(spec)):
        prefix = "0"
        if o.layout.index_format == "bitmap":
            prefix = f"vae_prefix{k}"
            lines.append(_prefix_table(o, packed, prefix))
        names[o.layout.name] = f"vae_layer{k}"
        lines.append(f"/* {o.layout.name} */\n" + _layer_struct(o, f"vae_layer{k}", prefix))
    return names, "\n".join(lines)


def _call(step: Step, src: str, dst: str, layer: str, act_bits: int | None) -> list[str]:
    lines = [f"    /* {step.name}: {step.kind} {list(step.in_shape)} -> {list(step.out_shape)}, "
             f"{step.bits}-bit weights */"]
    if act_bits:
        lines.append(f"    act_quant({src}, {step.in_size}, {2 ** act_bits - 1});")
    if step.kind == "linear":
        lines.append(f"    linear({src}, {dst}, {step.in_size}, {step.out_size}, &{layer});")
    else:
        (c, h, wd), (o, oh, ow) = step.in_shape, step.out_shape
        fn = "conv2d" if step.kind == "conv" else "tconv2d"
        lines.append(f"    {fn}({src}, {dst}, {c}, {h}, {wd}, {o}, {oh}, {ow}, {step.kernel}, {step.stride}, "
                     f"{step.padding}, &{layer});")
    if step.act_after:
        lines.append(f"    activation({dst}, {step.out_size});")
    return lines


def _placements(spec: ArchSpec) -> list[str]:
    """Arena pointer of each tensor of the chain: even ones at the start, odd ones at the end."""
    n = arena_floats(spec)
    return [f"vae_arena + {0 if j % 2 == 0 else n - size}" for j, size in enumerate(tensor_sizes(spec))]


_MODEL_C = """/* vaenas export of spec {spec_id}: a {family} VAE, {likelihood} likelihood.
   Generated by vaenas; the weights are weights.packed.bin byte for byte. C99, no malloc. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vae_model.h"

/* The packed model (search_space/packing.py's layout): per layer, the kept weights' positions (sparse
   layers), weight codes / codebook indices / float32 weights, float32 per-channel scales (uniform) or
   codebook (k-means), float32 bias. {n_packed} bytes. */
const uint8_t vae_packed[VAE_PACKED_BYTES] = {{
{hex_rows}
}};

/* Where each layer's sections lie in vae_packed (offset -1: none). */
typedef struct {{
    uint32_t w_off;         /* weights: bits-bit codes / codebook indices, or float32 */
    int32_t p_off;          /* per-channel scales (uniform) or the codebook (k-means) */
    int32_t b_off;          /* bias */
    int32_t x_off;          /* positions of the kept weights (sparse layers) */
    const uint32_t *prefix; /* bitmap layers: kept weights before each 64-weight block */
    uint32_t kept;          /* weights stored */
    uint8_t bits;           /* 32: float32 */
    uint8_t kmeans;
    uint8_t idx_bits;       /* sparse: bits of one index of an index list; 0: a bitmap */
}} vae_layer;

{tables}

/* The only RAM the inference uses: {ram_bytes} bytes. */
static float vae_arena[VAE_ARENA_FLOATS];
{kernels}{act}
static void run_encoder(void)
{{
{enc_body}
}}

static void run_decoder(void)
{{
{dec_body}
}}

void vae_encode(const float *x, float *mu, float *logvar)
{{
    memcpy({x_at}, x, sizeof(float) * VAE_N_INPUT);
    run_encoder();
    memcpy(mu, {head_at}, sizeof(float) * VAE_LATENT);
    memcpy(logvar, {head_at} + VAE_LATENT, sizeof(float) * VAE_LATENT);
}}

void vae_decode(const float *z, float *out)
{{
    memcpy({head_at}, z, sizeof(float) * VAE_LATENT);
    run_decoder();
    memcpy(out, {out_at}, sizeof(float) * VAE_N_OUTPUT);
}}

void vae_reconstruct(const float *x, float *out)
{{
    memcpy({x_at}, x, sizeof(float) * VAE_N_INPUT);
    run_encoder(); /* z = mu: the decoder reads the first {latent} floats of the head's output in place */
    run_decoder();
    memcpy(out, {out_at}, sizeof(float) * VAE_N_OUTPUT);
}}
"""


def model_source(spec: ArchSpec, packed: bytes) -> str:
    enc, dec = encoder_steps(spec), decoder_steps(spec)
    offs, tables = _layer_tables(spec, packed)
    place = _placements(spec)
    kinds = {s.kind for s in enc + dec}
    kernels = [_KERNELS["common"]] + [_KERNELS[k] for k in ("linear", "conv", "tconv") if k in kinds]
    if spec.act_bits:
        kernels.append(_KERNELS["actq"])
    act = ("\nstatic void activation(float *x, int n)\n{\n    int i;\n    for (i = 0; i < n; i++)\n        "
           f"{get_activation(spec.activation).c}\n}}\n") if any(s.act_after for s in enc + dec) else ""
    enc_body, dec_body = [], []
    for j, st in enumerate(enc):
        enc_body += _call(st, place[j], place[j + 1], offs[st.name], spec.act_bits)
    h = len(enc)  # index of the head's output tensor: the decoder reads z = its first latent_dim floats
    for i, st in enumerate(dec):
        dec_body += _call(st, place[h + i], place[h + i + 1], offs[st.name], spec.act_bits)
    L, last = spec.latent_dim, place[-1]
    return _MODEL_C.format(
        spec_id=spec.id, family=spec.family, likelihood=spec.likelihood, n_packed=len(packed),
        hex_rows=_hex_rows(packed), tables=tables, ram_bytes=ram_bytes(spec), kernels="".join(kernels), act=act,
        enc_body="\n".join(enc_body), dec_body="\n".join(dec_body), x_at=place[0], head_at=place[h],
        out_at=last, latent=L)


MAIN_C = r"""/* Command-line driver for the vaenas C export (POSIX clock for `bench`).
   ./vae_demo encode|decode|reconstruct [FILE]     floats in (one example after another), a line out each
   ./vae_demo bench REPEATS WARMUP BATCH [FILE]    ms per BATCH reconstruction passes, REPEATS lines */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "vae_model.h"

static float in_buf[VAE_N_INPUT > VAE_LATENT ? VAE_N_INPUT : VAE_LATENT];
static float out_buf[VAE_N_OUTPUT > 2 * VAE_LATENT ? VAE_N_OUTPUT : 2 * VAE_LATENT];

static int read_example(FILE *f, float *x, int n)
{
    int i;
    for (i = 0; i < n; i++)
        if (fscanf(f, "%f", &x[i]) != 1)
            return i == 0 ? 0 : -1;
    return 1;
}

static void print_row(const float *y, int n)
{
    int i;
    for (i = 0; i < n; i++)
        printf(i ? " %.9g" : "%.9g", (double)y[i]);
    printf("\n");
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int usage(void)
{
    fprintf(stderr, "usage: vae_demo encode|decode|reconstruct [FILE] | bench REPEATS WARMUP BATCH [FILE]\n");
    return 2;
}

int main(int argc, char **argv)
{
    FILE *f = stdin;
    int bench, n_in, r, file_arg;
    if (argc < 2)
        return usage();
    bench = strcmp(argv[1], "bench") == 0;
    if (!bench && strcmp(argv[1], "encode") && strcmp(argv[1], "decode") && strcmp(argv[1], "reconstruct"))
        return usage();
    if (bench && argc < 5)
        return usage();
    file_arg = bench ? 5 : 2;
    if (argc > file_arg && !(f = fopen(argv[file_arg], "r"))) {
        fprintf(stderr, "vae_demo: cannot open %s\n", argv[file_arg]);
        return 2;
    }
    n_in = strcmp(argv[1], "decode") == 0 ? VAE_LATENT : VAE_N_INPUT;
    if (bench) {
        int repeats = atoi(argv[2]), warmup = atoi(argv[3]), batch = atoi(argv[4]), i, b;
        if (read_example(f, in_buf, n_in) != 1) {
            fprintf(stderr, "vae_demo: expected %d input floats\n", n_in);
            return 2;
        }
        for (i = 0; i < warmup; i++)
            vae_reconstruct(in_buf, out_buf);
        for (i = 0; i < repeats; i++) {
            double t0 = now_ms();
            for (b = 0; b < batch; b++)
                vae_reconstruct(in_buf, out_buf);
            printf("%.6f\n", now_ms() - t0);
        }
        return 0;
    }
    while ((r = read_example(f, in_buf, n_in)) == 1) {
        if (strcmp(argv[1], "encode") == 0) {
            vae_encode(in_buf, out_buf, out_buf + VAE_LATENT);
            print_row(out_buf, 2 * VAE_LATENT);
        } else if (strcmp(argv[1], "decode") == 0) {
            vae_decode(in_buf, out_buf);
            print_row(out_buf, VAE_N_OUTPUT);
        } else {
            vae_reconstruct(in_buf, out_buf);
            print_row(out_buf, VAE_N_OUTPUT);
        }
    }
    if (r < 0) {
        fprintf(stderr, "vae_demo: input ended inside an example (%d floats each)\n", n_in);
        return 2;
    }
    return 0;
}
"""

MAKEFILE = f"""# Build the vaenas C export: `make`, then `./vae_demo reconstruct < input.txt`
CC ?= cc
CFLAGS ?= {CFLAGS}

vae_demo: main.c vae_model.c vae_model.h
\t$(CC) $(CFLAGS) -o $@ main.c vae_model.c -lm

vae_model.o: vae_model.c vae_model.h
\t$(CC) $(CFLAGS) -c -o $@ vae_model.c

clean:
\trm -f vae_demo vae_model.o

.PHONY: clean
"""


def c_sources(spec: ArchSpec, packed: bytes) -> dict[str, str]:
    """File name -> text of the C library export (an integer spec's computes in integers: :mod:`.c_int`)."""
    if spec.is_integer:
        from .c_int import int_header_source, int_model_source

        return {"vae_model.h": int_header_source(spec, packed), "vae_model.c": int_model_source(spec, packed),
                "main.c": MAIN_C, "Makefile": MAKEFILE}
    return {"vae_model.h": header_source(spec, packed), "vae_model.c": model_source(spec, packed),
            "main.c": MAIN_C, "Makefile": MAKEFILE}


def write_c(spec: ArchSpec, packed: bytes, out: Path) -> list[str]:
    files = c_sources(spec, packed)
    for name, text in files.items():
        (out / name).write_text(text)
    return list(files)
