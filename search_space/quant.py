"""Quantised layers (fake quantisation with a straight-through estimator) and exact bit packing.

Weights: per-output-channel symmetric uniform quantisation. For ``b`` bits the integer grid is
``[-(2**(b-1) - 1), 2**(b-1) - 1]`` (so 2 bits is ternary) and the quantised weight is
``q * scale`` with ``q = round(clamp(w / scale, -qmax, qmax))``. 32 bits means "keep the float
weight".

Scales: the layers learn their per-channel step size (LSQ, Esser et al. 2020): a parameter
``weight_scale`` calibrated to ``max|w_c| / qmax`` (1.0 for an all-zero channel) when fake
quantisation first acts or is switched back on after a float warm-up, then trained with the
weights; gradients follow LSQ (weights: straight-through inside the clipping range, zero
outside; step size: ``q - w/s`` inside, ``+-qmax`` outside, scaled by ``1/sqrt(n_c * qmax)``).
The stateless :func:`fake_quant_weight` (max-abs scale, plain STE) serves weight-shared
supernets, whose one weight is quantised at many bit-widths.

Activations (optional ``act_bits``): the input of every weight layer is fake-quantised with an
asymmetric uniform grid of ``2**b`` levels over each sample's own [min, max] range - the
per-sample analogue of PyTorch's dynamic quantisation, so a sample's output never depends on
what else is in its batch.

Both use a straight-through estimator: the forward value is exactly the quantised one, the
gradient passes through unchanged.

K-means weights (``quantizer="kmeans"``, :func:`kmeans_fake_quant`): one learned codebook of
``2**b`` float values per layer, kept sorted; each weight takes its nearest entry (a weight on a
midpoint takes the lower one). The codebook is initialised by Lloyd's algorithm on the layer's
weights (linear initialisation over [min, max], Han et al. 2016) when fake quantisation first
acts, then trained: each entry's gradient is the sum of the gradients of the weights that use it,
the weights' gradient passes straight through.

Sparsity (``sparsity > 0``): a 0/1 ``weight_mask`` buffer multiplies the quantised weight, so a
pruned weight is exactly 0 in every forward; :meth:`QuantMixin.prune_to` sets it by magnitude
(the schedule lives in the model's ``after_step``, called by the one training loop).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def qmax_for(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def maxabs_scale(w: torch.Tensor, bits: int, ch_axis: int) -> torch.Tensor:
    """Per-channel ``max|w_c| / qmax`` (1.0 for an all-zero channel)."""
    dims = [d for d in range(w.dim()) if d != ch_axis]
    amax = w.detach().abs().amax(dim=dims)
    return torch.where(amax > 0, amax / qmax_for(bits), torch.ones_like(amax))


def quantize_weight(w: torch.Tensor, bits: int, ch_axis: int,
                    scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(q, scale)``: integer-valued tensor ``q`` (same dtype as ``w``) and per-channel scale.

    ``scale`` defaults to :func:`maxabs_scale`; a layer passes its learned step size.
    """
    qmax = qmax_for(bits)
    scale = maxabs_scale(w, bits, ch_axis) if scale is None else scale.detach()
    shape = [1] * w.dim()
    shape[ch_axis] = -1
    q = torch.round(torch.clamp(w.detach() / scale.view(shape), -qmax, qmax))
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, ch_axis: int) -> torch.Tensor:
    shape = [1] * q.dim()
    shape[ch_axis] = -1
    return q * scale.view(shape)


