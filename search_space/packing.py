"""Pack a (QAT-trained) VAE's weights into their real bit-widths and unpack them exactly.

The packed form is a flat little-endian byte string; the spec gives its layout, so the bytes
alone are the model's deployable size. For each weight layer, in ``spec.layer_names()`` order:

* ``bits < 32``: ``ceil(n_weights * bits / 8)`` bytes of weights (integers ``q + qmax`` as
  unsigned ``bits``-bit fields, LSB first, in the weight tensor's row-major order), then one
  float32 scale per output channel, then the float32 bias.
* ``bits == 32``: the float32 weights, then the float32 bias.

So ``size = sum(ceil(n_w * b / 8) + 4 * n_scales + 4 * n_bias)`` over the quantised layers plus
``4 * (n_w + n_bias)`` over the float ones; :func:`packed_layout` returns each term.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np
import torch

from .builder import VAE, build_vae
from .quant import dequantize_weight, pack_bits, qmax_for, quantize_weight
from .spec import ArchSpec


@dataclass(frozen=True)
class LayerLayout:
    name: str
    weight_shape: tuple[int, ...]
    ch_axis: int
    bits: int
    n_bias: int

    @property
    def n_weights(self) -> int:
        n = 1
        for d in self.weight_shape:
            n *= d
        return n

    @property
    def n_scales(self) -> int:
        return 0 if self.bits >= 32 else self.weight_shape[self.ch_axis]

    @property
    def weight_bytes(self) -> int:
        return 4 * self.n_weights if self.bits >= 32 else (self.n_weights * self.bits + 7) // 8

    @property
    def nbytes(self) -> int:
        return self.weight_bytes + 4 * self.n_scales + 4 * self.n_bias


@functools.lru_cache(maxsize=4096)
def packed_layout(spec: ArchSpec) -> tuple[LayerLayout, ...]:
    """Per-layer sizes of the packed model, computed without allocating weights (once per spec: it is frozen)."""
    with torch.device("meta"):
        model = build_vae(spec)
    return tuple(
        LayerLayout(name, tuple(m.weight.shape), m.ch_axis, m.bits, 0 if m.bias is None else m.bias.numel())
        for name, m in model.weight_layers().items()
    )


_MEAN_BITS: dict[str, float] = {}


def weighted_mean_bits(spec: ArchSpec) -> float:
    """Weight bits per weight over the whole model: sum(n_w * bits) / sum(n_w) (cached by spec id)."""
    if spec.id not in _MEAN_BITS:
        layers = packed_layout(spec)
        _MEAN_BITS[spec.id] = sum(x.n_weights * x.bits for x in layers) / sum(x.n_weights for x in layers)
    return _MEAN_BITS[spec.id]


def packed_size_bytes(spec: ArchSpec) -> int:
    return sum(layer.nbytes for layer in packed_layout(spec))


def _f32_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4").tobytes()


def pack_model(model: VAE) -> bytes:
    """The model's weights at their spec bit-widths, as the byte string described above."""
    chunks: list[bytes] = []
    for m in model.weight_layers().values():
        w = m.weight.detach().cpu()
        if m.bits >= 32:
            chunks.append(_f32_bytes(w))
        else:
            q, scale = quantize_weight(w.float(), m.bits, m.ch_axis, m.step_size().detach().cpu().float())
            u = (q.to(torch.int64) + qmax_for(m.bits)).reshape(-1)
            chunks.append(pack_bits(u, m.bits).numpy().tobytes())
            chunks.append(_f32_bytes(scale))
        if m.bias is not None:
            chunks.append(_f32_bytes(m.bias))
    return b"".join(chunks)


def unpack_bits_np(packed, bits: int, n: int):
    """NumPy twin of :func:`search_space.quant.unpack_bits` (fast): ``n`` unsigned ``bits``-bit fields,
    LSB first, from a uint8 array, as uint8 (bits <= 8)."""
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)


def layer_offsets(spec: ArchSpec) -> list[tuple[LayerLayout, int, int, int]]:
    """Each layer's layout and where its weights, its scales and its bias start in the packed bytes
    (``-1``: the layer has no bias)."""
    out, off = [], 0
    for layer in packed_layout(spec):
        s_off = off + layer.weight_bytes
        b_off = s_off + 4 * layer.n_scales
        out.append((layer, off, s_off, b_off if layer.n_bias else -1))
        off = b_off + 4 * layer.n_bias
    return out


def unpack_layers(spec: ArchSpec, data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """The packed bytes per layer, as stored: ``q`` (signed integer codes, int32, weight shape) and
    ``scale`` (float32 per channel) for a quantised layer, ``w`` (float32) for a 32-bit one; ``b``."""
    layout = packed_layout(spec)
    expected = sum(layer.nbytes for layer in layout)
    if len(data) != expected:
        raise ValueError(f"packed weights: spec {spec.id} needs {expected} bytes, got {len(data)} (wrong spec or file?)")
    buf = np.frombuffer(data, dtype=np.uint8)
    f32 = lambda off, n: buf[off:off + 4 * n].view("<f4").astype(np.float32)  # noqa: E731
    out = {}
    for layer, w_off, s_off, b_off in layer_offsets(spec):
        t: dict[str, np.ndarray] = {}
        if layer.bits >= 32:
            t["w"] = f32(w_off, layer.n_weights).reshape(layer.weight_shape)
        else:
            codes = unpack_bits_np(buf[w_off:w_off + layer.weight_bytes], layer.bits, layer.n_weights)
            t["q"] = (codes.astype(np.int32) - qmax_for(layer.bits)).reshape(layer.weight_shape)
            t["scale"] = f32(s_off, layer.n_scales)
        if b_off >= 0:
            t["b"] = f32(b_off, layer.n_bias)
        out[layer.name] = t
    return out


def unpack_state_dict(spec: ArchSpec, data: bytes) -> dict[str, torch.Tensor]:
    """Decode :func:`pack_model`'s bytes into a float state dict (weights are ``q * scale``)."""
    layers = unpack_layers(spec, data)
    state = {}
    for layer in packed_layout(spec):
        t = layers[layer.name]
        if "w" in t:
            state[f"{layer.name}.weight"] = torch.from_numpy(t["w"].copy())
        else:
            scale = torch.from_numpy(t["scale"].copy())
            q = torch.from_numpy(t["q"]).to(torch.float32)
            state[f"{layer.name}.weight"] = dequantize_weight(q, scale, layer.ch_axis)
            state[f"{layer.name}.weight_scale"] = scale
        if "b" in t:
            state[f"{layer.name}.bias"] = torch.from_numpy(t["b"].copy())
    return state


def unpack_model(spec: ArchSpec, data: bytes) -> VAE:
    """A fresh model carrying the unpacked weights; its forward equals the packed model's exactly."""
    model = build_vae(spec)
    model.load_state_dict(unpack_state_dict(spec, data))
    return model
