"""The ONNX export: two quantised graphs built from the packed model, runnable in onnxruntime.

``encoder.onnx``: ``x`` ``(N, *input_shape)`` -> ``mu``, ``logvar`` ``(N, latent_dim)``;
``decoder.onnx``: ``z`` ``(N, latent_dim)`` -> ``out`` ``(N, *output_shape)`` (the likelihood's
parameters). A quantised layer's weight is an **integer initializer** - INT4 for 2-4 bits, INT8
for 5-8 bits, the codes ``q`` of the packed model - with its float32 per-channel scales, fed
through ``DequantizeLinear`` (QDQ, zero point 0, ``axis`` the output channel) into
``Gemm``/``Conv``/``ConvTranspose``; a 32-bit layer's weight is a float32 initializer. Activation
quantisation (``act_bits``) is written out as the per-example min/max quantiser the model was
trained with. Opset 21 (the first with INT4).

K-means layers: the codebook indices as a UINT8 initializer and the sorted
float32 codebook, the weight being ``Gather(codebook, Cast(indices))``; a sparse k-means layer's
pruned positions index one extra 0 entry appended to the codebook (UINT8, or UINT16 at 8 bits).
Sparse uniform and float layers carry their pruned weights as 0 codes / 0.0 (ONNX has no sparse
weight type onnxruntime runs on these ops): the file is dense, the packed bytes are not. A
factorised layer is its two factor layers (``search_space/plan.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_space.activations import get_activation
from search_space.packing import unpack_layers
from search_space.spec import ArchSpec
from search_space.plan import Step, decoder_steps, encoder_steps

from .onnx_common import (  # noqa: F401 - OPSET is this module's public constant
    OPSET, _Graph, _model, decoder_io, encoder_io, finish_decoder, split_head,
)
ONNX_FILES = ("encoder.onnx", "decoder.onnx")


def int_type(bits: int) -> str:
    """The ONNX integer type a ``bits``-bit weight is stored as ("" for a float layer)."""
    return "" if bits >= 32 else ("INT4" if bits <= 4 else "INT8")


def _int_weight(g: _Graph, name: str, q: np.ndarray, bits: int) -> str:
    """The codes as a packed INT4 (two per byte) or INT8 initializer, stored as raw bytes."""
    from onnx import numpy_helper

    if int_type(bits) == "INT4":
        import ml_dtypes  # onnx's own dependency: numpy's int4 type

        arr = q.astype(ml_dtypes.int4)
    else:
        arr = q.astype(np.int8)
    n = g.name(f"{name}.weight_q")
    g.inits.append(numpy_helper.from_array(arr, n))
    return n


def _kmeans_weight(g: _Graph, step: Step, t: dict[str, np.ndarray]) -> str:
    from onnx import TensorProto, numpy_helper

    codes, cb = t["codes"], t["codebook"]
    if (codes < 0).any():
        cb = np.append(cb, np.float32(0.0))
        codes = np.where(codes < 0, len(cb) - 1, codes)
    arr = codes.astype(np.uint8 if len(cb) <= 256 else np.uint16)
    n = g.name(f"{step.name}.weight_idx")
    g.inits.append(numpy_helper.from_array(arr, n))
    idx = g.op("Cast", [n], f"{step.name}.weight_idx64", to=TensorProto.INT64)
    return g.op("Gather", [g.const(f"{step.name}.codebook", cb.astype(np.float32)), idx], f"{step.name}.weight",
                axis=0)


def _weight(g: _Graph, step: Step, t: dict[str, np.ndarray]) -> str:
    if "codes" in t:
        return _kmeans_weight(g, step, t)
    if "w" in t:
        return g.const(f"{step.name}.weight", t["w"])
    q = _int_weight(g, step.name, t["q"], step.bits)
    s = g.const(f"{step.name}.weight_scale", t["scale"])
    return g.op("DequantizeLinear", [q, s], f"{step.name}.weight", axis=step.ch_axis)


def _act_quant(g: _Graph, x: str, rank: int, bits: int) -> str:
    axes = g.const("axes", np.arange(1, rank, dtype=np.int64))
    lo = g.op("ReduceMin", [x, axes], "lo", keepdims=1)
    hi = g.op("ReduceMax", [x, axes], "hi", keepdims=1)
    levels = float(2 ** bits - 1)
    step = g.op("Div", [g.op("Sub", [hi, lo], "range"), g.const("levels", np.array(levels, np.float32))], "step")
    scale = g.op("Where", [g.op("Greater", [hi, lo], "spread"), step, g.const("one", np.array(1.0, np.float32))],
                 "scale")
    q = g.op("Round", [g.op("Div", [g.op("Sub", [x, lo], "shifted"), scale], "ratio")], "round")
    q = g.op("Clip", [q, g.const("zero", np.array(0.0, np.float32)), g.const("lmax", np.array(levels, np.float32))],
             "q")
    return g.op("Add", [g.op("Mul", [q, scale], "qs"), lo], "xq")


def _activation(g: _Graph, x: str, act: str) -> str:
    return get_activation(act).onnx(g.op, x)


def _layer(g: _Graph, spec: ArchSpec, step: Step, x: str, t: dict[str, np.ndarray]) -> str:
    if spec.act_bits:
        x = _act_quant(g, x, 1 + len(step.in_shape), spec.act_bits)
    w = _weight(g, step, t)
    ins = [x, w] + ([g.const(f"{step.name}.bias", t["b"])] if "b" in t else [])
    p, k, s = step.padding, step.kernel, step.stride
    if step.kind == "linear":
        y = g.op("Gemm", ins, step.name, transB=1)
    elif step.kind == "conv":
        y = g.op("Conv", ins, step.name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    else:
        y = g.op("ConvTranspose", ins, step.name, kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p],
                 output_padding=list(step.output_padding))
    return _activation(g, y, spec.activation) if step.act_after else y


def encoder_body(g: _Graph, spec: ArchSpec, tensors: dict, x: str = "x") -> str:
    """The encoder's nodes from input ``x`` to the head's output (mu and logvar side by side)."""
    rank = 1 + len(spec.input_shape)
    for st in encoder_steps(spec):
        if st.kind == "linear" and rank > 2:
            x, rank = g.op("Flatten", [x], "flat", axis=1), 2
        x = _layer(g, spec, st, x, tensors[st.name])
        rank = 2 if st.kind == "linear" else 4
    return x


def decoder_body(g: _Graph, spec: ArchSpec, tensors: dict, z: str = "z") -> tuple[str, int]:
    """The decoder's nodes from latent ``z``; its last value and that value's rank."""
    x, rank = z, 2
    for st in decoder_steps(spec):
        if st.kind != "linear" and rank == 2:
            x = g.op("Reshape", [x, g.const("shape", np.array([-1, *st.in_shape], np.int64))], "map")
        x = _layer(g, spec, st, x, tensors[st.name])
        rank = 2 if st.kind == "linear" else 4
    return x, rank


def encoder_model(spec: ArchSpec, packed: bytes):
    g = _Graph()
    split_head(g, encoder_body(g, spec, unpack_layers(spec, packed)), spec.latent_dim)
    return _model(g, *encoder_io(spec), f"vaenas {spec.id} encoder: x -> mu, logvar")


def decoder_model(spec: ArchSpec, packed: bytes):
    g = _Graph()
    finish_decoder(g, spec, *decoder_body(g, spec, unpack_layers(spec, packed)))
    return _model(g, *decoder_io(spec), f"vaenas {spec.id} decoder: z -> {spec.likelihood} parameters")


def write_onnx(spec: ArchSpec, packed: bytes, out: Path) -> list[str]:
    """``encoder.onnx`` and ``decoder.onnx``; an integer spec's are QDQ graphs onnxruntime runs in integers
    (:mod:`.onnx_int`)."""
    import onnx

    if spec.is_integer:
        from .int_program import integer_program
        from .onnx_int import decoder_model as int_decoder, encoder_model as int_encoder

        prog = integer_program(spec, packed)
        enc, dec = int_encoder(prog), int_decoder(prog)
    else:
        enc, dec = encoder_model(spec, packed), decoder_model(spec, packed)
    onnx.save(enc, str(out / "encoder.onnx"))
    onnx.save(dec, str(out / "decoder.onnx"))
    return list(ONNX_FILES)
