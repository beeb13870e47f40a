"""The activation registry: one entry per activation, with every form a model or an export needs.

An entry gives the PyTorch module (the builder), the functional form (supernets, the ExecuTorch
program), the C statement applied to ``x[i]`` in place (the C library) and the ONNX nodes (a
function of the graph writer's ``op(op_type, inputs, name, **attrs)`` and the input name, returning
the output name). Adding an activation is one :func:`register_activation` call; the spec accepts
exactly the registered names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

OnnxNodes = Callable[[Callable[..., str], str], str]


@dataclass(frozen=True)
class Activation:
    name: str
    module: Callable[[], nn.Module]
    fn: Callable[[torch.Tensor], torch.Tensor]
    c: str  # one C statement on float x[i], in place
    onnx: OnnxNodes


ACTIVATIONS: dict[str, Activation] = {}


def register_activation(name: str, module: Callable[[], nn.Module], fn: Callable[[torch.Tensor], torch.Tensor],
                        c: str, onnx: OnnxNodes) -> Activation:
    """Add an activation under ``name`` (refused if the name is taken)."""
    if name in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is registered already")
    ACTIVATIONS[name] = Activation(name, module, fn, c, onnx)
    return ACTIVATIONS[name]


def get_activation(name: str) -> Activation:
    return ACTIVATIONS[name]


def _single(op_type: str, node: str, **attrs: Any) -> OnnxNodes:
    return lambda op, x: op(op_type, [x], node, **attrs)


register_activation("relu", nn.ReLU, F.relu, "x[i] = x[i] > 0.0f ? x[i] : 0.0f;", _single("Relu", "relu"))
register_activation("leaky_relu", lambda: nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1),
                    "x[i] = x[i] > 0.0f ? x[i] : x[i] * 0.1f;", _single("LeakyRelu", "leaky", alpha=0.1))
register_activation("elu", nn.ELU, F.elu, "x[i] = x[i] > 0.0f ? x[i] : expm1f(x[i]);",
                    _single("Elu", "elu", alpha=1.0))
register_activation("silu", nn.SiLU, F.silu, "x[i] = x[i] / (1.0f + expf(-x[i]));",
                    lambda op, x: op("Mul", [x, op("Sigmoid", [x], "sig")], "silu"))
register_activation("gelu", nn.GELU, F.gelu, "x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));",
                    _single("Gelu", "gelu"))
register_activation("tanh", nn.Tanh, torch.tanh, "x[i] = tanhf(x[i]);", _single("Tanh", "tanh"))
register_activation("sigmoid", nn.Sigmoid, torch.sigmoid, "x[i] = 1.0f / (1.0f + expf(-x[i]));",
                    _single("Sigmoid", "sigmoid"))