class _STE(torch.autograd.Function):
    """Forward returns the quantised tensor exactly; backward is the identity."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return xq

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


class _LSQ(torch.autograd.Function):
    """Forward: exactly ``round(clamp(w/s, -Q, Q)) * s``; backward: LSQ gradients for ``w`` and ``s``."""

    @staticmethod
    def forward(ctx, w, s, bits: int, ch_axis: int):  # type: ignore[override]
        qmax = qmax_for(bits)
        shape = [1] * w.dim()
        shape[ch_axis] = -1
        v = w / s.view(shape)
        q = torch.round(torch.clamp(v, -qmax, qmax))
        ctx.save_for_backward(v, q)
        ctx.shape, ctx.ch_axis, ctx.qmax = shape, ch_axis, qmax
        return q * s.view(shape)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        # d(out)/dw = 1 inside [-Q, Q], else 0; d(out)/ds = q - v inside, q (= sign(v) * Q) outside, so
        # grad . ds = grad . q - gw . v: two reductions instead of a ``where`` (slow on CPU) over the weight
        v, q = ctx.saved_tensors
        qmax = ctx.qmax
        gw = grad * (v.abs() <= qmax)
        dims = [d for d in range(v.dim()) if d != ctx.ch_axis]
        g = 1.0 / math.sqrt(v.numel() / v.shape[ctx.ch_axis] * qmax)
        gs = ((grad * q).sum(dim=dims) - (gw * v).sum(dim=dims)) * g
        return gw, gs, None, None


def lsq_fake_quant_weight(w: torch.Tensor, scale: torch.Tensor, bits: int, ch_axis: int) -> torch.Tensor:
    """Fake-quantise ``w`` with the learned per-channel step ``scale`` (LSQ gradients)."""
    return _LSQ.apply(w, scale, bits, ch_axis)


def fake_quant_weight(w: torch.Tensor, bits: int, ch_axis: int) -> torch.Tensor:
    if bits >= 32:
        return w
    q, scale = quantize_weight(w, bits, ch_axis)
    return _STE.apply(w, dequantize_weight(q, scale, ch_axis))


def kmeans_assign(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of each weight's nearest entry of the **sorted** ``codebook`` (ties: the lower entry)."""
    mids = (codebook[1:] + codebook[:-1]).detach() / 2
    return torch.bucketize(w.detach(), mids)


SEGMENT_CHUNK = 65536  # values per one-hot product in segment_sum on CUDA (64 MB at 256 entries)


