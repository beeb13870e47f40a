"""The layer plan: one owner of a spec's topology - what every weight layer is, in order, and what
surrounds it. The builder, packing, structured pruning, the supernets, the costs and every export
read it; nothing else derives shapes, factorisations or the activation's placement.

A VAE is two chains of weight layers (:func:`layer_plan`), each layer optionally preceded by
activation quantisation (``act_bits``) of its input and followed by the spec's activation:

* ``encoder``: ``x`` (``spec.input_shape``) -> conv layers -> flatten -> FC layers -> ``head``
  -> ``mu`` (first ``latent_dim`` values), ``logvar`` (the next ``latent_dim``);
* ``decoder``: ``z`` (``latent_dim``) -> FC layers -> ``dec.out`` (MLP) or ``dec.proj`` -> reshape
  -> transposed convs (no activation after the last) -> the likelihood's parameters
  (``spec.output_shape``);
* a reconstruction pass is ``decode(encode(x).mu)``.

The encoder flattens its input (or its last feature map) before its first linear layer, whose
``in_shape`` is that vector; a linear layer whose ``out_shape`` is a feature map reshapes its output
(``dec.proj``; ``dec.out`` of an image MLP). Tensors are contiguous
row-major (``C, H, W``), so neither moves data.

A layer is one or two :class:`Step` s, each one quantised weight tensor: a factorised layer
(``rank``, :mod:`.compression`) is ``<layer>.v`` (no activation, no bias) then ``<layer>.u`` (the
layer's bias and activation). The steps, in order, are the packed layers (:mod:`.packing`) and the
ops every export writes. A structurally pruned spec is planned wide (training: masked layers) and
ships its ``deployed()`` plan (narrower, dense): :func:`steps` plans what ships.

Pure arithmetic on the spec: no tensors, no modules.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from .compression import factor_rank, kept_count

ArchSpec = Any  # a search_space.spec.ArchSpec: the plan reads its fields; spec.py imports this module, not back

KINDS = ("linear", "conv", "tconv")


@dataclass(frozen=True)
class Step:
    """One quantised weight tensor and the op that applies it (a whole layer, or one factor of it)."""

    name: str  # the packed layer's name: ``spec.layer_names()``, or ``<layer>.v`` / ``<layer>.u``
    kind: str  # "linear" | "conv" | "tconv"
    in_shape: tuple[int, ...]  # per example: (features,) or (C, H, W)
    out_shape: tuple[int, ...]
    bits: int
    act_after: bool  # apply the spec's activation to the output
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    output_padding: tuple[int, int] = (0, 0)
    bias: bool = True
    quantizer: str = "uniform"  # or "kmeans" (bits < 32 only)
    sparsity: float = 0.0  # unstructured pruning's target (0 under structured pruning: masks instead)
    masked: bool = False  # structured pruning removes rows/columns of this layer (a mask while training)
    act_bits: int | None = None  # fake quantisation of the input (None = float)

    @property
    def in_size(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_size(self) -> int:
        return math.prod(self.out_shape)

    @property
    def in_channels(self) -> int:
        return self.in_size if self.kind == "linear" else self.in_shape[0]

    @property
    def out_channels(self) -> int:
        return self.out_size if self.kind == "linear" else self.out_shape[0]

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_size, self.in_size)
        if self.kind == "conv":
            return (self.out_shape[0], self.in_shape[0], self.kernel, self.kernel)
        return (self.in_shape[0], self.out_shape[0], self.kernel, self.kernel)  # ConvTranspose2d: (in, out, k, k)

    @property
    def ch_axis(self) -> int:
        """The weight's output-channel axis (per-channel scales): 1 for a transposed conv, else 0."""
        return 1 if self.kind == "tconv" else 0

    @property
    def n_weights(self) -> int:
        return math.prod(self.weight_shape)

    @property
    def reshapes_output(self) -> bool:
        """A linear layer writing a feature map (``dec.proj``, an image MLP's ``dec.out``)."""
        return self.kind == "linear" and len(self.out_shape) > 1

    @property
    def kept(self) -> int:
        """Weights stored (all of them unless the step is sparse: ``compression.kept_count``)."""
        return kept_count(self.n_weights, self.sparsity) if self.sparsity > 0 else self.n_weights

    @property
    def macs(self) -> int:
        """Multiply-accumulates of one example (dense)."""
        if self.kind == "tconv":
            return self.in_size * self.out_shape[0] * self.kernel * self.kernel
        per_out = self.in_size if self.kind == "linear" else self.in_shape[0] * self.kernel * self.kernel
        return self.out_size * per_out


