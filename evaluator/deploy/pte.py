"""The ExecuTorch export: ``model.pte`` with two methods, ``encode`` (x -> mu, logvar) and ``decode``
(z -> the likelihood's parameters), lowered through ``torch.export`` with the XNNPACK partitioner.

The program is rebuilt from the packed bytes (:class:`PackedVAE`): each quantised layer keeps its
weight as **int8 codes** (``q``, one byte each, also for 2-4 bits) and its float32 per-channel
scales, and dequantises them in the graph (``q.float() * scale``, which XNNPACK runs); 32-bit
layers keep float32 weights. torchao's weight-only configs were not used: they re-derive scales
from the float weights (``max|w| / 7.5`` for int4, ``/ 127.5`` for int8), which does not
reproduce the searched model's learned step sizes, so its outputs would differ from the model
that was scored. XNNPACK delegates the dequantisation and elementwise ops; GEMMs and convolutions
whose weights are computed in the graph run in ExecuTorch's portable kernels.

Needs the ``executorch`` extra (``pip install -e ".[executorch]"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from search_space.activations import get_activation
from search_space.packing import unpack_layers
from search_space.quant import fake_quant_act
from search_space.spec import ArchSpec
from search_space.plan import Step, decoder_steps, encoder_steps

PTE_FILES = ("model.pte",)


class _Layer(nn.Module):
    def __init__(self, step: Step, t: dict):
        super().__init__()
        self.step = step
        if "q" in t:
            self.register_buffer("q", torch.from_numpy(t["q"].astype("int8")))
            shape = [1] * len(step.weight_shape)
            shape[step.ch_axis] = -1
            self.register_buffer("scale", torch.from_numpy(t["scale"].copy()).view(shape))
        elif "codes" in t:  # k-means: indices into the codebook (+ a 0 entry for pruned weights)
            self.register_buffer("codes", torch.from_numpy(np.where(t["codes"] < 0, len(t["codebook"]),
                                                                    t["codes"]).astype("int64")))
            self.register_buffer("codebook", torch.from_numpy(np.append(t["codebook"], np.float32(0.0))))
        else:
            self.register_buffer("w", torch.from_numpy(t["w"].copy()))
        self.register_buffer("b", torch.from_numpy(t["b"].copy()) if "b" in t else None)

    def weight(self) -> torch.Tensor:
        if hasattr(self, "q"):
            return self.q.to(torch.float32) * self.scale
        return self.codebook[self.codes] if hasattr(self, "codes") else self.w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        st = self.step
        if st.kind == "linear":
            return F.linear(x, self.weight(), self.b)
        if st.kind == "conv":
            return F.conv2d(x, self.weight(), self.b, st.stride, st.padding)
        return F.conv_transpose2d(x, self.weight(), self.b, st.stride, st.padding, st.output_padding)


class PackedVAE(nn.Module):
    """The deployable inference rebuilt from packed bytes (integer codes + scales), in plain torch ops."""

    def __init__(self, spec: ArchSpec, packed: bytes):
        super().__init__()
        tensors = unpack_layers(spec, packed)
        self.spec = spec
        self.enc_steps, self.dec_steps = encoder_steps(spec), decoder_steps(spec)
        self.layers = nn.ModuleDict({s.name.replace(".", "_"): _Layer(s, tensors[s.name])
                                     for s in self.enc_steps + self.dec_steps})

    def _run(self, steps: list[Step], h: torch.Tensor) -> torch.Tensor:
        act = get_activation(self.spec.activation).fn
        for st in steps:
            if st.kind == "linear":
                h = h.reshape(h.shape[0], -1)
            else:
                h = h.reshape(h.shape[0], *st.in_shape)
            h = self.layers[st.name.replace(".", "_")](fake_quant_act(h, self.spec.act_bits))
            if st.act_after:
                h = act(h)
        return h

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._run(self.enc_steps, x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._run(self.dec_steps, z).reshape(z.shape[0], *self.spec.output_shape)


class _Method(nn.Module):
    def __init__(self, vae: PackedVAE, which: str):
        super().__init__()
        self.vae, self.which = vae, which

    def forward(self, x: torch.Tensor):
        return self.vae.encode(x) if self.which == "encode" else self.vae.decode(x)


def pte_bytes(spec: ArchSpec, packed: bytes) -> bytes:
    """The ``.pte`` program: methods ``encode`` and ``decode``, batch 1 (an integer spec's: :mod:`.pte_int`)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if spec.is_integer:
        import executorch.kernels.quantized  # noqa: F401 - out variants of the quantize/dequantize ops

        from .int_program import integer_program
        from .pte_int import IntegerVAE

        vae = IntegerVAE(integer_program(spec, packed)).eval()
    else:
        vae = PackedVAE(spec, packed).eval()
    with torch.no_grad():
        programs = {
            "encode": torch.export.export(_Method(vae, "encode"), (torch.zeros(1, *spec.input_shape),)),
            "decode": torch.export.export(_Method(vae, "decode"), (torch.zeros(1, spec.latent_dim),)),
        }
    return to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def write_pte(spec: ArchSpec, packed: bytes, out: Path) -> list[str]:
    (out / "model.pte").write_bytes(pte_bytes(spec, packed))
    return list(PTE_FILES)


def executorch_available() -> str | None:
    """None if ExecuTorch can be imported, else what to install (one phrase)."""
    try:
        import executorch.exir  # noqa: F401
        from executorch.runtime import Runtime  # noqa: F401
    except ImportError:
        return 'the executorch package is not installed (pip install -e ".[executorch]")'
    return None
