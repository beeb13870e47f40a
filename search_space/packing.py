"""Pack a (QAT-trained) VAE's weights into their real bit-widths and unpack them exactly.

The packed form is a flat little-endian byte string; the spec gives its layout, so the bytes
alone are the model's deployable size. For each packed weight layer (``VAE.weight_layers()``:
``spec.layer_names()`` order, a factorised layer as its two factors ``.v`` then ``.u``), each
section starting on a byte:

1. sparse layers only (``sparsity > 0``): the kept weights' positions, as a **bitmap**
   (``ceil(n / 8)`` bytes, bit ``i`` set = weight ``i`` kept, LSB first) or as an **index list**
   (``kept`` ascending row-major positions of ``index_bits(n)`` bits each, LSB first), whichever
   is smaller (``search_space/compression.py``);
2. the weights (the kept ones of a sparse layer, row-major): ``bits < 32`` - unsigned
   ``bits``-bit fields, LSB first, ``ceil(m * bits / 8)`` bytes: uniform ``q + qmax``, k-means the
   codebook index; ``bits == 32`` - float32;
3. uniform ``bits < 32``: one float32 scale per output channel; k-means: the sorted codebook,
   ``2**bits`` float32;
4. the float32 bias.

An integer spec (``arithmetic: int8``, ``search_space/integer.py``) appends, after the last layer, each int8
tensor's static quantiser (``integer.quantized_tensors`` order): float32 scale, then the int8 zero point. Its
3-, 5- and 6-bit layers store each code split in two streams (:data:`SPLITS`): the low bits of every kept
weight (2, 4, 4 bits), then the high bits (1, 1, 2) - the same bits in at most one extra byte, and every
stream a power-of-two width whose whole bytes integer kernels read directly (``code = low + (high << low bits)``).

A pruned weight is exactly 0. Structured pruning packs the narrower dense model that ships
(``spec.deployed()``, ``search_space/structured.py``). :func:`packed_layout` gives every term from the spec alone (the
kept count is exact: ``compression.kept_count``), so ``packed_size_bytes`` is exact before
training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .compression import index_bits, kept_count, sparse_format, sparse_index_bytes
from .integer import QMAX, QMIN, quantized_tensors
from .quant import kmeans_assign, pack_bits, qmax_for, quantize_weight
from .plan import shipped_plan

from .spec import ArchSpec

VAE = Any  # a search_space.builder.VAE (builder imports this module to unpack, not the other way)


SPLITS = {3: (2, 1), 5: (4, 1), 6: (4, 2)}  # an integer spec's code widths stored as (low, high) bit streams


@dataclass(frozen=True)
class LayerLayout:
    name: str
    weight_shape: tuple[int, ...]
    ch_axis: int
    bits: int
    n_bias: int
    quantizer: str = "uniform"
    sparsity: float = 0.0
    split: tuple[int, int] | None = None  # integer specs' 3/5/6-bit codes: (low, high) stream widths

    @property
    def low_bytes(self) -> int:
        """Bytes of the low-bits stream of a split layer (its high stream follows)."""
        return (self.kept * self.split[0] + 7) // 8 if self.split else 0

    @property
    def n_weights(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    @property
    def is_kmeans(self) -> bool:
        return self.bits < 32 and self.quantizer == "kmeans"

    @property
    def kept(self) -> int:
        """Weights stored (all of them unless the layer is sparse)."""
        return kept_count(self.n_weights, self.sparsity) if self.sparsity > 0 else self.n_weights

    @property
    def index_format(self) -> str:
        """``""`` (dense), ``"bitmap"`` or ``"indices"``."""
        return sparse_format(self.n_weights, self.kept) if self.sparsity > 0 else ""

    @property
    def index_bytes(self) -> int:
        return sparse_index_bytes(self.n_weights, self.kept) if self.sparsity > 0 else 0

    @property
    def n_scales(self) -> int:
        return 0 if self.bits >= 32 or self.is_kmeans else self.weight_shape[self.ch_axis]

    @property
    def n_codebook(self) -> int:
        return 2 ** self.bits if self.is_kmeans else 0

    @property
    def weight_bytes(self) -> int:
        m = self.kept
        if self.split:
            return self.low_bytes + (m * self.split[1] + 7) // 8
        return 4 * m if self.bits >= 32 else (m * self.bits + 7) // 8

    @property
    def nbytes(self) -> int:
        return self.index_bytes + self.weight_bytes + 4 * (self.n_scales + self.n_codebook + self.n_bias)


@functools.lru_cache(maxsize=4096)
def packed_layout(spec: ArchSpec) -> tuple[LayerLayout, ...]:
    """Per-layer sizes of the packed model, from the layer plan alone (once per spec: it is frozen);
    structured pruning packs the narrower model that ships (``spec.deployed()``)."""
    return tuple(LayerLayout(s.name, s.weight_shape, s.ch_axis, s.bits, s.out_channels if s.bias else 0,
                             s.quantizer if s.bits < 32 else "uniform", s.sparsity,
                             SPLITS.get(s.bits) if spec.is_integer else None)
                 for s in shipped_plan(spec).steps())


ACT_QUANT_BYTES = 5  # float32 scale + int8 zero point


def act_quant_bytes(spec: ArchSpec) -> int:
    """The integer spec's activation-quantiser section (0 for a float spec)."""
    return ACT_QUANT_BYTES * len(quantized_tensors(spec)) if spec.is_integer else 0


