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
