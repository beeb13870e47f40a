"""The integer program of an ``arithmetic: int8`` spec, derived once from its packed bytes for every export, and
a pure-integer reference that runs it (NumPy int64; convolutions as float64 sums of integers, exact because
every partial sum stays far below 2**53).

Every number here comes from :mod:`search_space.integer` (bias codes, fixed-point multipliers, exit scales,
activation tables) applied to the float32 values the packed bytes hold - the same functions, on the same
values, that training's forward used - so the C library, the ONNX and ExecuTorch graphs and this reference
compute the model the study scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from search_space import integer as I
from search_space.packing import unpack_act_quant, unpack_layers
from search_space.plan import Step, decoder_steps, encoder_steps
from search_space.spec import ArchSpec


@dataclass(frozen=True)
class IntStep:
    step: Step
    q: np.ndarray  # int32 weight codes (weight shape; pruned = 0)
    w_scale: np.ndarray  # float32 per output channel
    bias: np.ndarray  # int64 B per output channel
    s_in: np.float32
    zp_in: int
    exit_scale: np.ndarray | None  # float32 per channel (an exit), else None
    m: np.ndarray | None  # int64 fixed-point multipliers (requantising steps)
    sh: np.ndarray | None  # int64 shifts
    zp_req: int | None  # zero point of the requantisation target (the .pre quantiser for a table activation)
    s_pre: np.float32 | None  # the .pre quantiser's scale (table activation)
    s_out: np.float32 | None
    zp_out: int | None
    relu: bool  # clamp at zp_out after requantising
    table: np.ndarray | None  # 256 int8 codes (table activation)


@dataclass(frozen=True)
class IntProgram:
    spec: ArchSpec
    x_quant: tuple[np.float32, int]
    z_quant: tuple[np.float32, int]
    encoder: tuple[IntStep, ...]
    decoder: tuple[IntStep, ...]


def _t(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1))


def _int_step(spec: ArchSpec, st: Step, t: dict, s_in, zp_in: int, out, pre) -> IntStep:
    s_w = _t(t["scale"])
    bias = I.bias_codes(_t(t["b"]) if "b" in t else None, _t(s_in), s_w).numpy().astype(np.int64)
    common = dict(step=st, q=t["q"].astype(np.int32), w_scale=t["scale"].astype(np.float32), bias=bias,
                  s_in=np.float32(s_in), zp_in=int(zp_in))
    if out is None:
        return IntStep(**common, exit_scale=I.exit_scale(_t(s_in), s_w).numpy(), m=None, sh=None, zp_req=None,
                       s_pre=None, s_out=None, zp_out=None, relu=False, table=None)
    target = pre if pre is not None else out
    m, sh = I.multiplier(_t(s_in), s_w, _t(target[0]))
    table = None
    if pre is not None:
        table = I.act_table(spec.activation, _t(pre[0]), torch.tensor([float(pre[1])]), _t(out[0]),
                            torch.tensor([float(out[1])])).numpy().astype(np.int64)
    return IntStep(**common, exit_scale=None, m=m.numpy().astype(np.int64), sh=sh.numpy().astype(np.int64),
                   zp_req=int(target[1]), s_pre=None if pre is None else np.float32(pre[0]), s_out=np.float32(out[0]), zp_out=int(out[1]),
                   relu=st.act_after and pre is None, table=table)


def _chain(spec: ArchSpec, steps: list[Step], tensors: dict, aq: dict, first: str) -> tuple[IntStep, ...]:
    out, cur = [], aq[first]
    for i, st in enumerate(steps):
        last = i == len(steps) - 1
        nxt = None if last else aq[st.name]
        pre = aq.get(f"{st.name}.pre") if not last else None
        out.append(_int_step(spec, st, tensors[st.name], cur[0], cur[1], nxt, pre))
        cur = nxt
    return tuple(out)


def integer_program(spec: ArchSpec, packed: bytes) -> IntProgram:
    """The integer program of ``spec`` (``arithmetic: int8``) from its packed bytes."""
    if not spec.is_integer:
        raise ValueError(f"spec {spec.id} is not an integer spec (arithmetic: int8)")
    tensors, aq = unpack_layers(spec, packed), unpack_act_quant(spec, packed)
    return IntProgram(spec, aq["x"], aq["z"], _chain(spec, encoder_steps(spec), tensors, aq, "x"),
                      _chain(spec, decoder_steps(spec), tensors, aq, "z"))


# ----------------------------------------------------------------------------- the pure-integer reference
def quantize_np(x: np.ndarray, s: np.float32, zp: int) -> np.ndarray:
    """``clamp(round_half_even(float32(x) / s) + zp, -128, 127)`` as int64."""
    q = np.rint(np.asarray(x, dtype=np.float32) / np.float32(s)).astype(np.int64) + zp
    return np.clip(q, I.QMIN, I.QMAX)


def _accumulate(s: IntStep, xq: np.ndarray) -> np.ndarray:
    st, xc = s.step, xq - s.zp_in
    n = xc.shape[0]
    if st.kind == "linear":
        acc = xc.reshape(n, -1) @ s.q.astype(np.int64).T
    else:
        x64, w64 = torch.from_numpy(xc.reshape(n, *st.in_shape).astype(np.float64)), torch.from_numpy(
            s.q.astype(np.float64))
        if st.kind == "conv":
            y = F.conv2d(x64, w64, None, st.stride, st.padding)
        else:
            y = F.conv_transpose2d(x64, w64, None, st.stride, st.padding, st.output_padding)
        acc = y.numpy().astype(np.int64)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    return acc + s.bias.reshape(shape)


def run_step(s: IntStep, xq: np.ndarray) -> np.ndarray:
    """int8 codes in; int8 codes (int64) out, or float32 at an exit."""
    acc = _accumulate(s, xq)
    shape = (1, -1) + (1,) * (acc.ndim - 2)
    if s.exit_scale is not None:
        return acc.astype(np.float32) * s.exit_scale.reshape(shape)
    sh = s.sh.reshape(shape)
    v = (acc * s.m.reshape(shape) + (np.int64(1) << (sh - 1))) >> sh
    y = np.clip(v + s.zp_req, I.QMIN, I.QMAX)
    if s.relu:
        y = np.maximum(y, s.zp_out)
    if s.table is not None:
        y = s.table[y - I.QMIN]
    return y


def _run(steps: tuple[IntStep, ...], xq: np.ndarray) -> np.ndarray:
    h = xq
    for s in steps:
        h = run_step(s, h.reshape(h.shape[0], *s.step.in_shape))
    return h.reshape(h.shape[0], -1)


def reference_encode(p: IntProgram, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, logvar)`` float32 of a batch ``x`` (model space)."""
    x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    h = _run(p.encoder, quantize_np(x, *p.x_quant))
    L = p.spec.latent_dim
    return h[:, :L], h[:, L:]


def reference_decode(p: IntProgram, z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32).reshape(len(z), -1)
    return _run(p.decoder, quantize_np(z, *p.z_quant)).reshape(len(z), *p.spec.output_shape)