def packed_size_bytes(spec: ArchSpec) -> int:
    return sum(layer.nbytes for layer in packed_layout(spec)) + act_quant_bytes(spec)


def _act_quant_section(model: VAE) -> bytes:
    out = []
    for name in quantized_tensors(model.spec):
        aq = model.aq[name.replace(".", "_")]
        out.append(_f32_bytes(aq.step()) + np.array([int(aq.zero_point.item())], np.int8).tobytes())
    return b"".join(out)


def unpack_act_quant(spec: ArchSpec, data: bytes) -> dict[str, tuple[np.float32, int]]:
    """An integer spec's quantisers from its packed bytes: tensor name -> (scale, zero point)."""
    n = act_quant_bytes(spec)
    buf = np.frombuffer(data, dtype=np.uint8)[len(data) - n:]
    out = {}
    for i, name in enumerate(quantized_tensors(spec)):
        rec = buf[ACT_QUANT_BYTES * i:ACT_QUANT_BYTES * (i + 1)]
        out[name] = (rec[:4].view("<f4").astype(np.float32)[0], int(rec[4:5].view(np.int8)[0]))
    return out


def _f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


def _positions_bytes(mask: torch.Tensor, layout: LayerLayout) -> bytes:
    flat = mask.reshape(-1).to(torch.int64)
    if layout.index_format == "bitmap":
        return pack_bits(flat, 1).numpy().tobytes()
    return pack_bits(torch.nonzero(flat).reshape(-1), index_bits(layout.n_weights)).numpy().tobytes()


def _layer_bytes(m, layout: LayerLayout) -> list[bytes]:
    w = m.weight.detach().cpu().float()
    keep = m.weight_mask.detach().cpu().reshape(-1).bool() if layout.sparsity > 0 else None
    chunks = [_positions_bytes(keep, layout)] if keep is not None else []
    kept = (lambda t: t.reshape(-1)[keep]) if keep is not None else (lambda t: t.reshape(-1))  # noqa: E731
    if layout.bits >= 32:
        chunks.append(_f32_bytes(kept(w)))
    elif layout.is_kmeans:
        cb = torch.sort(m.step_size().detach().cpu().float()).values
        chunks.append(pack_bits(kept(kmeans_assign(w, cb)), layout.bits).numpy().tobytes())
        chunks.append(_f32_bytes(cb))
    else:
        q, scale = quantize_weight(w, layout.bits, layout.ch_axis, m.step_size().detach().cpu().float())
        chunks += _code_streams(kept(q.to(torch.int64) + qmax_for(layout.bits)), layout)
        chunks.append(_f32_bytes(scale))
    if m.bias is not None:
        chunks.append(_f32_bytes(m.bias))
    return chunks