def segment_sum(idx: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Per entry ``j < k``: the sum of the ``values`` whose ``idx`` is ``j``, the same on every run. On the CPU
    one ``bincount``; on CUDA, whose scatter-adds (``bincount``, ``index_add_``) add in a different order on
    each run, one-hot products over fixed chunks added in a fixed order."""
    idx, values = idx.reshape(-1), values.reshape(-1)
    if not values.is_cuda:
        return torch.bincount(idx, weights=values, minlength=k).to(values.dtype)
    return _chunked_segment_sum(idx, values, k)


def _chunked_segment_sum(idx: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(k, dtype=values.dtype, device=values.device)
    for s in range(0, values.numel(), SEGMENT_CHUNK):
        one_hot = torch.nn.functional.one_hot(idx[s:s + SEGMENT_CHUNK], k).to(values.dtype)
        out = out + values[s:s + SEGMENT_CHUNK] @ one_hot
    return out


class _KMeansSTE(torch.autograd.Function):
    """Forward: ``cb[nearest]``; backward: the weights' gradient straight through, each entry's the sum of
    its weights' gradients (:func:`segment_sum`, not an indexing scatter)."""

    @staticmethod
    def forward(ctx, w, cb):  # type: ignore[override]
        idx = kmeans_assign(w, cb)
        ctx.save_for_backward(idx)
        ctx.k = cb.numel()
        return cb[idx]

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (idx,) = ctx.saved_tensors
        g_cb = segment_sum(idx, grad, ctx.k)
        return grad, g_cb


def kmeans_fake_quant(w: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Forward: exactly ``sorted(codebook)[nearest]``; backward: the entries get the summed gradients of
    their weights, the weights a straight-through gradient."""
    cb, _ = torch.sort(codebook)
    return _KMeansSTE.apply(w, cb)


@torch.no_grad()
def lloyd_codebook(values: torch.Tensor, k: int, iters: int = 20) -> torch.Tensor:
    """A sorted ``k``-entry 1-D k-means codebook of ``values``: linear initialisation over [min, max], then
    ``iters`` Lloyd steps (an entry no value chooses keeps its place)."""
    v = values.detach().reshape(-1).float()
    if v.numel() == 0:
        return torch.zeros(k, device=values.device)
    lo, hi = v.min(), v.max()
    cb = torch.linspace(0, 1, k, device=v.device) * (hi - lo) + lo
    for _ in range(iters):
        idx = kmeans_assign(v, cb)
        if v.is_cuda:  # the same codebook on every run (index_add_ on CUDA adds in any order)
            sums, counts = segment_sum(idx, v, k), segment_sum(idx, torch.ones_like(v), k)
        else:
            sums = torch.zeros(k, device=v.device).index_add_(0, idx, v)
            counts = torch.zeros(k, device=v.device).index_add_(0, idx, torch.ones_like(v))
        cb = torch.where(counts > 0, sums / counts.clamp(min=1), cb).sort().values
    return cb


def fake_quant_act(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    if bits is None or bits >= 32:
        return x
    levels = 2**bits - 1
    flat = x.detach().flatten(1)
    lo = flat.amin(dim=1)
    hi = flat.amax(dim=1)
    scale = torch.where(hi > lo, (hi - lo) / levels, torch.ones_like(hi))
    shape = (-1,) + (1,) * (x.dim() - 1)
    lo, scale = lo.view(shape), scale.view(shape)
    xq = torch.round((x.detach() - lo) / scale).clamp_(0, levels) * scale + lo
    return _STE.apply(x, xq)


class QuantMixin:
    """Shared by the quantised layers: ``bits`` (weights), ``act_bits`` (input), ``ch_axis``."""

    bits: int
    act_bits: int | None
    ch_axis: int = 0
    weight: torch.Tensor
    fake_quant_enabled: bool = True  # off only during a QAT delay (see set_fake_quant)
    quantizer: str = "uniform"  # or "kmeans"
    sparsity: float = 0.0  # target pruned fraction (exact count: compression.kept_count)
    masked: bool = False  # has a weight_mask (sparse, or touched by structured pruning)

    _scale_ready: bool = False

    def _init_quant(self, quantizer: str = "uniform", sparsity: float = 0.0, masked: bool = False) -> None:
        """Called by the constructors: a learned step size (uniform) or codebook (k-means) for every
        quantised (< 32-bit) layer, and a weight mask for a sparse one."""
        self.quantizer, self.sparsity = quantizer, float(sparsity)
        self.masked = self.sparsity > 0 or masked
        if self.bits < 32 and quantizer == "kmeans":
            self.codebook = nn.Parameter(torch.zeros(2 ** self.bits))
        elif self.bits < 32:
            self.weight_scale = nn.Parameter(torch.zeros(self.weight.shape[self.ch_axis]))
        if self.masked:  # sparse, or a layer structured pruning removes rows/columns of
            self.register_buffer("weight_mask", torch.ones_like(self.weight))

    @property
    def is_kmeans(self) -> bool:
        return self.bits < 32 and self.quantizer == "kmeans"

    @torch.no_grad()
    def calibrate(self) -> None:
        """(Re)set the step size to ``max|w_c| / qmax`` (uniform) or the codebook by Lloyd's algorithm over
        the kept weights (k-means) from the current weights."""
        if self.is_kmeans:
            w = self.weight if self.sparsity <= 0 else self.weight[self.weight_mask.bool()]
            self.codebook.copy_(lloyd_codebook(w, 2 ** self.bits))
            self._scale_ready = True
        elif self.bits < 32:
            self.weight_scale.copy_(maxabs_scale(self.weight, self.bits, self.ch_axis))
            self._scale_ready = True

    def _quant_param(self) -> torch.Tensor:
        return self.codebook if self.is_kmeans else self.weight_scale

    def step_size(self) -> torch.Tensor:
        """The per-channel step size (uniform) or the codebook (k-means) the quantised weight uses
        (calibrated on first use)."""
        p = self._quant_param()
        if not self._scale_ready:
            if bool((p == 0).all()):  # never calibrated (one host sync per layer, once)
                self.calibrate()
            self._scale_ready = True
        return p

    @torch.no_grad()
    def prune_to(self, fraction: float) -> None:
        """Mask the ``floor(fraction * n)`` smallest-magnitude weights (already pruned ones first: they are
        0; ties by position) and zero them; ``fraction`` never lowers the pruned count below the current
        one (pruning is monotone)."""
        from .compression import kept_count

        n = self.weight.numel()
        k = n - kept_count(n, fraction) if fraction > 0 else 0
        already = int(n - self.weight_mask.sum().item())
        if k > already:
            mag = (self.weight * self.weight_mask).abs().reshape(-1)
            order = torch.argsort(mag, stable=True)
            self.weight_mask.reshape(-1)[order[:k]] = 0
        self.weight.mul_(self.weight_mask)  # pruned weights stay 0 (Adam's momentum would move them)

    def finalize_sparsity(self) -> None:
        """Prune to the target exactly (what packing stores)."""
        if self.sparsity > 0:
            self.prune_to(self.sparsity)

    def _load_from_state_dict(self, *args, **kw):  # type: ignore[override]
        super()._load_from_state_dict(*args, **kw)  # type: ignore[misc]
        self._scale_ready = False  # a loaded step size is used as is; a zero one is calibrated

    def quantized_weight(self) -> torch.Tensor:
        if not self.fake_quant_enabled or self.bits >= 32:
            w = self.weight
        elif self.is_kmeans:
            w = kmeans_fake_quant(self.weight, self.step_size())
        else:
            w = lsq_fake_quant_weight(self.weight, self.step_size(), self.bits, self.ch_axis)
        return w * self.weight_mask if self.masked else w

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant_act(x, self.act_bits) if self.fake_quant_enabled else x

    def extra_repr(self) -> str:  # type: ignore[override]
        extra = (f", quantizer={self.quantizer}" if self.is_kmeans else "") + \
            (f", sparsity={self.sparsity}" if self.sparsity > 0 else "")
        return super().extra_repr() + f", bits={self.bits}, act_bits={self.act_bits}{extra}"  # type: ignore[misc]


class QuantLinear(QuantMixin, nn.Linear):
    def __init__(self, in_features: int, out_features: int, bits: int = 32, act_bits: int | None = None,
                 quantizer: str = "uniform", sparsity: float = 0.0, masked: bool = False, **kw):
        super().__init__(in_features, out_features, **kw)
        self.bits, self.act_bits = bits, act_bits
        self._init_quant(quantizer, sparsity, masked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quant_input(x), self.quantized_weight(), self.bias)


class QuantConv2d(QuantMixin, nn.Conv2d):
    def __init__(self, *args, bits: int = 32, act_bits: int | None = None, quantizer: str = "uniform",
                 sparsity: float = 0.0, masked: bool = False, **kw):
        super().__init__(*args, **kw)
        self.bits, self.act_bits = bits, act_bits
        self._init_quant(quantizer, sparsity, masked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quant_input(x), self.quantized_weight(), self.bias)


class QuantConvTranspose2d(QuantMixin, nn.ConvTranspose2d):
    ch_axis = 1  # weight is (in, out, kH, kW)

    def __init__(self, *args, bits: int = 32, act_bits: int | None = None, quantizer: str = "uniform",
                 sparsity: float = 0.0, masked: bool = False, **kw):
        super().__init__(*args, **kw)
        self.bits, self.act_bits = bits, act_bits
        self._init_quant(quantizer, sparsity, masked)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.conv_transpose2d(
            self.quant_input(x),
            self.quantized_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


QUANT_LAYERS = (QuantLinear, QuantConv2d, QuantConvTranspose2d)


def set_fake_quant(model: nn.Module, enabled: bool) -> None:
    """Turn fake quantisation of every quantised layer on or off (like torch.ao's enable/disable_fake_quant).

    Off is only for the float warm-up of a QAT run with a quantisation delay; evaluation, packing
    and costs always describe the quantised model. Switching a layer from off to on recalibrates
    its step size from the weights the warm-up produced.
    """
    for m in model.modules():
        if isinstance(m, QUANT_LAYERS):
            if enabled and not m.fake_quant_enabled:
                m.calibrate()
            m.fake_quant_enabled = enabled


# --------------------------------------------------------------------------- bit packing
def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**bits`` (any int dtype) into ``ceil(n*bits/8)`` uint8, LSB first."""
    v = values.reshape(-1).to(torch.int64)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 2**bits):
        raise ValueError(f"pack_bits: values must lie in [0, {2**bits}) for {bits} bits")
    shifts = torch.arange(bits, dtype=torch.int64, device=v.device)
    stream = ((v.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = 2 ** torch.arange(8, dtype=torch.int64, device=v.device)
    return (stream.view(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` integers as int64."""
    if packed.numel() != (n * bits + 7) // 8:
        raise ValueError(f"unpack_bits: {n} values of {bits} bits need {(n * bits + 7) // 8} bytes, got {packed.numel()}")
    b = packed.reshape(-1).to(torch.int64)
    stream = ((b.unsqueeze(1) >> torch.arange(8, dtype=torch.int64, device=b.device)) & 1).reshape(-1)
    stream = stream[: n * bits].view(n, bits)
    return (stream << torch.arange(bits, dtype=torch.int64, device=b.device)).sum(1)
