"""The C library of an integer spec (``arithmetic: int8``): the same files and API as :mod:`.c_lib` (float in,
float out), computed in integers as :mod:`search_space.integer` defines - int8 activations, the packed weight
codes, int32 accumulators, fixed-point requantisation, ReLU as a clamp, other activations as 256-entry tables.

Weights stay ``vae_packed[]`` byte for byte (the packed codes ``c = q + qmax``). Per-bit-width kernels read whole
bytes: a dense linear layer of 8 bits reads its row of codes directly, of 4 bits two codes per byte, of 2 bits
four (rows on byte boundaries); the dot product then is ``sum x * c`` (uint8 x int8, a loop gcc vectorises and
that maps to SMLAD-style dual MACs on a Cortex-M4/M7) with the code offset folded in:
``acc = B' + sum x*c - qmax * sum x``, ``B' = B - zp_x * rowsum(q)`` (precomputed, int32). Other layers (3, 5, 6
bits, rows off byte boundaries, sparse layers, convolutions) decode one row / output channel of signed codes
into a small int8 scratch first. No malloc, no float in the layers (only the entry quantiser and the exits).
"""

from __future__ import annotations

import numpy as np

from search_space.compression import index_bits
from search_space.packing import layer_offsets, unpack_wide_np
from search_space.plan import Step
from search_space.quant import qmax_for
from search_space.spec import ArchSpec

from .int_program import IntProgram, IntStep, integer_program


def direct_bits(step: Step) -> int:
    """The direct-read width of a dense linear step (8, 4 or 2, rows on byte boundaries), else 0."""
    if step.kind != "linear" or step.sparsity > 0:
        return 0
    per_byte = {8: 1, 4: 2, 2: 4}.get(step.bits)
    return step.bits if per_byte and step.in_size % per_byte == 0 else 0


def rows(step: Step) -> tuple[int, int]:
    """``(rows, row length)`` of the weight tensor as the kernels decode it (a transposed conv's rows are one
    input channel's kernels for one output channel)."""
    n = step.n_weights
    if step.kind == "tconv":
        return step.in_shape[0] * step.out_shape[0], step.kernel * step.kernel
    return step.out_channels, n // step.out_channels


def scratch_len(step: Step) -> int:
    """int8 scratch the step's kernel needs (0 on a direct path)."""
    if direct_bits(step):
        return 0
    if step.kind == "linear":
        return step.in_size
    return step.in_shape[0] * step.kernel * step.kernel


def _arr(ctype: str, name: str, vals) -> str:
    vals = [int(v) if ctype != "float" else float(v) for v in vals]
    fmt = (lambda v: f"{np.float32(v).item()!r}f".replace("inf", "INFINITY")) if ctype == "float" else str
    body = ",\n".join("    " + ", ".join(fmt(v) for v in vals[i:i + 12]) for i in range(0, len(vals), 12))
    return f"static const {ctype} {name}[{max(len(vals), 1)}] = {{\n{body or '    0'}\n}};"


def _row_prefix(o, packed: bytes, step: Step) -> list[int]:
    """Kept weights before each decode row of a sparse layer (``rows + 1`` entries)."""
    lay, (n_rows, r_len) = o.layout, rows(step)
    buf = np.frombuffer(packed, np.uint8)
    if lay.index_format == "bitmap":
        bits = np.unpackbits(buf[o.index:o.index + lay.index_bytes], bitorder="little")[:lay.n_weights]
    else:
        pos = unpack_wide_np(buf[o.index:o.index + lay.index_bytes], index_bits(lay.n_weights), lay.kept)
        bits = np.zeros(lay.n_weights, np.int64)
        bits[pos] = 1
    counts = bits.reshape(n_rows, r_len).sum(1)
    return [0] + np.cumsum(counts).tolist()


def _folded_bias(s: IntStep) -> np.ndarray:
    """Linear steps: ``B' = B - zp_x * rowsum(q)``; convolutions keep ``B`` (padding is skipped, not added)."""
    if s.step.kind != "linear":
        return s.bias
    return s.bias - s.zp_in * s.q.astype(np.int64).reshape(s.q.shape[0], -1).sum(1)


