"""The ExecuTorch program of an integer spec (``arithmetic: int8``): static int8 weights and activations that the
XNNPACK partitioner delegates to its integer kernels.

Built from the integer program (:mod:`.int_program`) with PyTorch's ``quantized_decomposed`` operators, the
pattern XNNPACK lowers (its own tests build such modules with hand-set int8 weights and scales): every weight
is a static int8 parameter through ``dequantize_per_channel`` with vaenas's learned scales; every activation
between steps a static ``quantize_per_tensor``/``dequantize_per_tensor`` pair with its trained scale and zero
point; the float bias ``B * float32(s_x * s_w)`` (XNNPACK re-derives the int32 ``B`` from it). The exits (the
head, the decoder's last step) must return floats, which XNNPACK's static int8 kernels cannot: their input goes
through the *dynamic* pattern (``choose_qparams`` over the example), so they run as XNNPACK's dynamically
quantised kernels - the one place where the ExecuTorch program's grid is not the trained one (its outputs stay
within a step of the reference; tests/evaluator/test_integer.py measures it). Reshapes act on the int8 codes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from search_space import integer as I
from search_space.activations import get_activation

from .int_program import IntProgram, IntStep


def _ops():
    import executorch.kernels.quantized  # noqa: F401 - ExecuTorch's quantized_decomposed operators (and out variants)

    return torch.ops.quantized_decomposed


class _IntLayer(nn.Module):
    def __init__(self, s: IntStep):
        super().__init__()
        st = s.step
        self.s, self.kind = s, st.kind
        self.register_buffer("q", torch.from_numpy(s.q.astype(np.int8)))
        self.register_buffer("w_scale", torch.from_numpy(s.w_scale.astype(np.float32)))
        self.register_buffer("w_zp", torch.zeros(len(s.w_scale), dtype=torch.int64))
        bscale = (torch.tensor(float(s.s_in), dtype=torch.float64) * torch.from_numpy(s.w_scale).double()).float()
        self.register_buffer("bias", (torch.from_numpy(s.bias.astype(np.float64)).float() * bscale))
        if st.kind == "tconv":
            shape = [1] * self.q.dim()
            shape[st.ch_axis] = -1
            self.register_buffer("w_float", self.q.float() * self.w_scale.view(shape))

    def forward(self, xd: torch.Tensor) -> torch.Tensor:
        q, st = _ops(), self.s.step
        if self.kind == "tconv":  # float weights: XNNPACK's int8 transposed convolution gave wrong outputs
            return F.conv_transpose2d(xd, self.w_float, self.bias, st.stride, st.padding, st.output_padding)
        w = q.dequantize_per_channel.default(self.q, self.w_scale, self.w_zp, st.ch_axis, -127, 127, torch.int8)
        if self.kind == "linear":
            return F.linear(xd, w, self.bias)
        if self.kind == "conv":
            return F.conv2d(xd, w, self.bias, st.stride, st.padding)
        return F.conv_transpose2d(xd, w, self.bias, st.stride, st.padding, st.output_padding)


def _quant(x: torch.Tensor, s, zp) -> torch.Tensor:
    return _ops().quantize_per_tensor.default(x, float(s), int(zp), I.QMIN, I.QMAX, torch.int8)


def _dequant(xq: torch.Tensor, s, zp) -> torch.Tensor:
    return _ops().dequantize_per_tensor.default(xq, float(s), int(zp), I.QMIN, I.QMAX, torch.int8)


def _dynamic(xd: torch.Tensor) -> torch.Tensor:
    q = _ops()
    s, zp = q.choose_qparams.tensor(xd, I.QMIN, I.QMAX, 1e-12, torch.int8)
    return q.dequantize_per_tensor.tensor(q.quantize_per_tensor.tensor(xd, s, zp, I.QMIN, I.QMAX, torch.int8), s, zp,
                                          I.QMIN, I.QMAX, torch.int8)


class IntegerVAE(nn.Module):
    """The integer program as plain PyTorch quantize/dequantize ops (what ExecuTorch lowers)."""

    def __init__(self, p: IntProgram):
        super().__init__()
        self.p, self.spec = p, p.spec
        self.act = get_activation(p.spec.activation).fn
        self.layers = nn.ModuleList(_IntLayer(s) for s in p.encoder + p.decoder)
        self.n_enc = len(p.encoder)

    def _run(self, layers, steps, xq: torch.Tensor) -> torch.Tensor:
        for layer, s in zip(layers, steps):
            st = s.step
            xq = xq.reshape(xq.shape[0], *st.in_shape)
            xd = _dequant(xq, s.s_in, s.zp_in)
            if s.exit_scale is not None:
                return layer(_dynamic(xd) if st.kind == "linear" else xd)
            y = layer(xd)
            if s.table is not None:
                y = self.act(_dequant(_quant(y, s.s_pre, s.zp_req), s.s_pre, s.zp_req))
            elif s.relu:
                y = torch.relu(y)
            xq = _quant(y, s.s_out, s.zp_out)
        raise AssertionError("a chain ends with its exit")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xq = _quant(x.reshape(x.shape[0], -1), *self.p.x_quant)
        h = self._run(self.layers[:self.n_enc], self.p.encoder, xq)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self._run(self.layers[self.n_enc:], self.p.decoder, _quant(z, *self.p.z_quant))
        return h.reshape(z.shape[0], *self.spec.output_shape)
