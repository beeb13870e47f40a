"""The inference program every deployable format runs: one owner of "what a reconstruction pass computes".

A VAE's deployable inference is a chain of weight layers, each optionally preceded by activation
quantisation (``act_bits``) of its input and followed by the spec's activation:

* ``encode``: ``x`` (model space, ``spec.input_shape``) -> conv layers -> flatten -> FC layers ->
  ``head`` -> ``mu`` (first ``latent_dim`` values), ``logvar`` (the next ``latent_dim``);
* ``decode``: ``z`` (``latent_dim``) -> FC layers -> ``dec.out`` (MLP) or ``dec.proj`` -> reshape ->
  transposed convs (no activation after the last) -> the likelihood's parameters
  (``spec.output_shape``);
* a reconstruction pass is ``decode(encode(x).mu)``.

A factorised layer (``rank``, ``search_space/compression.py``) is two steps, ``<layer>.v`` (no
activation, no bias) then ``<layer>.u`` (the layer's activation and bias), exactly as the
builder's ``LowRank`` computes it; the steps are named as the packed layers. A structurally pruned
spec runs its ``deployed()`` (narrower, dense) program.

Tensors are contiguous row-major float32 (``C, H, W`` for feature maps), so flatten and reshape
move nothing. :func:`tensor_sizes` gives the float count of every tensor of the chain, which sizes
the C library's one activation arena (see :mod:`.memory`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..compression import factor_rank
from ..spec import ArchSpec


@dataclass(frozen=True)
class Step:
    """One weight layer of the chain and what surrounds it."""

    name: str  # the weight layer (``spec.layer_names()``)
    kind: str  # "linear" | "conv" | "tconv"
    in_shape: tuple[int, ...]  # per example: (features,) or (C, H, W)
    out_shape: tuple[int, ...]
    bits: int
    act_after: bool  # apply the spec's activation to the output
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    output_padding: tuple[int, int] = (0, 0)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_size, self.in_size)
        if self.kind == "conv":
            return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)
        return (self.in_shape[0], self.out_shape[0], self.kernel, self.kernel)  # ConvTranspose2d: (in, out, k, k)

    @property
    def ch_axis(self) -> int:
        return 1 if self.kind == "tconv" else 0


def _tconv_output_padding(in_size: int, target: int, k: int, s: int) -> int:
    return target - ((in_size - 1) * s - 2 * ((k - 1) // 2) + k)


def _factorised(spec: ArchSpec, step: Step) -> list[Step]:
    """``step`` as the two steps of its low-rank factors when the spec factorises it (else unchanged)."""
    rank = spec.layer_rank(spec.layer_names().index(step.name))
    if rank is None:
        return [step]
    if step.kind == "linear":
        r = factor_rank(step.out_size, step.in_size, rank)
        first = Step(f"{step.name}.v", "linear", step.in_shape, (r,), step.bits, False)
        return [first, Step(f"{step.name}.u", "linear", (r,), step.out_shape, step.bits, step.act_after)]
    c, k = step.in_shape[0], step.kernel
    if step.kind == "conv":
        r = factor_rank(step.out_shape[0], c * k * k, rank)
        mid = (r, *step.out_shape[1:])
        first = Step(f"{step.name}.v", "conv", step.in_shape, mid, step.bits, False, k, step.stride, step.padding)
        return [first, Step(f"{step.name}.u", "conv", mid, step.out_shape, step.bits, step.act_after)]
    r = factor_rank(c, step.out_shape[0] * k * k, rank)
    mid = (r, *step.in_shape[1:])
    first = Step(f"{step.name}.v", "conv", step.in_shape, mid, step.bits, False)
    return [first, Step(f"{step.name}.u", "tconv", mid, step.out_shape, step.bits, step.act_after, k, step.stride,
                        step.padding, step.output_padding)]


def _expand(spec: ArchSpec, steps: list[Step]) -> list[Step]:
    return [s for step in steps for s in _factorised(spec, step)] if spec.rank else steps


def encoder_steps(spec: ArchSpec) -> list[Step]:
    spec = spec.deployed()  # structured pruning ships the narrower model
    return _expand(spec, _encoder_layers(spec))


def decoder_steps(spec: ArchSpec) -> list[Step]:
    spec = spec.deployed()
    return _expand(spec, _decoder_layers(spec))


def _encoder_layers(spec: ArchSpec) -> list[Step]:
    bits = dict(zip(spec.layer_names(), spec.weight_bits))
    shapes = spec.feature_shapes()
    steps = []
    for i, (k, s) in enumerate(zip(spec.kernels, spec.strides)):
        steps.append(Step(f"enc.conv{i}", "conv", shapes[i], shapes[i + 1], bits[f"enc.conv{i}"], True, k, s,
                          (k - 1) // 2))
    width = math.prod(shapes[-1])
    for i, out in enumerate(spec.enc_hidden):
        steps.append(Step(f"enc.fc{i}", "linear", (width,), (out,), bits[f"enc.fc{i}"], True))
        width = out
    steps.append(Step("head", "linear", (width,), (2 * spec.latent_dim,), bits["head"], False))
    return steps


def _decoder_layers(spec: ArchSpec) -> list[Step]:
    bits = dict(zip(spec.layer_names(), spec.weight_bits))
    steps = []
    width = spec.latent_dim
    for i, out in enumerate(spec.decoder_hidden):
        steps.append(Step(f"dec.fc{i}", "linear", (width,), (out,), bits[f"dec.fc{i}"], True))
        width = out
    if spec.family == "mlp":
        steps.append(Step("dec.out", "linear", (width,), tuple(spec.output_shape), bits["dec.out"], False))
        return steps
    shapes = spec.feature_shapes()
    dch = spec.decoder_channels
    n = len(spec.enc_channels)
    start = (dch[0], *shapes[-1][1:])
    steps.append(Step("dec.proj", "linear", (width,), start, bits["dec.proj"], True))
    cur = start
    for i in range(n):
        j = n - 1 - i  # the encoder layer this one mirrors
        out_ch = dch[i + 1] if i + 1 < n else spec.output_shape[0]
        out_shape = (out_ch, *shapes[j][1:])
        k, s = spec.kernels[j], spec.strides[j]
        op = (_tconv_output_padding(cur[1], out_shape[1], k, s), _tconv_output_padding(cur[2], out_shape[2], k, s))
        steps.append(Step(f"dec.tconv{i}", "tconv", cur, out_shape, bits[f"dec.tconv{i}"], i + 1 < n, k, s,
                          (k - 1) // 2, op))
        cur = out_shape
    return steps


def tensor_sizes(spec: ArchSpec) -> list[int]:
    """Float counts of the reconstruction chain's tensors: input, every layer's output (the head's is
    ``2 * latent_dim``: mu then logvar; the decoder reads its first half as ``z``)."""
    steps = encoder_steps(spec) + decoder_steps(spec)
    return [spec.n_inputs] + [s.out_size for s in steps]