def _step_tables(k: int, s: IntStep, o, packed: bytes) -> tuple[str, str]:
    """The C tables of one step and its descriptor initialiser."""
    st, lay = s.step, o.layout
    lines = []
    bias = _folded_bias(s)
    if np.abs(bias).max(initial=0) >= 2 ** 31:
        raise ValueError(f"{st.name}: a folded bias does not fit int32")
    lines.append(_arr("int32_t", f"q{k}_bias", bias))
    esc = m = sh = table = pre = "0"
    if s.exit_scale is not None:
        lines.append(_arr("float", f"q{k}_exit", s.exit_scale))
        esc = f"q{k}_exit"
    else:
        lines.append(_arr("int32_t", f"q{k}_m", s.m))
        lines.append(_arr("uint8_t", f"q{k}_sh", s.sh))
        m, sh = f"q{k}_m", f"q{k}_sh"
    if s.table is not None:
        lines.append(_arr("int8_t", f"q{k}_table", s.table))
        table = f"q{k}_table"
    if lay.sparsity > 0:
        lines.append(_arr("uint32_t", f"q{k}_rowpre", _row_prefix(o, packed, st)))
        pre = f"q{k}_rowpre"
    n_rows, r_len = rows(st)
    idx_bits = index_bits(lay.n_weights) if lay.index_format == "indices" else 0
    desc = (f"{{{o.weights}u, {o.index}, {pre}, {r_len}u, {lay.bits}u, {qmax_for(lay.bits)}, {idx_bits}u, "
            f"{direct_bits(st)}u, {q_or0(s.zp_in)}, {q_or0(s.zp_req)}, {q_or0(s.zp_out)}, {int(s.relu)}u, "
            f"q{k}_bias, {m}, {sh}, {esc}, {table}}}")
    return "\n".join(lines), f"/* {st.name} */\nstatic const qlayer qlayer{k} = {desc};"


def q_or0(v) -> int:
    return 0 if v is None else int(v)