def _code_streams(codes: torch.Tensor, layout: LayerLayout) -> list[bytes]:
    """Unsigned codes as one ``bits``-wide stream, or a split layer's low stream then its high stream."""
    if not layout.split:
        return [pack_bits(codes, layout.bits).numpy().tobytes()]
    lo = layout.split[0]
    return [pack_bits(codes & ((1 << lo) - 1), lo).numpy().tobytes(), pack_bits(codes >> lo, layout.split[1]).numpy().tobytes()]


def read_codes(buf: np.ndarray, offset: int, layout: LayerLayout) -> np.ndarray:
    """The unsigned codes of a layer's weight section (either layout), as int32."""
    if not layout.split:
        return unpack_bits_np(buf[offset:offset + layout.weight_bytes], layout.bits, layout.kept).astype(np.int32)
    lo, hi = layout.split
    low = unpack_bits_np(buf[offset:offset + layout.low_bytes], lo, layout.kept).astype(np.int32)
    high = unpack_bits_np(buf[offset + layout.low_bytes:offset + layout.weight_bytes], hi, layout.kept).astype(np.int32)
    return low + (high << lo)


def pack_model(model: VAE) -> bytes:
    """The model's weights at their spec bit-widths, as the byte string described above (sparse layers are
    first brought to their exact target, which training already did)."""
    model.finalize_sparsity()
    model = model.shipped()  # structured pruning: the narrower dense model
    layout = packed_layout(model.spec)
    chunks: list[bytes] = []
    for lay, m in zip(layout, model.weight_layers().values()):
        chunks += _layer_bytes(m, lay)
    if model.spec.is_integer:
        chunks.append(_act_quant_section(model))
    data = b"".join(chunks)
    assert len(data) == packed_size_bytes(model.spec), "packed bytes disagree with packed_layout"
    return data


def unpack_bits_np(packed, bits: int, n: int):
    """NumPy twin of :func:`search_space.quant.unpack_bits` (fast): ``n`` unsigned ``bits``-bit fields,
    LSB first, from a uint8 array, as uint8 (bits <= 8)."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)


def unpack_wide_np(packed, bits: int, n: int):
    """:func:`unpack_bits_np` for fields of any width up to 32 bits (index lists), as int64."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(1)


@dataclass(frozen=True)
class LayerOffsets:
    """Where one layer's sections start in the packed bytes (``-1``: the layer has none)."""

    layout: LayerLayout
    index: int  # positions record (sparse layers)
    weights: int
    params: int  # scales (uniform) or codebook (k-means)
    bias: int


def layer_offsets(spec: ArchSpec) -> list[LayerOffsets]:
    """Each packed layer's layout and section offsets."""
    out, off = [], 0
    for lay in packed_layout(spec):
        idx = off if lay.index_bytes else -1
        w_off = off + lay.index_bytes
        p_off = w_off + lay.weight_bytes
        n_params = lay.n_scales + lay.n_codebook
        b_off = p_off + 4 * n_params
        out.append(LayerOffsets(lay, idx, w_off, p_off if n_params else -1, b_off if lay.n_bias else -1))
        off = b_off + 4 * lay.n_bias
    return out


