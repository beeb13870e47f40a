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

from dataclasses import dataclass

import torch

from .builder import VAE, build_vae
from .quant import dequantize_weight, pack_bits, qmax_for, quantize_weight, unpack_bits
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


def packed_layout(spec: ArchSpec) -> list[LayerLayout]:
    """Per-layer sizes of the packed model, computed without allocating weights."""
    with torch.device("meta"):
        model = build_vae(spec)
    return [
        LayerLayout(name, tuple(m.weight.shape), m.ch_axis, m.bits, 0 if m.bias is None else m.bias.numel())
        for name, m in model.weight_layers().items()
    ]


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
    """NumPy twin of :func:`search_space.quant.unpack_bits` (fast, for exporters): ``n`` unsigned
    ``bits``-bit fields, LSB first, from a uint8 array, as uint8 (bits <= 8)."""
    import numpy as np

    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(1).astype(np.uint8)


def _take_f32(buf: memoryview, offset: int, n: int) -> tuple[torch.Tensor, int]:
    t = torch.frombuffer(bytearray(buf[offset : offset + 4 * n]), dtype=torch.float32) if n else torch.empty(0)
    return t.clone(), offset + 4 * n


def unpack_state_dict(spec: ArchSpec, data: bytes) -> dict[str, torch.Tensor]:
    """Decode :func:`pack_model`'s bytes into a float state dict (weights are ``q * scale``)."""
    layout = packed_layout(spec)
    expected = sum(layer.nbytes for layer in layout)
    if len(data) != expected:
        raise ValueError(f"packed weights: spec {spec.id} needs {expected} bytes, got {len(data)} (wrong spec or file?)")
    buf, off, state = memoryview(data), 0, {}
    for layer in layout:
        if layer.bits >= 32:
            w, off = _take_f32(buf, off, layer.n_weights)
            w = w.view(layer.weight_shape)
        else:
            raw = torch.frombuffer(bytearray(buf[off : off + layer.weight_bytes]), dtype=torch.uint8)
            off += layer.weight_bytes
            q = (unpack_bits(raw, layer.bits, layer.n_weights) - qmax_for(layer.bits)).view(layer.weight_shape)
            scale, off = _take_f32(buf, off, layer.n_scales)
            w = dequantize_weight(q.to(torch.float32), scale, layer.ch_axis)
            state[f"{layer.name}.weight_scale"] = scale
        state[f"{layer.name}.weight"] = w
        if layer.n_bias:
            state[f"{layer.name}.bias"], off = _take_f32(buf, off, layer.n_bias)
    return state


def unpack_model(spec: ArchSpec, data: bytes) -> VAE:
    """A fresh model carrying the unpacked weights; its forward equals the packed model's exactly."""
    model = build_vae(spec)
    model.load_state_dict(unpack_state_dict(spec, data))
    return model