_KERNELS = r"""
typedef struct {
    uint32_t w_off;         /* codes: bits-bit fields c = q + qmax, LSB first */
    int32_t x_off;          /* sparse: positions (bitmap or index list); -1 dense */
    const uint32_t *rowpre; /* sparse: kept weights before each decode row */
    uint32_t row_len;       /* codes per decode row */
    uint8_t bits;
    int32_t qmax;
    uint8_t idx_bits;       /* sparse index list: bits per index; 0 bitmap */
    uint8_t direct;         /* dense linear rows read in place at 8/4/2 bits; 0 decode */
    int32_t zp_in, zp_req, zp_out;
    uint8_t relu;           /* clamp at zp_out */
    const int32_t *bias;    /* B (convolutions) or B' = B - zp_in * rowsum(q) (linear) */
    const int32_t *m;       /* requantisation multiplier per channel */
    const uint8_t *sh;      /* ... and shift */
    const float *exit;      /* exits: float32(acc) * exit[o] */
    const int8_t *table;    /* table activation: y = table[y + 128] */
} qlayer;

typedef struct {
    const uint8_t *p;
    uint64_t buf;
    uint32_t have;
} bitrd;

static void br_init(bitrd *b, uint32_t bit)
{
    b->p = vae_packed + (bit >> 3);
    b->buf = (uint64_t)(*b->p++ >> (bit & 7u));
    b->have = 8u - (bit & 7u);
}

static uint32_t br_get(bitrd *b, uint32_t bits)
{
    uint32_t v;
    while (b->have < bits) {
        b->buf |= (uint64_t)(*b->p++) << b->have;
        b->have += 8u;
    }
    v = (uint32_t)(b->buf & ((1u << bits) - 1u));
    b->buf >>= bits;
    b->have -= bits;
    return v;
}

/* Signed codes q of decode row r into dst (pruned weights 0). */
static void unpack_row(const qlayer *L, uint32_t r, int8_t *dst)
{
    uint32_t i, n = L->row_len;
    bitrd c;
    if (L->x_off < 0) {
        if (L->bits == 8) {
            const uint8_t *p = vae_packed + L->w_off + r * n;
            for (i = 0; i < n; i++)
                dst[i] = (int8_t)((int32_t)p[i] - L->qmax);
            return;
        }
        br_init(&c, L->w_off * 8u + r * n * L->bits);
        for (i = 0; i < n; i++)
            dst[i] = (int8_t)((int32_t)br_get(&c, L->bits) - L->qmax);
        return;
    }
    memset(dst, 0, n);
    br_init(&c, L->w_off * 8u + L->rowpre[r] * L->bits);
    if (L->idx_bits == 0) {
        const uint8_t *map = vae_packed + L->x_off;
        uint32_t base = r * n;
        for (i = 0; i < n; i++)
            if ((map[(base + i) >> 3] >> ((base + i) & 7u)) & 1u)
                dst[i] = (int8_t)((int32_t)br_get(&c, L->bits) - L->qmax);
    } else {
        bitrd x;
        uint32_t j;
        br_init(&x, (uint32_t)L->x_off * 8u + L->rowpre[r] * L->idx_bits);
        for (j = L->rowpre[r]; j < L->rowpre[r + 1]; j++) {
            uint32_t pos = br_get(&x, L->idx_bits) - r * n;
            dst[pos] = (int8_t)((int32_t)br_get(&c, L->bits) - L->qmax);
        }
    }
}

/* The output of channel o at index idx: a float exit, or requantised int8 (clamp, table). */
static void finish(const qlayer *L, int o, int32_t acc, int idx, int8_t *y, float *yf)
{
    int64_t v;
    int32_t q;
    if (L->exit) {
        yf[idx] = (float)acc * L->exit[o];
        return;
    }
    v = ((int64_t)acc * L->m[o] + ((int64_t)1 << (L->sh[o] - 1))) >> L->sh[o];
    q = (int32_t)v + L->zp_req;
    q = q < -128 ? -128 : (q > 127 ? 127 : q);
    if (L->relu && q < L->zp_out)
        q = L->zp_out;
    if (L->table)
        q = L->table[q + 128];
    y[idx] = (int8_t)q;
}

static int32_t dot_u8(const int8_t *x, const uint8_t *c, int n)
{
    int32_t d = 0;
    int i;
    for (i = 0; i < n; i++)
        d += (int32_t)x[i] * (int32_t)c[i];
    return d;
}

static int32_t dot_u4(const int8_t *x, const uint8_t *c, int n)
{
    int32_t d = 0;
    int j;
    for (j = 0; j < n / 2; j++)
        d += (int32_t)x[2 * j] * (int32_t)(c[j] & 15u) + (int32_t)x[2 * j + 1] * (int32_t)(c[j] >> 4);
    return d;
}

static int32_t dot_u2(const int8_t *x, const uint8_t *c, int n)
{
    int32_t d = 0;
    int j;
    for (j = 0; j < n / 4; j++) {
        uint32_t b = c[j];
        d += (int32_t)x[4 * j] * (int32_t)(b & 3u) + (int32_t)x[4 * j + 1] * (int32_t)((b >> 2) & 3u) +
             (int32_t)x[4 * j + 2] * (int32_t)((b >> 4) & 3u) + (int32_t)x[4 * j + 3] * (int32_t)(b >> 6);
    }
    return d;
}

static int32_t dot_s8(const int8_t *x, const int8_t *w, int n)
{
    int32_t d = 0;
    int i;
    for (i = 0; i < n; i++)
        d += (int32_t)x[i] * (int32_t)w[i];
    return d;
}

static void qlinear(const int8_t *x, int n_in, int n_out, const qlayer *L, int8_t *y, float *yf)
{
    int o, i;
    int32_t sx = 0;
    for (i = 0; i < n_in; i++)
        sx += x[i];
    for (o = 0; o < n_out; o++) {
        int32_t acc = L->bias[o];
        if (L->direct == 8)
            acc += dot_u8(x, vae_packed + L->w_off + (uint32_t)o * (uint32_t)n_in, n_in) - L->qmax * sx;
        else if (L->direct == 4)
            acc += dot_u4(x, vae_packed + L->w_off + (uint32_t)o * (uint32_t)(n_in / 2), n_in) - L->qmax * sx;
        else if (L->direct == 2)
            acc += dot_u2(x, vae_packed + L->w_off + (uint32_t)o * (uint32_t)(n_in / 4), n_in) - L->qmax * sx;
        else {
            unpack_row(L, (uint32_t)o, vae_wrow);
            acc += dot_s8(x, vae_wrow, n_in);
        }
        finish(L, o, acc, o, y, yf);
    }
}
"""

