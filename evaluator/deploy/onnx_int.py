"""The ONNX export of an integer spec (``arithmetic: int8``): QDQ on activations *and* weights, so onnxruntime's
optimiser fuses the integer kernels (QGemm, QLinearConv, ...) instead of running a float op on dequantised
weights.

Built from the integer program (:mod:`.int_program`): the entry ``QuantizeLinear(x, s_x, zp_x)``; per step the
int8 input through ``DequantizeLinear``, the weight codes as an **INT8** initializer (every bit-width: the fused
kernels take int8) with per-channel scales, the bias as INT32 codes ``B`` with scale ``float32(s_x * s_w)``, then
``Gemm``/``Conv``/``ConvTranspose``, ReLU (its output quantiser's zero point is -128, so onnxruntime drops it
into the requantisation) or a table activation written as ``Q(pre) -> DQ -> act``, and the output's
``QuantizeLinear``/``DequantizeLinear``; the exits (the head, the decoder's last step) stay float. Flatten and
reshape act on the int8 codes. A convolution exit is ``ConvInteger`` (int32) then the exit's float scaling.

Transposed convolutions: onnxruntime's CPU provider has no integer transposed convolution
(``QLinearConvTranspose`` is the XNNPACK provider's), so ``DQ -> ConvTranspose -> Q`` runs it in float on the
int8 inputs and weights (exact products, float sums) and requantises; rewriting it as ``QLinearConv`` over a
zero-inserted input (``Pad``) was tried and measured: the uint8 ``Pad`` alone took 72 us of a 0.14 ms decoder
whose float twin runs in 0.01 ms.

onnxruntime requantises in float (``acc * s_x * s_w / s_y``, ties to even) where the C library and the training
forward use the 16-bit fixed-point multiplier; the two differ by one step on a few values
(tests/evaluator/test_integer.py measures it).
"""

from __future__ import annotations

import numpy as np

from search_space import integer as I
from search_space.activations import get_activation

from .int_program import IntProgram, IntStep


class _QGraph:
    def __init__(self) -> None:
        from .onnx_common import _Graph

        self.g = _Graph()

    def quantize(self, x: str, s, zp) -> str:
        g = self.g
        return g.op("QuantizeLinear", [x, g.const("s", np.float32(s)), g.const("zp", _u8(zp))], "q")

    def dequantize(self, q: str, s, zp) -> str:
        g = self.g
        return g.op("DequantizeLinear", [q, g.const("s", np.float32(s)), g.const("zp", _u8(zp))], "dq")

    def weight(self, s: IntStep, transposed: bool = False) -> list[str]:
        g, st = self.g, s.step
        n = st.weight_shape[st.ch_axis]
        q = s.q.T if transposed else s.q
        w = g.op("DequantizeLinear", [g.const(f"{st.name}.weight_q", np.ascontiguousarray(q).astype(np.int8)),
                                      g.const(f"{st.name}.weight_scale", s.w_scale),
                                      g.const("wzp", np.zeros(n, np.int8))], f"{st.name}.weight",
                 axis=1 if transposed else st.ch_axis)
        bscale = I.exit_scale(_t(s.s_in), _t(s.w_scale)).numpy()
        b = g.op("DequantizeLinear", [g.const(f"{st.name}.bias_q", s.bias.astype(np.int32)),
                                      g.const(f"{st.name}.bias_scale", bscale),
                                      g.const("bzp", np.zeros(n, np.int32))], f"{st.name}.bias", axis=0)
        return [w, b]

    def conv_exit(self, s: IntStep, q_in: str) -> str:
        """A convolution leaving the integer domain: ``ConvInteger`` (int32), ``+ B``, then ``float32(acc) * float32(s_x
        * s_w)`` per channel - the exit's arithmetic exactly (weights as uint8 codes + 128, zero point 128)."""
        g, st = self.g, s.step
        o, p, k, sd = st.out_shape[0], st.padding, st.kernel, st.stride
        w = g.const(f"{st.name}.weight_u8", (s.q + 128).astype(np.uint8))
        acc = g.op("ConvInteger", [q_in, w, g.const("zp", _u8(s.zp_in)), g.const("wzp", np.uint8(128))], st.name,
                   kernel_shape=[k, k], strides=[sd, sd], pads=[p, p, p, p])
        acc = g.op("Add", [acc, g.const(f"{st.name}.bias_q", s.bias.astype(np.int32).reshape(1, o, 1, 1))], "acc")
        y = g.op("Cast", [acc], "acc_f", to=1)
        return g.op("Mul", [y, g.const(f"{st.name}.exit_scale", s.exit_scale.reshape(1, o, 1, 1))], f"{st.name}.out")

    def step(self, s: IntStep, q_in: str, activation: str) -> str:
        """int8 codes in; int8 codes out (or the float exit)."""
        g, st = self.g, s.step
        if st.kind == "conv" and s.exit_scale is not None:
            return self.conv_exit(s, q_in)
        x = self.dequantize(q_in, s.s_in, s.zp_in)
        p, k, sd = st.padding, st.kernel, st.stride
        ins = [x] + self.weight(s, transposed=st.kind == "linear")
        if st.kind == "linear":  # MatMul on (in, out) weights + Add: onnxruntime fuses QGemm, prepacking the weights
            y = g.op("Add", [g.op("MatMul", ins[:2], st.name), ins[2]], f"{st.name}.out")
            if s.exit_scale is not None:
                return y
        elif st.kind == "conv":
            y = g.op("Conv", ins, st.name, kernel_shape=[k, k], strides=[sd, sd], pads=[p, p, p, p])
        else:
            y = g.op("ConvTranspose", ins, st.name, kernel_shape=[k, k], strides=[sd, sd], pads=[p, p, p, p],
                     output_padding=list(st.output_padding))
        if s.exit_scale is not None:
            return y
        if s.table is not None:
            pre = self.dequantize(self.quantize(y, s.s_pre, s.zp_req), s.s_pre, s.zp_req)
            y = get_activation(activation).onnx(g.op, pre)
        elif s.relu:
            y = g.op("Relu", [y], "relu")
        return self.quantize(y, s.s_out, s.zp_out)


