"""Integer inference (``arithmetic: int8``): the one definition of the arithmetic a shipped integer VAE runs.
Training simulates it exactly (the forward values *are* the integer model's; gradients are the usual
quantisation-aware ones), packing stores its parameters, and every export computes it.

Tensors. Every activation tensor between two weight steps (the encoder's input ``x``, the decoder's input
``z`` and each step's output except the two exits) is int8 with a **static** per-tensor scale ``s`` and zero
point ``zp``: ``real = (q - zp) * s``, ``q`` in [-128, 127], from the range the tensor takes in training (a moving
average of ``min``/``max``, 0 included so 0 is exact: :class:`ActQuant`), fixed once trained. Static scales because microcontrollers want them (no per-example
min/max pass, no float on the way) and because onnxruntime's and XNNPACK's fused int8 kernels take them as
constants.

Quantising a float input: ``q = clamp(round(x / s) + zp, -128, 127)`` (float32 division, ties to even).

A weight step (``search_space/plan.py``'s :class:`Step`; uniform weights, codes ``w`` with
``|w| <= qmax``, per-output-channel scale ``s_w``), input ``q_x`` with ``(s_x, zp_x)``::

    acc[o] = B[o] + sum_i (q_x[i] - zp_x) * w[o, i]          (int32; B = round(bias / (s_x * s_w)))

* an **exit** (the encoder's last step, the head: ``mu``, ``logvar``; the decoder's last step: the likelihood's
  parameters) leaves the integer domain: ``out[o] = float32(acc[o]) * float32(s_x * s_w[o])``;
* any other step requantises in integers: ``y = clamp(zp_y + rshift_round(acc * m[o], sh[o]), -128, 127)``,
  ``(m, sh)`` the fixed-point form of ``s_x * s_w[o] / s_y`` (``m < 2**16``, ``1 <= sh <= 31``,
  ``rshift_round(v, sh) = (v + 2**(sh-1)) >> sh``, an arithmetic shift: floor), as CMSIS-NN's
  ``arm_nn_requantize`` with a 16-bit multiplier (so training's float64 arithmetic is exact);
* its activation: ReLU is the clamp ``y = max(y, zp_y)``; every other one (tanh, sigmoid, SiLU, GELU, ELU,
  leaky ReLU) a 256-entry table: the step requantises to a pre-activation quantiser ``<step>.pre`` and
  ``y = table[y + 128]``, ``table[k] = quantise(act((k - 128 - zp_pre) * s_pre))`` computed once in float32.

K-means codebooks keep the float path (a spec refuses ``int8`` with them); 32-bit layers cannot be integer.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .quant import _STE, quantize_weight

QMIN, QMAX = -128, 127
MULT_BITS = 16  # the requantisation multiplier's bits
MAX_SHIFT = 31
BIAS_LIMIT = 2 ** 30  # |B| is clamped here so the int32 accumulator cannot overflow on any sane layer
CLAMP_ACTIVATIONS = ("relu",)  # activations applied as a clamp; the others go through a table
RANGE_MOMENTUM = 0.1
EXACT_F32 = 2 ** 24  # float32 adds integers exactly while every partial sum stays below this


def uses_table(activation: str) -> bool:
    return activation not in CLAMP_ACTIVATIONS


def quantized_tensors(spec) -> list[str]:
    """The names of the int8 tensors of ``spec``'s two chains, in packing order: ``x``, then each encoder step
    but the last (its ``.pre`` first where a table activation follows), ``z``, then the decoder's."""
    from .plan import decoder_steps, encoder_steps

    names = []
    for first, steps in (("x", encoder_steps(spec)), ("z", decoder_steps(spec))):
        names.append(first)
        for st in steps[:-1]:
            if st.act_after and uses_table(spec.activation):
                names.append(f"{st.name}.pre")
            names.append(st.name)
    return names