_CONV = r"""
/* Conv2d, weight (O, C, k, k), zero padding p (padded inputs are real 0: skipped), stride s. */
static void qconv2d(const int8_t *in, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                    const qlayer *L, int8_t *out, float *outf)
{
    int o, oy, ox, c, ky, kx;
    for (o = 0; o < O; o++) {
        unpack_row(L, (uint32_t)o, vae_wrow);
        for (oy = 0; oy < OH; oy++)
            for (ox = 0; ox < OW; ox++) {
                int32_t acc = L->bias[o];
                for (c = 0; c < C; c++)
                    for (ky = 0; ky < k; ky++) {
                        int iy = oy * s - p + ky;
                        const int8_t *wr = vae_wrow + (c * k + ky) * k;
                        if (iy < 0 || iy >= H)
                            continue;
                        for (kx = 0; kx < k; kx++) {
                            int ix = ox * s - p + kx;
                            if (ix < 0 || ix >= W)
                                continue;
                            acc += ((int32_t)in[(c * H + iy) * W + ix] - L->zp_in) * (int32_t)wr[kx];
                        }
                    }
                finish(L, o, acc, (o * OH + oy) * OW + ox, out, outf);
            }
    }
}
"""

_TCONV = r"""
/* ConvTranspose2d, weight (C, O, k, k), as a gather: out[o][y][x] sums in[c][iy][ix] * w[c][o][ky][kx]. */
static void qtconv2d(const int8_t *in, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                     const qlayer *L, int8_t *out, float *outf)
{
    int o, y, x, c, ky, kx;
    for (o = 0; o < O; o++) {
        for (c = 0; c < C; c++)
            unpack_row(L, (uint32_t)(c * O + o), vae_wrow + c * k * k);
        for (y = 0; y < OH; y++)
            for (x = 0; x < OW; x++) {
                int32_t acc = L->bias[o];
                for (c = 0; c < C; c++)
                    for (ky = 0; ky < k; ky++) {
                        int ty = y + p - ky, iy;
                        const int8_t *wr = vae_wrow + (c * k + ky) * k;
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
                            acc += ((int32_t)in[(c * H + iy) * W + ix] - L->zp_in) * (int32_t)wr[kx];
                        }
                    }
                finish(L, o, acc, (o * OH + y) * OW + x, out, outf);
            }
    }
}
"""


def _call(k: int, s: IntStep, src: str, dst: str, dstf: str) -> str:
    st = s.step
    head = f"    /* {st.name}: {st.kind} {list(st.in_shape)} -> {list(st.out_shape)}, {st.bits}-bit weights */\n"
    if st.kind == "linear":
        return head + f"    qlinear({src}, {st.in_size}, {st.out_size}, &qlayer{k}, {dst}, {dstf});"
    (c, h, w), (o, oh, ow) = st.in_shape, st.out_shape
    fn = "qconv2d" if st.kind == "conv" else "qtconv2d"
    return head + (f"    {fn}({src}, {c}, {h}, {w}, {o}, {oh}, {ow}, {st.kernel}, {st.stride}, {st.padding}, "
                   f"&qlayer{k}, {dst}, {dstf});")


def _body(steps: tuple[IntStep, ...], first_k: int, arena: int, exit_to: str) -> list[str]:
    """The calls of one chain: int8 tensor j at the arena's start (even j) or end (odd j)."""
    sizes = [steps[0].step.in_size] + [s.step.out_size for s in steps[:-1]]
    at = [f"vae_arena + {0 if j % 2 == 0 else arena - n}" for j, n in enumerate(sizes)]
    out = []
    for i, s in enumerate(steps):
        last = i == len(steps) - 1
        out.append(_call(first_k + i, s, at[i], "0" if last else at[i + 1], exit_to if last else "0"))
    return out