def unpack_layers(spec: ArchSpec, data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """The packed bytes per packed layer, densified (weight shape, pruned positions filled in):

    * uniform ``bits < 32``: ``q`` (signed integer codes, int32; 0 where pruned) and ``scale`` (per channel);
    * k-means: ``codes`` (codebook indices, int32; -1 where pruned) and ``codebook`` (sorted, float32);
    * 32-bit: ``w`` (float32; 0 where pruned);
    * ``mask`` (bool, weight shape) for a sparse layer; ``b`` the bias if any.
    """
    expected = packed_size_bytes(spec)
    if len(data) != expected:
        raise ValueError(f"packed weights: spec {spec.id} needs {expected} bytes, got {len(data)} (wrong spec or file?)")
    buf = np.frombuffer(data, dtype=np.uint8)
    f32 = lambda off, n: buf[off:off + 4 * n].view("<f4").astype(np.float32)  # noqa: E731
    out = {}
    for o in layer_offsets(spec):
        lay = o.layout
        n = lay.n_weights
        if lay.index_format == "bitmap":
            mask = unpack_bits_np(buf[o.index:o.index + lay.index_bytes], 1, n).astype(bool)
        elif lay.index_format == "indices":
            pos = unpack_wide_np(buf[o.index:o.index + lay.index_bytes], index_bits(n), lay.kept)
            if pos.size and (pos.max() >= n or np.any(np.diff(pos) <= 0)):
                raise ValueError(f"packed weights: layer {lay.name}'s index list is corrupt")
            mask = np.zeros(n, dtype=bool)
            mask[pos] = True
        else:
            mask = None
        if mask is not None and int(mask.sum()) != lay.kept:
            raise ValueError(f"packed weights: layer {lay.name} marks {int(mask.sum())} weights kept, "
                             f"its spec says {lay.kept}")

        def dense(vals: np.ndarray, fill) -> np.ndarray:
            if mask is None:
                return vals.reshape(lay.weight_shape)
            full = np.full(n, fill, dtype=vals.dtype)
            full[mask] = vals
            return full.reshape(lay.weight_shape)

        t: dict[str, np.ndarray] = {}
        if lay.bits >= 32:
            t["w"] = dense(f32(o.weights, lay.kept), 0.0)
        else:
            codes = read_codes(buf, o.weights, lay)
            if lay.is_kmeans:
                t["codes"] = dense(codes, -1)
                t["codebook"] = f32(o.params, lay.n_codebook)
            else:
                t["q"] = dense(codes - qmax_for(lay.bits), 0)
                t["scale"] = f32(o.params, lay.n_scales)
        if mask is not None:
            t["mask"] = mask.reshape(lay.weight_shape)
        if o.bias >= 0:
            t["b"] = f32(o.bias, lay.n_bias)
        out[lay.name] = t
    return out


def dense_weight(t: dict[str, np.ndarray], ch_axis: int) -> np.ndarray:
    """The float32 weights one :func:`unpack_layers` entry describes (pruned positions 0)."""
    if "w" in t:
        return t["w"]
    if "codes" in t:
        cb = np.append(t["codebook"], np.float32(0.0))  # index -1 -> the appended 0 (pruned)
        return cb[t["codes"]].astype(np.float32)
    shape = [1] * t["q"].ndim
    shape[ch_axis] = -1
    return (t["q"].astype(np.float32) * t["scale"].reshape(shape)).astype(np.float32)


def unpack_state_dict(spec: ArchSpec, data: bytes) -> dict[str, torch.Tensor]:
    """Decode :func:`pack_model`'s bytes into a state dict whose forward equals the packed model's."""
    layers = unpack_layers(spec, data)
    state = {}
    for layer in packed_layout(spec):
        t = layers[layer.name]
        state[f"{layer.name}.weight"] = torch.from_numpy(dense_weight(t, layer.ch_axis).copy())
        if "scale" in t:
            state[f"{layer.name}.weight_scale"] = torch.from_numpy(t["scale"].copy())
        if "codebook" in t:
            state[f"{layer.name}.codebook"] = torch.from_numpy(t["codebook"].copy())
        if "mask" in t:
            state[f"{layer.name}.weight_mask"] = torch.from_numpy(t["mask"].astype(np.float32))
        if "b" in t:
            state[f"{layer.name}.bias"] = torch.from_numpy(t["b"].copy())
    for name, (scale, zp) in (unpack_act_quant(spec, data).items() if spec.is_integer else ()):
        key = f"aq.{name.replace('.', '_')}"
        state[f"{key}.scale"] = torch.tensor([scale], dtype=torch.float32)
        state[f"{key}.lo"] = torch.tensor([(QMIN - zp) * float(scale)], dtype=torch.float32)
        state[f"{key}.hi"] = torch.tensor([(QMAX - zp) * float(scale)], dtype=torch.float32)
        state[f"aq.{name.replace('.', '_')}.zero_point"] = torch.tensor([float(zp)], dtype=torch.float32)
    return state