def _u8(zp: int) -> np.uint8:
    """An int8 tensor's zero point as onnxruntime's preferred uint8 activations hold it (codes + 128: the same
    arithmetic, ``(q + 128) - (zp + 128) = q - zp``; x86's fused kernels are U8S8)."""
    return np.uint8(zp - I.QMIN)


def _t(v):
    import torch

    return torch.as_tensor(np.asarray(v, np.float32).reshape(-1))


def _chain(qg: _QGraph, steps, q: str, rank: int, activation: str) -> tuple[str, int]:
    g = qg.g
    for s in steps:
        st = s.step
        if st.kind == "linear" and rank > 2:
            q, rank = g.op("Flatten", [q], "flat", axis=1), 2
        elif st.kind != "linear" and rank == 2:
            q, rank = g.op("Reshape", [q, g.const("shape", np.array([-1, *st.in_shape], np.int64))], "map"), 4
        q = qg.step(s, q, activation)
        rank = 2 if st.kind == "linear" else 4
    return q, rank


def encoder_body(qg: _QGraph, p: IntProgram, x: str = "x") -> str:
    """The integer encoder's nodes from the float input ``x`` to the head's float output."""
    y, _ = _chain(qg, p.encoder, qg.quantize(x, *p.x_quant), 1 + len(p.spec.input_shape), p.spec.activation)
    return y


def decoder_body(qg: _QGraph, p: IntProgram, z: str = "z") -> tuple[str, int]:
    """The integer decoder's nodes from the float latent ``z``; its last (float) value and that value's rank."""
    return _chain(qg, p.decoder, qg.quantize(z, *p.z_quant), 2, p.spec.activation)


def encoder_model(p: IntProgram):
    from .onnx_common import _model, encoder_io, split_head

    qg = _QGraph()
    split_head(qg.g, encoder_body(qg, p), p.spec.latent_dim)
    return _model(qg.g, *encoder_io(p.spec), f"vaenas {p.spec.id} integer encoder (QDQ): x -> mu, logvar")


def decoder_model(p: IntProgram):
    from .onnx_common import _model, decoder_io, finish_decoder

    qg = _QGraph()
    finish_decoder(qg.g, p.spec, *decoder_body(qg, p))
    return _model(qg.g, *decoder_io(p.spec),
                  f"vaenas {p.spec.id} integer decoder (QDQ): z -> {p.spec.likelihood} parameters")
