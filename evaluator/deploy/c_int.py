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
from search_space.packing import SPLITS, layer_offsets, unpack_wide_np
from search_space.plan import Step
from search_space.quant import qmax_for
from search_space.spec import ArchSpec

from .int_program import IntProgram, IntStep, integer_program
from .memory import GROUP, SCRATCH_TYPES, direct_bits, rows, scratch


def _code_expr(k: int, bits: int) -> str:
    """C expression of code ``k`` of a group held in bytes ``b0 .. b{B-1}`` (LSB first)."""
    start, end, parts = k * bits, (k + 1) * bits, []
    for byte in range(start // 8, (end - 1) // 8 + 1):
        lo, hi = max(start, 8 * byte), min(end, 8 * byte + 8)
        part = f"(b{byte} >> {lo - 8 * byte})" if lo > 8 * byte else f"b{byte}"
        if hi < 8 * byte + 8:
            part = f"({part} & {(1 << (hi - lo)) - 1}u)"
        parts.append(f"({part} << {lo - start})" if lo > start else part)
    return " | ".join(parts)


def plane_dot(bits: int) -> str:
    """``dot_p{bits}``: sum over a row's codes c times the input, the input split in planes (plane ``k`` holds
    input ``G*j + k``), whole groups of codes from whole bytes; blocks of groups with a constant trip count, so
    gcc vectorises them at -O2. Below 8 bits a block's partial sum is int16 (at most 30,720 in magnitude: 16
    groups of 8 x 1-bit or 4 x 2-bit products, 8 groups of 2 x 4-bit ones), so 8 lanes work per instruction."""
    g, nb = GROUP[bits]
    wide = "int32_t" if bits == 8 else "vae_part"
    block = 8 if bits == 4 else 16
    loads = " ".join(f"uint32_t b{i} = q[{i}];" for i in range(nb))
    terms = " + ".join(f"(W)xp[{k} * ng + J] * (W)({_code_expr(k, bits)})" for k in range(g))
    body = f"{{ const uint8_t *q = p + {nb} * (J); {loads} T = (W)(T + {terms}); }}"
    return f"""
static int32_t dot_p{bits}(const int8_t *xp, const uint8_t *p, int ng)
{{
    int32_t d = 0;
    int j = 0, k;
    for (; j + {block} <= ng; j += {block}) {{
        {wide} t = 0;
        for (k = 0; k < {block}; k++)
            {body.replace("J", "j + k").replace("T", "t").replace("(W)", f"({wide})")}
        d += t;
    }}
    for (; j < ng; j++)
        {body.replace("J", "j").replace("T", "d").replace("(W)", "(int32_t)")}
    return d;
}}
"""


PART_TYPE = """
/* Partial sums of the plane dot products: int16 where a SIMD unit works on 8 lanes of them (x86 SSE2), int32
   on Arm Cortex-M (no vector unit: an int16 sum costs a sign-extension per add). The same values either way. */
#if defined(__arm__) || defined(__thumb__)
typedef int32_t vae_part;
#else
typedef int16_t vae_part;
#endif
"""


def _dsp_ok(st: Step) -> bool:
    """A dense linear step the Cortex-M DSP kernels read: every one whose rows are read in place."""
    return direct_bits(st) != 0


def dsp_words(steps: list[Step], high: bool = False) -> int:
    """int32 words of the Cortex-M DSP kernels' arranged input: half the widest input they read (``vae_x16``; with
    ``high``, a split layer's high stream's arrangement, ``vae_x16b``). Declared only where the DSP extension is
    (Cortex-M4/M7 builds); 0 when no layer takes that path."""
    ok = [st.in_size for st in steps if _dsp_ok(st) and (not high or direct_bits(st) in SPLITS)]
    return max(max(ok) // 2, 16) if ok else 0  # at least a 1-bit group's 16 words: gcc checks every width's loop


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
    lo, hi = lay.split or (0, 0)
    desc = (f"{{{o.weights}u, {o.index}, {pre}, {r_len}u, {lay.bits}u, {lo}u, {hi}u, {o.weights + lay.low_bytes}u, "
            f"{qmax_for(lay.bits)}, {idx_bits}u, "
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
    uint8_t lo_bits, hi_bits; /* a split layer's two streams (low bits, then high bits at hi_off); 0 0 unsplit */
    uint32_t hi_off;
    int32_t qmax;
    uint8_t idx_bits;       /* sparse index list: bits per index; 0 bitmap */
    uint8_t direct;         /* dense linear rows read in place (the layer's width); 0 decode */
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

/* Codes j0 .. j0+n-1 of the bits-bit stream at byte w_off, as signed q = c - qmax, into dst: whole groups of
   codes from whole bytes (8 bits: 1 code per byte, 4: 2, 2: 4, 6: 4 per 3 bytes, 3 and 5: 8 per 3 and 5 bytes);
   the stream reader only for the codes before the first group boundary and after the last. */
static void decode_codes(uint32_t w_off, uint32_t j0, uint32_t n, uint32_t bits, int32_t qmax, int8_t *dst)
{
    static const uint8_t group[9] = {0, 0, 4, 8, 2, 8, 4, 0, 1};
    uint32_t g = group[bits], i = 0, lead, k;
    const uint8_t *p;
    bitrd b;
    lead = (g - j0 % g) % g;
    if (lead > n)
        lead = n;
    if (lead) {
        br_init(&b, w_off * 8u + j0 * bits);
        for (; i < lead; i++)
            dst[i] = (int8_t)((int32_t)br_get(&b, bits) - qmax);
    }
    p = vae_packed + w_off + (j0 + i) * bits / 8u; /* a group boundary: a whole byte */
    switch (bits) {
    case 8:
        for (; i < n; i++)
            dst[i] = (int8_t)((int32_t)*p++ - qmax);
        return;
    case 4:
        for (; i + 2 <= n; i += 2, p++) {
            dst[i] = (int8_t)((int32_t)(*p & 15u) - qmax);
            dst[i + 1] = (int8_t)((int32_t)(*p >> 4) - qmax);
        }
        break;
    case 2:
        for (; i + 4 <= n; i += 4, p++)
            for (k = 0; k < 4; k++)
                dst[i + k] = (int8_t)((int32_t)((*p >> (2u * k)) & 3u) - qmax);
        break;
    case 6:
        for (; i + 4 <= n; i += 4, p += 3) {
            uint32_t v = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16);
            for (k = 0; k < 4; k++)
                dst[i + k] = (int8_t)((int32_t)((v >> (6u * k)) & 63u) - qmax);
        }
        break;
    default: /* 3 and 5 bits: 8 codes in `bits` bytes */
        for (; i + 8 <= n; i += 8, p += bits) {
            uint64_t v = 0;
            for (k = 0; k < bits; k++)
                v |= (uint64_t)p[k] << (8u * k);
            for (k = 0; k < 8; k++)
                dst[i + k] = (int8_t)((int32_t)((v >> (bits * k)) & ((1u << bits) - 1u)) - qmax);
        }
    }
    if (i < n) {
        br_init(&b, w_off * 8u + (j0 + i) * bits);
        for (; i < n; i++)
            dst[i] = (int8_t)((int32_t)br_get(&b, bits) - qmax);
    }
}

/* Kept codes j0 .. j0+n-1 of a layer as signed q into dst (either stream layout). */
static void decode_signed(const qlayer *L, uint32_t j0, uint32_t n, int8_t *dst)
{
    uint32_t i;
    bitrd b;
    if (!L->hi_bits) {
        decode_codes(L->w_off, j0, n, L->bits, L->qmax, dst);
        return;
    }
    decode_codes(L->w_off, j0, n, L->lo_bits, 0, dst); /* the low bits, then the high bits added */
    if (!n)
        return;
    br_init(&b, L->hi_off * 8u + j0 * L->hi_bits);
    for (i = 0; i < n; i++)
        dst[i] = (int8_t)((int32_t)dst[i] + (int32_t)(br_get(&b, L->hi_bits) << L->lo_bits) - L->qmax);
}

/* Signed codes q of decode row r into dst (pruned weights 0). A sparse row's kept codes are decoded into the end
   of dst, then spread forward to their positions (a kept code is never overwritten before it is read). */
static void unpack_row(const qlayer *L, uint32_t r, int8_t *dst)
{
    uint32_t i, j = 0, n = L->row_len, j0, kept;
    int8_t *tail;
    if (L->x_off < 0) {
        decode_signed(L, r * n, n, dst);
        return;
    }
    j0 = L->rowpre[r];
    kept = L->rowpre[r + 1] - j0;
    tail = dst + (n - kept);
    decode_signed(L, j0, kept, tail);
    if (L->idx_bits == 0) {
        const uint8_t *map = vae_packed + L->x_off;
        uint32_t base = r * n;
        for (i = 0; i < n; i++) {
            if ((map[(base + i) >> 3] >> ((base + i) & 7u)) & 1u) {
                int8_t v = tail[j++];
                dst[i] = v;
            } else {
                dst[i] = 0;
            }
        }
    } else {
        bitrd x;
        uint32_t prev = 0;
        br_init(&x, (uint32_t)L->x_off * 8u + j0 * L->idx_bits);
        for (j = 0; j < kept; j++) {
            uint32_t pos = br_get(&x, L->idx_bits) - r * n;
            int8_t v = tail[j];
            for (; prev < pos; prev++)
                dst[prev] = 0;
            dst[pos] = v;
            prev = pos + 1;
        }
        for (; prev < n; prev++)
            dst[prev] = 0;
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

static int32_t dot_s8(const int8_t *x, const int8_t *w, int n)
{
    int32_t d = 0;
    int i = 0, k;
    for (; i + 16 <= n; i += 16) {
        int32_t t = 0;
        for (k = 0; k < 16; k++)
            t += (int32_t)x[i + k] * (int32_t)w[i + k];
        d += t;
    }
    for (; i < n; i++)
        d += (int32_t)x[i] * (int32_t)w[i];
    return d;
}

#if defined(__ARM_FEATURE_DSP) && VAE_X16_WORDS > 0
/* Cortex-M4/M7 (DSP extension): dual 16-bit MACs (SMLAD), four rows at a time. UXTB16 unpacks bytes 0 and 2 of
   a word of codes (with ROR #8: bytes 1 and 3) into two halfwords, so one word of 8-bit codes gives pairs
   (c0, c2), (c1, c3); of 4-bit codes (low nibbles, then high) (c0, c4), (c2, c6), (c1, c5), (c3, c7); of 2-bit
   codes, for k = 0..3, (c_k, c_8+k), (c_4+k, c_12+k); of 1-bit codes, for k = 0..7, (c_k, c_16+k),
   (c_8+k, c_24+k). The input is arranged once per layer as int16 pairs in that order (vae_x16; a split layer's
   high stream in its own order, vae_x16b), so each SMLAD adds two products. */
#include <arm_acle.h>

static int32_t vae_x16[VAE_X16_WORDS];
#if VAE_X16B_WORDS > 0
static int32_t vae_x16b[VAE_X16B_WORDS];
#endif

static uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int32_t lo16(uint32_t v) /* bytes 0 and 2 as halfwords */
{
    return (int32_t)__uxtb16(v);
}

static int32_t hi16(uint32_t v) /* bytes 1 and 3 as halfwords: one UXTB16 with a rotated operand */
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return (int32_t)r;
}

static int32_t pair(int8_t a, int8_t b)
{
    return (int32_t)((uint32_t)(uint16_t)(int16_t)a | ((uint32_t)(uint16_t)(int16_t)b << 16));
}

/* The input in the pair order of `bits`-bit code words (per word: 32 / bits inputs, 16 / bits pairs), for the
   whole words of a row (the inputs of its last 0-3 bytes are read as they are, by tail()). */
static void arrange(const int8_t *x, int n, int bits, int32_t *w)
{
    int g, k, per = 32 / bits, step = per / 4; /* codes k and k + step share a byte position's lanes */
    for (g = 0; g + per <= n; g += per) {
        const int8_t *q = x + g;
        if (bits == 8) {
            *w++ = pair(q[0], q[2]);
            *w++ = pair(q[1], q[3]);
        } else if (bits == 4) {
            *w++ = pair(q[0], q[4]);
            *w++ = pair(q[2], q[6]);
            *w++ = pair(q[1], q[5]);
            *w++ = pair(q[3], q[7]);
        } else {
            for (k = 0; k < step; k++) {
                *w++ = pair(q[k], q[2 * step + k]);
                *w++ = pair(q[step + k], q[3 * step + k]);
            }
        }
    }
}

/* Rows read in place (whole bytes; their whole words go through SMLAD, the last 0-3 bytes through tail()). */
static int dsp_rows(const qlayer *L, int n_in)
{
    (void)n_in;
    return L->direct != 0;
}

/* sum x * c over the last nbytes bytes of a row (codes LSB first), x their first input */
static int32_t tail(int bits, const uint8_t *p, int nbytes, const int8_t *x)
{
    int t, k, per = 8 / bits;
    int32_t a = 0;
    for (t = 0; t < nbytes; t++)
        for (k = 0; k < per; k++)
            a += (int32_t)x[t * per + k] * (int32_t)((p[t] >> (bits * k)) & ((1u << bits) - 1u));
    return a;
}

static int32_t mac8(uint32_t v, const int32_t *xp, int32_t a)
{
    a = __smlad(xp[0], lo16(v), a);
    return __smlad(xp[1], hi16(v), a);
}

static int32_t mac4(uint32_t v, const int32_t *xp, int32_t a)
{
    uint32_t l = v & 0x0F0F0F0Fu, h = (v >> 4) & 0x0F0F0F0Fu;
    a = __smlad(xp[0], lo16(l), a);
    a = __smlad(xp[1], hi16(l), a);
    a = __smlad(xp[2], lo16(h), a);
    return __smlad(xp[3], hi16(h), a);
}

static int32_t mac2(uint32_t v, const int32_t *xp, int32_t a)
{
    int k;
    for (k = 0; k < 4; k++) {
        uint32_t m = (v >> (2 * k)) & 0x03030303u;
        a = __smlad(xp[2 * k], lo16(m), a);
        a = __smlad(xp[2 * k + 1], hi16(m), a);
    }
    return a;
}

static int32_t mac1(uint32_t v, const int32_t *xp, int32_t a)
{
    int k;
    for (k = 0; k < 8; k++) {
        uint32_t m = (v >> k) & 0x01010101u;
        a = __smlad(xp[2 * k], lo16(m), a);
        a = __smlad(xp[2 * k + 1], hi16(m), a);
    }
    return a;
}

#if defined(__GNUC__)
#define VAE_NOINLINE __attribute__((noinline))
#else
#define VAE_NOINLINE
#endif
/* Four rows (r, r + rb, r + 2rb, r + 3rb) of nw code words into acc[0..3]: one pass over the input xp, PER input
   words per code word (a function of its own per width, so its few live values stay in registers). */
#define VAE_ROWS4(NAME, MAC, PER)                                                                      \
    static VAE_NOINLINE void NAME(const uint8_t *r, uint32_t rb, int nw, const int32_t *xp, int32_t *acc) \
    {                                                                                                  \
        const uint8_t *end = r + 4 * (uint32_t)nw, *r2 = r + 2 * rb;                                   \
        int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;                                                        \
        for (; r < end; xp += (PER), r += 4, r2 += 4) {                                                \
            a0 = MAC(rd32(r), xp, a0);                                                                 \
            a1 = MAC(rd32(r + rb), xp, a1);                                                            \
            a2 = MAC(rd32(r2), xp, a2);                                                                \
            a3 = MAC(rd32(r2 + rb), xp, a3);                                                           \
        }                                                                                              \
        acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;                                            \
    }
VAE_ROWS4(rows4_8, mac8, 2)
VAE_ROWS4(rows4_4, mac4, 4)
VAE_ROWS4(rows4_2, mac2, 8)
VAE_ROWS4(rows4_1, mac1, 16)

static void rows4(int bits, const uint8_t *r, uint32_t rb, int nw, const int32_t *xp, int32_t *acc)
{
    if (bits == 8)
        rows4_8(r, rb, nw, xp, acc);
    else if (bits == 4)
        rows4_4(r, rb, nw, xp, acc);
    else if (bits == 2)
        rows4_2(r, rb, nw, xp, acc);
    else
        rows4_1(r, rb, nw, xp, acc);
}

static int32_t row1(int bits, const uint8_t *r, int nw, const int32_t *xp)
{
    int j, per = 16 / bits;
    int32_t a = 0;
    for (j = 0; j < nw; j++, xp += per, r += 4)
        a = bits == 8 ? mac8(rd32(r), xp, a) : bits == 4 ? mac4(rd32(r), xp, a)
            : bits == 2 ? mac2(rd32(r), xp, a) : mac1(rd32(r), xp, a);
    return a;
}

/* sum x * c over rows o .. o+k-1 (k = 4, or 1) of one stream of `bits`-bit codes at byte offset off */
static void stream_sums(int bits, uint32_t off, int n_in, int o, int k, const int32_t *xp, const int8_t *x, int32_t *acc)
{
    uint32_t rb = (uint32_t)n_in * (uint32_t)bits / 8u;
    int nw = (int)(rb / 4u), nt = (int)(rb % 4u), i;
    const uint8_t *r = vae_packed + off + (uint32_t)o * rb;
    if (k == 4)
        rows4(bits, r, rb, nw, xp, acc);
    else
        acc[0] = row1(bits, r, nw, xp);
    if (nt)
        for (i = 0; i < k; i++)
            acc[i] += tail(bits, r + (uint32_t)i * rb + 4u * (uint32_t)nw, nt, x + nw * (32 / bits));
}

/* a split layer: its low stream plus its high stream << lo_bits */
static void sums(const qlayer *L, const int8_t *x, int n_in, int o, int k, int32_t *acc)
{
    int lo = L->hi_bits ? L->lo_bits : L->bits;
    stream_sums(lo, L->w_off, n_in, o, k, vae_x16, x, acc);
#if VAE_X16B_WORDS > 0
    if (L->hi_bits) {
        int32_t hi[4];
        int i;
        stream_sums(L->hi_bits, L->hi_off, n_in, o, k, vae_x16b, x, hi);
        for (i = 0; i < k; i++)
            acc[i] += hi[i] << lo;
    }
#endif
}

static void qlinear_dsp(const int8_t *x, int n_in, int n_out, const qlayer *L, int8_t *y, float *yf, int32_t sx)
{
    int o = 0, k;
    int32_t off = -L->qmax * sx, acc[4];
    arrange(x, n_in, L->hi_bits ? L->lo_bits : L->bits, vae_x16);
#if VAE_X16B_WORDS > 0
    if (L->hi_bits)
        arrange(x, n_in, L->hi_bits, vae_x16b);
#endif
    for (; o + 4 <= n_out; o += 4) {
        sums(L, x, n_in, o, 4, acc);
        for (k = 0; k < 4; k++)
            finish(L, o + k, L->bias[o + k] + acc[k] + off, o + k, y, yf);
    }
    for (; o < n_out; o++) { /* the last n_out % 4 rows, one at a time */
        sums(L, x, n_in, o, 1, acc);
        finish(L, o, L->bias[o] + acc[0] + off, o, y, yf);
    }
}
#endif
%(PLANES)s
/* Linear: acc = B' + sum x * c - qmax * sum x on rows read in place (L->direct), or B' + sum x * q on a decoded row. */
#if VAE_PLANES
/* The input in g planes: plane k holds x[g*j + k] (whole groups of codes then meet their inputs in place). */
static const int8_t *planes(const int8_t *x, int n, int g, int8_t *dst)
{
    int i;
    if (g == 1)
        return x;
    for (i = 0; i < n; i++)
        dst[(i % g) * (n / g) + i / g] = x[i];
    return dst;
}
#endif

static void qlinear(const int8_t *x, int n_in, int n_out, const qlayer *L, int8_t *y, float *yf)
{
    int o, i, lo = L->hi_bits ? L->lo_bits : L->bits, ga = 8 / lo, gb = L->hi_bits ? 8 / L->hi_bits : 1;
    int na = n_in / ga, nb = n_in / gb;
    int32_t sx = 0;
    const int8_t *xa = x, *xb = x;
    uint32_t ra = (uint32_t)n_in * (uint32_t)lo / 8u, rb = (uint32_t)n_in * L->hi_bits / 8u;
    for (i = 0; i < n_in; i++)
        sx += x[i];
#if defined(__ARM_FEATURE_DSP) && VAE_X16_WORDS > 0
    if (dsp_rows(L, n_in)) {
        qlinear_dsp(x, n_in, n_out, L, y, yf, sx);
        return;
    }
#endif
#if VAE_PLANES
    if (L->direct) {
        xa = planes(x, n_in, ga, vae_xplanes);
        if (L->hi_bits)
            xb = planes(x, n_in, gb, vae_xplanes + n_in);
    }
#endif
    for (o = 0; o < n_out; o++) {
        int32_t acc = L->bias[o];
        const uint8_t *row = vae_packed + L->w_off + (uint32_t)o * ra, *rowh = vae_packed + L->hi_off + (uint32_t)o * rb;
        switch (L->direct) {
%(CASES)s
        default:
            (void)row, (void)rowh, (void)xa, (void)xb, (void)na, (void)nb; /* this layer decodes its rows */
            unpack_row(L, (uint32_t)o, vae_wrow);
            acc += dot_s8(x, vae_wrow, n_in);
        }
        finish(L, o, acc, o, y, yf);
    }
}
"""

_CONV = r"""
/* First index i >= 0 with i * s >= d (d = p - tap), and one past the last with i * s <= num, at most n. */
static int first_tap(int d, int s)
{
    return d <= 0 ? 0 : (d + s - 1) / s;
}

static int tap_end(int num, int s, int n)
{
    int e = num < 0 ? 0 : num / s + 1;
    return e < n ? e : n;
}

/* The input of a convolution centered on its zero point (int16: real 0 is 0, so padding is skipped). */
static void center(const int8_t *in, int n, int32_t zp)
{
    int i;
    for (i = 0; i < n; i++)
        vae_xc[i] = (int16_t)((int32_t)in[i] - zp);
}

/* One tap of a convolution: dst[t * ds] += w * src[t * ss] for t < n (the int32 plane, the centred input). */
static void tap(int32_t *dst, int ds, const int16_t *src, int ss, int32_t w, int n)
{
    int t;
    for (t = 0; t < n; t++)
        dst[t * ds] += w * (int32_t)src[t * ss];
}

/* An output channel's plane: the bias first, the requantised (or exit) values at the end. */
static void plane_start(const qlayer *L, int o, int n)
{
    int i;
    for (i = 0; i < n; i++)
        vae_acc[i] = L->bias[o];
}

static void plane_end(const qlayer *L, int o, int n, int8_t *out, float *outf)
{
    int i;
    for (i = 0; i < n; i++)
        finish(L, o, vae_acc[i], o * n + i, out, outf);
}

/* Conv2d, weight (O, C, k, k), zero padding p, stride s: per output channel an int32 plane of accumulators,
   each kernel tap added over the output positions it reaches (no per-element bounds checks). */
static void qconv2d(const int8_t *in, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                    const qlayer *L, int8_t *out, float *outf)
{
    int o, c, ky, kx, oy;
    center(in, C * H * W, L->zp_in);
    for (o = 0; o < O; o++) {
        unpack_row(L, (uint32_t)o, vae_wrow);
        plane_start(L, o, OH * OW);
        for (c = 0; c < C; c++)
            for (ky = 0; ky < k; ky++) {
                int y0 = first_tap(p - ky, s), y1 = tap_end(H - 1 + p - ky, s, OH);
                for (kx = 0; kx < k; kx++) {
                    int32_t w = vae_wrow[(c * k + ky) * k + kx];
                    int x0 = first_tap(p - kx, s), x1 = tap_end(W - 1 + p - kx, s, OW);
                    if (w != 0) /* gather: output (oy, x0 ..) reads input rows oy*s - p + ky at stride s */
                        for (oy = y0; oy < y1; oy++)
                            tap(vae_acc + oy * OW + x0, 1, vae_xc + (c * H + oy * s - p + ky) * W + x0 * s - p + kx, s,
                                w, x1 - x0);
                }
            }
        plane_end(L, o, OH * OW, out, outf);
    }
}
"""

_TCONV = r"""
/* ConvTranspose2d, weight (C, O, k, k): input (iy, ix) reaches output (iy*s - p + ky, ix*s - p + kx); per output
   channel an int32 plane, each tap scattered over the input positions whose target lies inside. */
static void qtconv2d(const int8_t *in, int C, int H, int W, int O, int OH, int OW, int k, int s, int p,
                     const qlayer *L, int8_t *out, float *outf)
{
    int o, c, ky, kx, iy;
    center(in, C * H * W, L->zp_in);
    for (o = 0; o < O; o++) {
        for (c = 0; c < C; c++)
            unpack_row(L, (uint32_t)(c * O + o), vae_wrow + c * k * k);
        plane_start(L, o, OH * OW);
        for (c = 0; c < C; c++)
            for (ky = 0; ky < k; ky++) {
                int y0 = first_tap(p - ky, s), y1 = tap_end(OH - 1 + p - ky, s, H);
                for (kx = 0; kx < k; kx++) {
                    int32_t w = vae_wrow[(c * k + ky) * k + kx];
                    int x0 = first_tap(p - kx, s), x1 = tap_end(OW - 1 + p - kx, s, W);
                    if (w != 0) /* scatter: input (iy, x0 ..) adds to output row iy*s - p + ky at stride s */
                        for (iy = y0; iy < y1; iy++)
                            tap(vae_acc + (iy * s - p + ky) * OW + x0 * s - p + kx, s, vae_xc + (c * H + iy) * W + x0, 1,
                                w, x1 - x0);
                }
            }
        plane_end(L, o, OH * OW, out, outf);
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

/* The only RAM the inference uses: {ram_bytes} bytes (int8 arena, the head's floats, the kernels' scratch). */
static int8_t vae_arena[{arena}];
static float vae_head[2 * VAE_LATENT];
{scratch}
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


def _case(bits: int) -> str:
    """The qlinear switch case of a direct width: one plane dot product, or a split layer's two."""
    if bits in SPLITS:
        lo, hi = SPLITS[bits]
        dot = f"dot_p{lo}(xa, row, na) + (dot_p{hi}(xb, rowh, nb) << {lo})"
    else:
        dot = f"dot_p{bits}(xa, row, na)"
    return f"        case {bits}:\n            acc += {dot} - L->qmax * sx;\n            break;"


def int_model_source(spec: ArchSpec, packed: bytes, p: IntProgram | None = None) -> str:
    from .c_common import _hex_rows
    from .memory import int8_arena_bytes, ram_bytes

    p = p or integer_program(spec, packed)
    steps = p.encoder + p.decoder
    plan_steps = [x.step for x in steps]
    scr = scratch(plan_steps)
    declared = "\n".join(f"static {SCRATCH_TYPES[k][0]} vae_{k}[{n}];" for k, n in scr.items() if n)
    declared += f"\n#define VAE_X16_WORDS {dsp_words(plan_steps)} /* Cortex-M DSP kernels' input pairs */"
    declared += f"\n#define VAE_X16B_WORDS {dsp_words(plan_steps, high=True)} /* ... a split layer's high stream's */"
    widths = sorted({direct_bits(st) for st in plan_steps} - {0})
    declared += f"\n#define VAE_PLANES {int(any(b != 8 for b in widths))} /* a layer reads sub-8-bit rows in place */"
    cases = "\n".join(_case(b) for b in widths)
    dots = sorted({w for b in widths for w in (SPLITS.get(b) or (b,))})
    offs = {o.layout.name: o for o in layer_offsets(spec)}
    tables = [t for k, s in enumerate(steps) for t in _step_tables(k, s, offs[s.step.name], packed)]
    kinds = {s.step.kind for s in steps}
    kernels = (_KERNELS.replace("%(PLANES)s", PART_TYPE + "".join(plane_dot(b) for b in dots)).replace("%(CASES)s", cases)
               + (_CONV if kinds & {"conv", "tconv"} else "").split("/* Conv2d")[0]
               + ("/* Conv2d" + _CONV.split("/* Conv2d")[1] if "conv" in kinds else "") + (_TCONV if "tconv" in kinds else ""))
    arena = int8_arena_bytes(spec)
    return _MODEL_C.format(
        spec_id=spec.id, family=spec.family, likelihood=spec.likelihood, hex_rows=_hex_rows(packed),
        ram_bytes=ram_bytes(spec), arena=arena, scratch=declared, kernels=kernels,
        tables="\n".join(tables), enc_body="\n".join(_body(p.encoder, 0, arena, "vae_head")),
        dec_body="\n".join(_body(p.decoder, len(p.encoder), arena, "out")),
        sx=_f(p.x_quant[0]), zx=p.x_quant[1], sz=_f(p.z_quant[0]), zz=p.z_quant[1])


def int_header_source(spec: ArchSpec, packed: bytes) -> str:
    from .c_common import header_source
    from .memory import arena_floats, int8_arena_bytes

    text = header_source(spec, packed)
    return text.replace(f"#define VAE_ARENA_FLOATS {arena_floats(spec)}\n",
                        f"#define VAE_ARENA_INT8 {int8_arena_bytes(spec)}\n#define VAE_INTEGER 1\n")


