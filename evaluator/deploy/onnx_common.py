"""What both ONNX exports share: the graph writer and the model wrapper (opset 21, IR 10, fully checked)."""

from __future__ import annotations

import numpy as np

OPSET = 21


class _Graph:
    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        n = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, n_out: int = 1, **attrs) -> list[str] | str:
        from onnx import helper

        outs = [self.name(base) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs if n_out > 1 else outs[0]


def _model(g: _Graph, inputs, outputs, doc: str):
    from onnx import checker, helper

    graph = helper.make_graph(g.nodes, "vaenas", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="vaenas",
                              doc_string=doc)
    model.ir_version = 10  # opset 21's IR; onnxruntime reads it
    checker.check_model(model, full_check=True)
    return model


def split_head(g: _Graph, y: str, latent: int, names: tuple[str, str] | None = ("mu", "logvar")) -> list[str]:
    """The encoder's head output split into mu and logvar (named ``names`` when given: graph outputs)."""
    outs = g.op("Split", [y, g.const("split", np.array([latent, latent], np.int64))], "head", n_out=2, axis=1)
    if names:
        g.nodes[-1].output[:] = list(names)
        return list(names)
    return outs


def finish_decoder(g: _Graph, spec, y: str, rank: int) -> None:
    """The decoder's last value reshaped to the output shape (when a linear layer made it flat), named ``out``."""
    if len(spec.output_shape) > 1 and rank == 2:
        y = g.op("Reshape", [y, g.const("shape", np.array([-1, *spec.output_shape], np.int64))], "out_map")
    g.op("Identity", [y], "out")
    g.nodes[-1].output[:] = ["out"]


def encoder_io(spec) -> tuple[list, list]:
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *spec.input_shape])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", spec.latent_dim]) for n in ("mu", "logvar")]
    return ins, outs


def decoder_io(spec) -> tuple[list, list]:
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", spec.latent_dim])]
    outs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", *spec.output_shape])]
    return ins, outs