@dataclass(frozen=True)
class Layer:
    """One named weight layer (``spec.layer_names()``): its whole op, and the steps that compute it."""

    op: Step  # the unfactorised layer (name = the layer's name)
    steps: tuple[Step, ...]  # (op,) or its two factors (v, u)

    @property
    def name(self) -> str:
        return self.op.name


@dataclass(frozen=True)
class LayerPlan:
    """A spec's two chains of layers, in ``spec.layer_names()`` order."""

    encoder: tuple[Layer, ...]
    decoder: tuple[Layer, ...]

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.encoder + self.decoder

    def steps(self) -> list[Step]:
        """Every quantised weight tensor in packing order."""
        return [s for layer in self.layers for s in layer.steps]


def tconv_output_padding(in_size: int, target: int, k: int, s: int) -> int:
    """The transposed conv's ``output_padding`` that restores ``target`` (the mirrored encoder size)."""
    op = target - ((in_size - 1) * s - 2 * ((k - 1) // 2) + k)
    assert 0 <= op < s, (in_size, target, k, s, op)  # guaranteed by spec.conv_out's padding rule
    return op


class _Layers:
    """Builds a spec's layers with its per-layer bits, quantizer, sparsity, rank and masks."""

    def __init__(self, spec: ArchSpec, masks: bool = True):
        """``masks``: mark structured pruning's masked layers (False: shapes only, as the unit groups need)."""
        self.spec = spec
        self.names = spec.layer_names()
        self.structured = masks and spec.pruning == "structured"
        self.masked = _structured_touched(spec) if self.structured else frozenset()

    def __call__(self, name: str, kind: str, in_shape, out_shape, act_after: bool, kernel: int = 1,
                 stride: int = 1, output_padding: tuple[int, int] = (0, 0)) -> Layer:
        spec, i = self.spec, self.names.index(name)
        op = Step(name, kind, tuple(in_shape), tuple(out_shape), spec.weight_bits[i], act_after, kernel, stride,
                  (kernel - 1) // 2, output_padding, quantizer=spec.layer_quantizer(i),
                  sparsity=0.0 if self.structured else spec.layer_sparsity(i), masked=name in self.masked,
                  act_bits=spec.act_bits)
        rank = spec.layer_rank(i)
        return Layer(op, (op,) if rank is None else factorised(op, rank))


def factorised(op: Step, rank: float) -> tuple[Step, Step]:
    """``op`` as its two low-rank factors ``v`` then ``u`` (:mod:`.compression`)."""
    plain = dict(bits=op.bits, quantizer=op.quantizer, act_bits=op.act_bits)
    if op.kind == "linear":
        r = factor_rank(op.out_size, op.in_size, rank)
        return (Step(f"{op.name}.v", "linear", op.in_shape, (r,), act_after=False, bias=False, **plain),
                Step(f"{op.name}.u", "linear", (r,), op.out_shape, act_after=op.act_after, **plain))
    c, k = op.in_shape[0], op.kernel
    if op.kind == "conv":
        r = factor_rank(op.out_shape[0], c * k * k, rank)
        mid = (r, *op.out_shape[1:])
        return (Step(f"{op.name}.v", "conv", op.in_shape, mid, act_after=False, kernel=k, stride=op.stride,
                     padding=op.padding, bias=False, **plain),
                Step(f"{op.name}.u", "conv", mid, op.out_shape, act_after=op.act_after, **plain))
    r = factor_rank(c, op.out_shape[0] * k * k, rank)
    mid = (r, *op.in_shape[1:])
    return (Step(f"{op.name}.v", "conv", op.in_shape, mid, act_after=False, bias=False, **plain),
            Step(f"{op.name}.u", "tconv", mid, op.out_shape, act_after=op.act_after, kernel=k, stride=op.stride,
                 padding=op.padding, output_padding=op.output_padding, **plain))


def _encoder(spec: ArchSpec, make: _Layers) -> tuple[Layer, ...]:
    shapes = spec.feature_shapes()
    out = [make(f"enc.conv{i}", "conv", shapes[i], shapes[i + 1], True, k, s)
           for i, (k, s) in enumerate(zip(spec.kernels, spec.strides))]
    cur: tuple[int, ...] = (math.prod(shapes[-1]),)  # flattened: the FC layers read the maps as vectors
    for i, width in enumerate(spec.enc_hidden):
        out.append(make(f"enc.fc{i}", "linear", cur, (width,), True))
        cur = (width,)
    out.append(make("head", "linear", cur, (2 * spec.latent_dim,), False))
    return tuple(out)


def _decoder(spec: ArchSpec, make: _Layers) -> tuple[Layer, ...]:
    out, cur = [], (spec.latent_dim,)
    for i, width in enumerate(spec.decoder_hidden):
        out.append(make(f"dec.fc{i}", "linear", cur, (width,), True))
        cur = (width,)
    if spec.family == "mlp":
        out.append(make("dec.out", "linear", cur, tuple(spec.output_shape), False))
        return tuple(out)
    shapes, dch, n = spec.feature_shapes(), spec.decoder_channels, len(spec.enc_channels)
    start = (dch[0], *shapes[-1][1:])
    out.append(make("dec.proj", "linear", cur, start, True))
    cur = start
    for i in range(n):
        j = n - 1 - i  # the encoder layer this one mirrors
        out_shape = (dch[i + 1] if i + 1 < n else spec.output_shape[0], *shapes[j][1:])
        k, s = spec.kernels[j], spec.strides[j]
        pad = tuple(tconv_output_padding(cur[a], out_shape[a], k, s) for a in (1, 2))
        out.append(make(f"dec.tconv{i}", "tconv", cur, out_shape, i + 1 < n, k, s, pad))
        cur = out_shape
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def layer_plan(spec: ArchSpec) -> LayerPlan:
    """``spec``'s layers as trained (a structurally pruned spec: wide, its pruned layers masked); once per
    spec (it is frozen)."""
    make = _Layers(spec)
    return LayerPlan(_encoder(spec, make), _decoder(spec, make))


def shipped_plan(spec: ArchSpec) -> LayerPlan:
    """The plan of what ships: ``spec.deployed()`` (structured pruning: the narrower dense model)."""
    return layer_plan(spec.deployed())


MAX_PARAMS = 100_000_000  # parameters of the largest model vaenas builds (Adam's training state is ~16 B each)


def param_count(spec: ArchSpec) -> int:
    """Weights + biases of ``spec`` as trained (:meth:`VAE.num_params`), counted without building it."""
    return sum(s.n_weights + (s.out_channels if s.bias else 0) for s in layer_plan(spec).steps())


def check_param_cap(spec: ArchSpec, what: str = "arch") -> None:
    """One line (a ``SpecError``) when ``spec`` is over :data:`MAX_PARAMS`: checked before anything is built."""
    from .errors import SpecError

    n = param_count(spec)
    if n > MAX_PARAMS:
        raise SpecError(f"{what + ': ' if what else ''}spec {spec.id} has {n:,} parameters, over the {MAX_PARAMS:,} "
                        "vaenas builds; use narrower layers, fewer channels or a smaller latent_dim")


_MEAN_BITS: dict[str, float] = {}


def weighted_mean_bits(spec: ArchSpec) -> float:
    """Weight bits per stored weight of what ships: sum(kept * bits) / sum(kept) (cached by spec id; a
    sparse layer's position record is not a weight bit - it is in the packed bytes)."""
    if spec.id not in _MEAN_BITS:
        steps = shipped_plan(spec).steps()
        _MEAN_BITS[spec.id] = sum(s.kept * s.bits for s in steps) / sum(s.kept for s in steps)
    return _MEAN_BITS[spec.id]


def encoder_steps(spec: ArchSpec) -> list[Step]:
    """The shipped encoder's steps (factors expanded)."""
    return [s for layer in shipped_plan(spec).encoder for s in layer.steps]


def decoder_steps(spec: ArchSpec) -> list[Step]:
    """The shipped decoder's steps (factors expanded)."""
    return [s for layer in shipped_plan(spec).decoder for s in layer.steps]


def tensor_sizes(spec: ArchSpec) -> list[int]:
    """Float counts of the reconstruction chain's tensors: input, every step's output (the head's is
    ``2 * latent_dim``: mu then logvar; the decoder reads its first half as ``z``)."""
    return [spec.n_inputs] + [s.out_size for s in encoder_steps(spec) + decoder_steps(spec)]


# ----------------------------------------------------------------------------- structured pruning
@dataclass(frozen=True)
class UnitGroup:
    """One structurally pruned layer's units: ``producer`` computes them, ``consumer`` reads them."""

    producer: str
    consumer: str
    units: int
    target: float  # the fraction of units removed at the end
    out_axis: int  # producer weight axis of the units (0; 1 for a transposed conv)
    out_group: int  # producer rows per unit along out_axis (a linear layer writing a map: h * w; else 1)
    in_axis: int  # consumer weight axis of its inputs (1 for linear/conv; 0 for a transposed conv)
    in_group: int  # consumer inputs per unit (a linear layer reading a map: h * w; else 1)


def _chain_pairs(spec: ArchSpec) -> list[tuple[Step, Step]]:
    """(producer, consumer) of every layer whose outputs another layer of the same chain reads."""
    make = _Layers(spec, masks=False)  # shapes only: no masks needed to find the pairs
    pairs = []
    for chain in (_encoder(spec, make), _decoder(spec, make)):
        pairs += [(a.op, b.op) for a, b in zip(chain, chain[1:])]
    return pairs


def prunable_units(spec: ArchSpec) -> dict[str, int]:
    """Layers whose outputs structured pruning may remove - every layer another layer of its chain reads
    (not the head, nor the output layer) - with their unit (feature or channel) counts."""
    return {p.name: p.out_shape[0] for p, _ in _chain_pairs(spec)}


def _group(producer: Step, consumer: Step, target: float) -> UnitGroup:
    per_unit = math.prod(producer.out_shape[1:]) if len(producer.out_shape) > 1 else 1
    return UnitGroup(producer.name, consumer.name, producer.out_shape[0], target,
                     out_axis=producer.ch_axis, out_group=per_unit if producer.kind == "linear" else 1,
                     in_axis=0 if consumer.kind == "tconv" else 1,
                     in_group=per_unit if consumer.kind == "linear" else 1)


@functools.lru_cache(maxsize=1024)
def unit_groups(spec: ArchSpec) -> tuple[UnitGroup, ...]:
    """The structured-pruning plan of ``spec`` (empty unless ``spec.pruning == "structured"``): every layer
    with a sparsity, the next layer of its chain as the consumer of its units."""
    if spec.pruning != "structured":
        return ()
    sp = dict(zip(spec.layer_names(), spec.sparsity or ()))
    return tuple(_group(p, c, sp[p.name]) for p, c in _chain_pairs(spec) if sp.get(p.name, 0.0) > 0)


def _structured_touched(spec: ArchSpec) -> frozenset[str]:
    """Layers that need a mask under structured pruning (producers and consumers)."""
    return frozenset(n for g in unit_groups(spec) for n in (g.producer, g.consumer))