# ----------------------------------------------------------------------------- the integer parameters
def bias_codes(bias: torch.Tensor | None, s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``B = round(bias / (s_x * s_w))`` per output channel (float64 holding integers)."""
    if bias is None:
        return torch.zeros_like(s_w, dtype=torch.float64)
    b = torch.round(bias.detach().double() / (s_x.detach().double() * s_w.detach().double()))
    return b.clamp(-BIAS_LIMIT, BIAS_LIMIT)


def exit_scale(s_x: torch.Tensor, s_w: torch.Tensor) -> torch.Tensor:
    """``float32(s_x * s_w)`` per output channel: an exit step's float output is ``float32(acc) * this``."""
    return (s_x.detach().double() * s_w.detach().double()).float()


def multiplier(s_x: torch.Tensor, s_w: torch.Tensor, s_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m, sh)``, float64 holding integers: ``m / 2**sh`` approximates ``s_x * s_w / s_y`` (``m < 2**16``)."""
    real = s_x.detach().double() * s_w.detach().double() / s_y.detach().double()
    _, e = torch.frexp(real)
    sh = (MULT_BITS - e).clamp(1, MAX_SHIFT).double()
    m = torch.round(torch.ldexp(real, sh)).clamp(0, 2 ** MULT_BITS)
    return m, sh


def requantize(acc: torch.Tensor, m: torch.Tensor, sh: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """``clamp(zp + ((acc * m + 2**(sh-1)) >> sh), -128, 127)`` on float64 integers (exact: |acc * m| < 2**53)."""
    v = torch.floor((acc * m + torch.ldexp(torch.ones_like(sh), sh - 1)) / torch.ldexp(torch.ones_like(sh), sh))
    return (v + zp).clamp(QMIN, QMAX)


def quantize(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
    """A float tensor's int8 codes (as floats): ``clamp(round(x / s) + zp, -128, 127)``."""
    return (torch.round(x.detach() / s.detach()) + zp).clamp(QMIN, QMAX)


def act_table(activation: str, s_pre: torch.Tensor, zp_pre: torch.Tensor, s_y: torch.Tensor,
              zp_y: torch.Tensor) -> torch.Tensor:
    """The 256 int8 codes (as floats) of a table activation: entry ``k`` is for the pre-activation code ``k - 128``."""
    from .activations import get_activation

    codes = torch.arange(QMIN, QMAX + 1, dtype=torch.float32, device=s_pre.device)
    real = (codes - zp_pre.detach().float()) * s_pre.detach().float()
    return quantize(get_activation(activation).fn(real), s_y.float(), zp_y.float())


# ----------------------------------------------------------------------------- static quantisers
class ActQuant(nn.Module):
    """One int8 tensor's static quantiser: scale and zero point from the range the tensor takes in training.

    While the model trains, the range follows a moving average of each batch's ``[min(x, 0), max(x, 0)]``
    (momentum :data:`RANGE_MOMENTUM`; the first batch sets it), as PyTorch's QAT observers do; evaluation, packing
    and export use the last values, fixed. (LSQ-learned activation steps calibrated on the untrained model's
    first batch were tried first: the activations grow far beyond that range while the step barely moves, and
    an MLP VAE then learned almost no latent code - KL 0.08 nats against 7.5 for the float twin at 2 epochs.)"""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("lo", torch.zeros(1))
        self.register_buffer("hi", torch.zeros(1))
        self.register_buffer("scale", torch.zeros(1))
        self.register_buffer("zero_point", torch.zeros(1))

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Move the range towards this batch's and set scale and zero point from it (no host sync)."""
        lo, hi = x.detach().min().clamp(max=0).reshape(1), x.detach().max().clamp(min=0).reshape(1)
        fresh = self.scale.eq(0)
        self.lo.copy_(torch.where(fresh, lo, self.lo + RANGE_MOMENTUM * (lo - self.lo)))
        self.hi.copy_(torch.where(fresh, hi, self.hi + RANGE_MOMENTUM * (hi - self.hi)))
        span = self.hi - self.lo
        s = torch.where(span > 0, span / (QMAX - QMIN), torch.ones_like(span)).float()
        self.scale.copy_(s)
        self.zero_point.copy_(torch.round(QMIN - self.lo / s).clamp(QMIN, QMAX))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fake-quantised x with straight-through gradients, its exact codes)``."""
        if self.training:
            self.observe(x)
        s = self.step()
        codes = quantize(x, s, self.zero_point)
        return _STE.apply(x, (codes - self.zero_point) * s), codes

    def step(self) -> torch.Tensor:
        """The scale, float32 (what packing stores; 1.0 for a quantiser that never saw training data)."""
        return torch.where(self.scale.eq(0), torch.ones_like(self.scale), self.scale)


class _Value(torch.autograd.Function):
    """Forward: ``exact``; backward: the gradient goes to ``surrogate`` (its values never reach the loss)."""

    @staticmethod
    def forward(ctx, surrogate, exact):  # type: ignore[override]
        return exact

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


def _op(step, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    if step.kind == "linear":
        return F.linear(x, w, b)
    if step.kind == "conv":
        return F.conv2d(x, w, b, step.stride, step.padding)
    return F.conv_transpose2d(x, w, b, step.stride, step.padding, step.output_padding)


def _exact_dtype(step) -> torch.dtype:
    """float32 when no partial sum can reach 2**24 (then any summation order is exact), else float64."""
    per_out = step.in_channels * step.kernel * step.kernel if step.kind != "linear" else step.in_size
    return torch.float32 if per_out * 255 * (2 ** (step.bits - 1) - 1) < EXACT_F32 else torch.float64


def weight_codes(module) -> torch.Tensor:
    """A quantised layer's integer weight codes (pruned positions 0), as packing stores them."""
    q, _ = quantize_weight(module.weight, module.bits, module.ch_axis, module.step_size())
    return q * module.weight_mask if module.masked else q