_MODEL_C = """/* vaenas export of spec {spec_id}: a {family} VAE, {likelihood} likelihood, INTEGER inference (int8 activations,
   int32 accumulation, fixed-point requantisation; search_space/integer.py). Generated by vaenas; the weights are
   weights.packed.bin byte for byte. C99, no malloc. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vae_model.h"

const uint8_t vae_packed[VAE_PACKED_BYTES] = {{
{hex_rows}
}};

/* The only RAM the inference uses: {ram_bytes} bytes (int8 arena, the head's floats, the weight scratch). */
static int8_t vae_arena[{arena}];
static float vae_head[2 * VAE_LATENT];
static int8_t vae_wrow[{scratch}];
{kernels}
{tables}

/* Entry quantisers: q = clamp(round(v / s) + zp, -128, 127), ties to even (as training). */
static void quantize_in(const float *v, int n, float s, int zp, int8_t *q)
{{
    int i;
    for (i = 0; i < n; i++) {{
        long r = lrintf(v[i] / s) + zp;
        q[i] = (int8_t)(r < -128 ? -128 : (r > 127 ? 127 : r));
    }}
}}

static void run_encoder(void)
{{
{enc_body}
}}

static void run_decoder(float *out)
{{
{dec_body}
}}

void vae_encode(const float *x, float *mu, float *logvar)
{{
    quantize_in(x, VAE_N_INPUT, {sx}, {zx}, vae_arena);
    run_encoder();
    memcpy(mu, vae_head, sizeof(float) * VAE_LATENT);
    memcpy(logvar, vae_head + VAE_LATENT, sizeof(float) * VAE_LATENT);
}}

void vae_decode(const float *z, float *out)
{{
    quantize_in(z, VAE_LATENT, {sz}, {zz}, vae_arena);
    run_decoder(out);
}}

void vae_reconstruct(const float *x, float *out)
{{
    quantize_in(x, VAE_N_INPUT, {sx}, {zx}, vae_arena);
    run_encoder();
    quantize_in(vae_head, VAE_LATENT, {sz}, {zz}, vae_arena); /* z = mu */
    run_decoder(out);
}}
"""


def _f(v) -> str:
    return f"{np.float32(v).item()!r}f"


def int_model_source(spec: ArchSpec, packed: bytes, p: IntProgram | None = None) -> str:
    from .c_lib import _hex_rows
    from .memory import int8_arena_bytes, ram_bytes, row_scratch_bytes

    p = p or integer_program(spec, packed)
    steps = p.encoder + p.decoder
    offs = {o.layout.name: o for o in layer_offsets(spec)}
    tables = [t for k, s in enumerate(steps) for t in _step_tables(k, s, offs[s.step.name], packed)]
    kinds = {s.step.kind for s in steps}
    kernels = _KERNELS + (_CONV if "conv" in kinds else "") + (_TCONV if "tconv" in kinds else "")
    arena = int8_arena_bytes(spec)
    return _MODEL_C.format(
        spec_id=spec.id, family=spec.family, likelihood=spec.likelihood, hex_rows=_hex_rows(packed),
        ram_bytes=ram_bytes(spec), arena=arena, scratch=row_scratch_bytes(spec), kernels=kernels,
        tables="\n".join(tables), enc_body="\n".join(_body(p.encoder, 0, arena, "vae_head")),
        dec_body="\n".join(_body(p.decoder, len(p.encoder), arena, "out")),
        sx=_f(p.x_quant[0]), zx=p.x_quant[1], sz=_f(p.z_quant[0]), zz=p.z_quant[1])


def int_header_source(spec: ArchSpec, packed: bytes) -> str:
    from .c_lib import header_source
    from .memory import arena_floats, int8_arena_bytes

    text = header_source(spec, packed)
    return text.replace(f"#define VAE_ARENA_FLOATS {arena_floats(spec)}\n",
                        f"#define VAE_ARENA_INT8 {int8_arena_bytes(spec)}\n#define VAE_INTEGER 1\n")