def accumulate(step, module, xq: torch.Tensor, s_x: torch.Tensor, zp_x: torch.Tensor) -> torch.Tensor:
    """The int32 accumulators ``B + sum (q_x - zp_x) * w`` as exact float64."""
    dt = _exact_dtype(step)
    if xq.is_cuda:
        dt = torch.float64  # no TF32, no reduced-precision reductions
    acc = _op(step, (xq - zp_x).to(dt), weight_codes(module).to(dt), None).double()
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    return acc + bias_codes(module.bias, s_x, module.step_size()).view(shape)


def _channels(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view((1, -1) + (1,) * (like.dim() - 2))


def integer_step(step, module, x: torch.Tensor, xq: torch.Tensor, aq_x: ActQuant, out: ActQuant | None,
                 pre: ActQuant | None, activation: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight step in training: ``(value, codes)`` - the value is exactly the integer model's (dequantised, or
    the float exit), the gradient the quantisation-aware one; ``codes`` the int8 output (None at an exit)."""
    from .activations import get_activation

    y_f = _op(step, x, module.quantized_weight(), module.bias)
    s_x, zp_x = aq_x.step(), aq_x.zero_point
    with torch.no_grad():
        acc = accumulate(step, module, xq, s_x, zp_x)
    if out is None:  # an exit: float32(acc) * float32(s_x * s_w)
        return _Value.apply(y_f, acc.float() * _channels(exit_scale(s_x, module.step_size()), acc)), None
    if step.act_after and pre is not None:  # table activation: requantise to .pre, then look up
        y_pre, _ = pre(y_f)
        y_q, _ = out(get_activation(activation).fn(y_pre))
        with torch.no_grad():
            m, sh = multiplier(s_x, module.step_size(), pre.step())
            codes = requantize(acc, _channels(m, acc), _channels(sh, acc), pre.zero_point.double())
            table = act_table(activation, pre.step(), pre.zero_point, out.step(), out.zero_point)
            codes = table[(codes - QMIN).long()].double()
    else:
        y_q, _ = out(F.relu(y_f) if step.act_after else y_f)
        with torch.no_grad():
            m, sh = multiplier(s_x, module.step_size(), out.step())
            codes = requantize(acc, _channels(m, acc), _channels(sh, acc), out.zero_point.double())
            if step.act_after:
                codes = torch.maximum(codes, out.zero_point.double())
    codes = codes.float()
    return _Value.apply(y_q, (codes - out.zero_point) * out.step()), codes
