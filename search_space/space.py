"""The search space: which :class:`ArchSpec`s may be built, declared in YAML.

Every spec in a space is the result of a fixed sequence of named categorical decisions (a
define-by-run program, as in Optuna): ``family``, ``latent_dim``, ``activation``, the depths,
then the width/channel/kernel/stride of each active layer, then the bit-widths. ``sample``,
``mutate``, ``crossover``, ``from_params`` and an Optuna trial all drive that one program with a
different ``choose(name, choices)``; so every spec they produce is in the space by construction.

Example YAML (every key is optional except ``latent_dim`` and the block of each family used)::

    family: [mlp]               # or [mlp, conv]
    input_shape: [1, 28, 28]    # optional in a study: taken from the data ([C, H, W] or [features])
    likelihood: bernoulli       # optional in a study: taken from the dataset block
    latent_dim: [8, 16, 20, 32] # or {min: 8, max: 32, step: 8}
    activation: [relu]
    mlp:   {depth: [1, 2, 3], width: [64, 128, 256, 400]}
    conv:  {depth: [1, 2], channels: [8, 16, 32], kernel: [3, 4], stride: [2],
            fc_depth: [0, 1], fc_width: [128, 256]}
    decoder: mirror             # or free: the decoder's widths/channels are decided separately
    weight_bits: [2, 4, 8, 32]
    bits_per_layer: true        # false: one bit-width shared by every layer
    act_bits: [null]            # null = float activations; e.g. [null, 8]
    arithmetic: [float]         # or [int8] / [float, int8]: integer inference (search_space/integer.py)
    quantizer: [uniform, kmeans] # optional: per quantised layer, uniform grid or k-means codebook
    rank: [null, 0.25, 0.5]     # optional: per layer, unfactorised or a low-rank product (fraction of full rank)
    sparsity: [0, 0.3, 0.5, 0.7] # optional: per unfactorised layer, the fraction pruned by magnitude
    pruning: [unstructured, structured] # optional: structured removes whole units/channels

``arithmetic`` (asked before ``act_bits``, only when the space lists ``int8``): an ``int8`` spec runs in
integers, so its decisions differ - no ``act_bits``, ``quantizer`` or ``pruning``, and its bit-widths are
``ibits.<layer>`` (or ``ibits``) over the space's ``weight_bits`` of 8 or fewer.

The compression keys (``search_space/compression.py``) are decided after the bit-widths:
``pruning`` once (only with float activations: structured pruning refuses ``act_bits``), then
per layer ``quantizer.<layer>`` (only below 32 bits), ``rank.<layer>`` (not under structured
pruning) and ``sparsity.<layer>`` (only for an unfactorised layer; under structured pruning only
for a layer whose outputs are hidden units, ``ArchSpec.prunable_units``). A space without them
asks none of these decisions (its specs, params and study fingerprints are as before).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .compression import MAX_SPARSITY, QUANTIZERS
from .errors import SpaceError, SpecError, check_block, read_text
from .likelihood import LIKELIHOODS
from .plan import MAX_PARAMS, param_count
from .spec import ACTIVATIONS, ALLOWED_ACT_BITS, ALLOWED_BITS, ARITHMETICS, FAMILIES, ArchSpec, conv_out

Choose = Callable[[str, tuple], Any]
MAX_CHOICES = 10_000  # values one decision may list or a range may span
MAX_YAML_NODES = 100_000  # values a config may expand to (YAML aliases included): no alias bombs


def safe_yaml(text: str, what: str, error=None) -> Any:
    """``yaml.safe_load`` plus a bound on what the document expands to: anchors and aliases let 1 KB
    name a billion values, which any later traversal would build; refused with one line instead."""
    error = error or SpaceError
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise error(f"{what}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    budget = [MAX_YAML_NODES]

    def walk(v: Any) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise error(f"{what}: the YAML expands to more than {MAX_YAML_NODES:,} values (aliases repeated?); "
                        "write the config out plainly")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(d)
    return d
Rng = random.Random | int | None

_TOP_KEYS = {"name", "family", "input_shape", "likelihood", "latent_dim", "activation", "mlp", "conv", "decoder",
             "weight_bits", "bits_per_layer", "act_bits", "quantizer", "rank", "sparsity", "pruning", "arithmetic"}
COMPRESSION_KEYS = ("pruning", "quantizer", "rank", "sparsity")
_COMPRESSION_DEFAULT = {"pruning": ("unstructured",), "quantizer": ("uniform",), "rank": (None,), "sparsity": (0.0,)}
_MLP_KEYS = {"depth", "width"}
_CONV_KEYS = {"depth", "channels", "kernel", "stride", "fc_depth", "fc_width"}


def _compression_choices(key: str, value: Any) -> tuple:
    """The choices of ``quantizer``, ``rank`` or ``sparsity`` (one line naming what is wrong)."""
    if not isinstance(value, list) or not value:
        raise SpaceError(f"{key}: expected a non-empty list of choices, e.g. "
                         + {"quantizer": "[uniform, kmeans]", "rank": "[null, 0.25, 0.5]",
                            "sparsity": "[0, 0.3, 0.5, 0.7]", "pruning": "[unstructured, structured]"}[key])
    if len(set(value)) != len(value):
        raise SpaceError(f"{key}: duplicate choices in {value}")
    out = []
    for v in value:
        if key == "quantizer":
            if v not in QUANTIZERS:
                raise SpaceError(f"quantizer: {v!r} is not a quantizer; use {list(QUANTIZERS)}")
            out.append(v)
            continue
        if key == "pruning":
            if v not in ("unstructured", "structured"):
                raise SpaceError(f"pruning: {v!r} is not a pruning kind; use unstructured or structured")
            out.append(v)
            continue
        number = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if key == "rank" and not (v is None or (number and 0 < v <= 1)):
            raise SpaceError(f"rank: {v!r} is not allowed; use null (unfactorised) or a fraction of full rank in (0, 1]")
        if key == "sparsity" and not (number and 0 <= v <= MAX_SPARSITY):
            raise SpaceError(f"sparsity: {v!r} is not allowed; use fractions pruned in [0, {MAX_SPARSITY}]")
        out.append(None if v is None else float(v))
    return tuple(out)


def _rng(rng: Rng) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


def _choices(path: str, value: Any, *, minimum: int | None = 1, allow_null: bool = False) -> tuple:
    """A list of choices, or ``{min, max, step}`` / ``{min, max, log2: true}`` for integers."""
    if isinstance(value, dict):
        unknown = set(value) - {"min", "max", "step", "log2"}
        if unknown:
            raise SpaceError(f"{path}: unknown range key {sorted(unknown)[0]!r}; use min, max, step or log2")
        lo, hi = value.get("min"), value.get("max")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi)):
            raise SpaceError(f"{path}: a range needs integer min and max, got {value!r}")
        if lo > hi:
            raise SpaceError(f"{path}: min ({lo}) is greater than max ({hi}); swap them")
        if value.get("log2") and hi > 2**62:
            raise SpaceError(f"{path}: max {hi} is too large")
        if value.get("log2"):
            out, v = [], 1
            while v <= hi:
                if v >= lo:
                    out.append(v)
                v *= 2
            if not out:
                raise SpaceError(f"{path}: no power of two lies in [{lo}, {hi}]")
            vals: tuple = tuple(out)
        else:
            step = value.get("step", 1)
            if not isinstance(step, int) or isinstance(step, bool) or step < 1:
                raise SpaceError(f"{path}: step must be a positive integer, got {step!r}")
            n = (hi - lo) // step + 1
            if n > MAX_CHOICES:  # counted before the range is built
                raise SpaceError(f"{path}: the range {lo}..{hi} step {step} has {n:,} values, over {MAX_CHOICES:,}; "
                                 "use a larger step or log2: true")
            vals = tuple(range(lo, hi + 1, step))
    elif isinstance(value, list):
        vals = tuple(value)
    elif isinstance(value, (int, str)) and not isinstance(value, bool) or (value is None and allow_null):
        vals = (value,)
    else:
        raise SpaceError(f"{path}: expected a list of choices or a {{min, max}} range, got {value!r}")
    if not vals:
        raise SpaceError(f"{path}: the list of choices is empty; give at least one value")
    if len(vals) > MAX_CHOICES:
        raise SpaceError(f"{path}: {len(vals):,} choices, over {MAX_CHOICES:,}")
    if len(set(vals)) != len(vals):
        raise SpaceError(f"{path}: duplicate choices in {list(vals)}")
    for v in vals:
        if v is None and allow_null:
            continue
        if minimum is not None:
            if isinstance(v, bool) or not isinstance(v, int):
                raise SpaceError(f"{path}: expected integers, got {v!r}")
            if v < minimum:
                raise SpaceError(f"{path}: {v} is below the minimum {minimum}")
    return vals


@dataclass(frozen=True)
class Verdict:
    """Truthy when the spec is in the space; ``reason`` says why not."""

    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


class _Miss(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _family_block(fname: str, keys: set[str], raw: Any, fam: tuple) -> dict:
    """The ``mlp:`` or ``conv:`` block of a space: ``{}`` when its family is not searched."""
    if fname not in fam:
        if raw is not None:
            raise SpaceError(f"{fname}: block given but family {list(fam)} does not include {fname!r}")
        return {}
    if not isinstance(raw, dict):
        raise SpaceError(f"{fname}: family {fname!r} needs a {fname}: block with keys {sorted(keys)}")
    check_block(fname, raw, keys, SpaceError)
    missing = sorted(keys - set(raw) - {"fc_depth", "fc_width"})
    if missing:
        raise SpaceError(f"{fname}.{missing[0]}: required")
    b = {}
    for k in sorted(raw):
        minimum = 0 if k in ("fc_depth",) or (fname == "mlp" and k == "depth") else 1
        b[k] = _choices(f"{fname}.{k}", raw[k], minimum=minimum)
    if fname == "conv":
        b.setdefault("fc_depth", (0,))
        if max(b["fc_depth"]) > 0 and "fc_width" not in b:
            raise SpaceError("conv.fc_width: required when conv.fc_depth allows FC layers")
        b.setdefault("fc_width", (1,))
    return b


def _bit_choices(d: dict) -> tuple[tuple, tuple]:
    """The space's weight and activation bit-width choices."""
    bits = _choices("weight_bits", d.get("weight_bits", [32]))
    for b in bits:
        if b not in ALLOWED_BITS:
            raise SpaceError(f"weight_bits: {b} is not allowed; use values from {list(ALLOWED_BITS)}")
    abits = _choices("act_bits", d.get("act_bits", [None]), allow_null=True)
    for b in abits:
        if b is not None and b not in ALLOWED_ACT_BITS:
            raise SpaceError(f"act_bits: {b} is not allowed; use null or values from {list(ALLOWED_ACT_BITS)}")
    return bits, abits


def _arithmetic_choices(d: dict, bits: tuple) -> tuple[str, ...]:
    arith = _choices("arithmetic", d.get("arithmetic", ["float"]), minimum=None)
    for a in arith:
        if a not in ARITHMETICS:
            raise SpaceError(f"arithmetic: {a!r} is not allowed; use values from {list(ARITHMETICS)}")
    if "int8" in arith and not any(b <= 8 for b in bits):
        raise SpaceError("arithmetic: int8 needs integer weights, but weight_bits has none of 8 bits or fewer; "
                         "add e.g. 4 or 8 to weight_bits")
    return arith


@dataclass
class SearchSpace:
    latent_dim: tuple[int, ...]
    family: tuple[str, ...] = ("mlp",)
    input_shape: tuple[int, ...] = (1, 28, 28)
    activation: tuple[str, ...] = ("relu",)
    mlp: dict[str, tuple] = field(default_factory=dict)
    conv: dict[str, tuple] = field(default_factory=dict)
    decoder: str = "mirror"
    weight_bits: tuple[int, ...] = (32,)
    bits_per_layer: bool = True
    act_bits: tuple[int | None, ...] = (None,)
    name: str = "space"
    likelihood: str = "bernoulli"
    quantizer: tuple[str, ...] = ("uniform",)
    rank: tuple[float | None, ...] = (None,)
    sparsity: tuple[float, ...] = (0.0,)
    pruning: tuple[str, ...] = ("unstructured",)
    arithmetic: tuple[str, ...] = ("float",)
    declared: frozenset = field(default=frozenset(), compare=False)  # data keys the YAML stated itself

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Any) -> "SearchSpace":
        if not isinstance(d, dict):
            raise SpaceError(f"search space: expected a mapping of keys, got {type(d).__name__}")
        unknown = sorted(set(d) - _TOP_KEYS)
        if unknown:
            raise SpaceError(f"{unknown[0]}: unknown search-space key; allowed keys are {sorted(_TOP_KEYS)}")
        if "latent_dim" not in d:
            raise SpaceError("latent_dim: required; e.g. latent_dim: [8, 16, 32]")
        fam = _choices("family", d.get("family", ["mlp"]), minimum=None)
        for f in fam:
            if f not in FAMILIES:
                raise SpaceError(f"family: {f!r} is not a family; use {list(FAMILIES)}")
        acts = _choices("activation", d.get("activation", ["relu"]), minimum=None)
        for a in acts:
            if a not in ACTIVATIONS:
                raise SpaceError(f"activation: {a!r} is not supported; use {list(ACTIVATIONS)}")
        blocks = {fname: _family_block(fname, keys, d.get(fname), fam)
                  for fname, keys in (("mlp", _MLP_KEYS), ("conv", _CONV_KEYS))}
        decoder = d.get("decoder", "mirror")
        if decoder not in ("mirror", "free"):
            raise SpaceError(f"decoder: must be 'mirror' or 'free', got {decoder!r}")
        bits, abits = _bit_choices(d)
        bpl = d.get("bits_per_layer", True)
        if not isinstance(bpl, bool):
            raise SpaceError(f"bits_per_layer: must be true or false, got {bpl!r}")
        shape = d.get("input_shape", [1, 28, 28])
        if not (isinstance(shape, list) and len(shape) in (1, 3)
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise SpaceError(f"input_shape: must be [channels, height, width] (images) or [features] (vectors) of "
                             f"positive integers, got {shape!r}")
        lik = d.get("likelihood", "bernoulli")
        if lik not in LIKELIHOODS:
            raise SpaceError(f"likelihood: {lik!r} is unknown; use one of {sorted(LIKELIHOODS)}")
        compression = {k: _compression_choices(k, d[k]) for k in COMPRESSION_KEYS if k in d}
        name = d.get("name", "space")
        if not isinstance(name, (str, int)) or isinstance(name, bool) or len(str(name)) > 200:
            raise SpaceError(f"name: expected a short string (at most 200 characters), got a {type(name).__name__}")
        space = cls(
            latent_dim=_choices("latent_dim", d["latent_dim"]),
            family=fam,
            input_shape=tuple(shape),
            activation=acts,
            mlp=blocks["mlp"],
            conv=blocks["conv"],
            decoder=decoder,
            weight_bits=bits,
            bits_per_layer=bpl,
            act_bits=abits,
            name=str(name),
            likelihood=lik,
            **compression,
            arithmetic=_arithmetic_choices(d, bits),
            declared=frozenset(k for k in ("input_shape", "likelihood") if k in d),
        )
        space._check_buildable()
        return space

    def bind_data(self, input_shape: tuple[int, ...], likelihood: str, what: str = "the data") -> "SearchSpace":
        """This space for data of ``input_shape`` under ``likelihood`` (a study's dataset decides both).

        A space that states ``input_shape`` or ``likelihood`` itself must agree with the data."""
        input_shape = tuple(input_shape)
        if "input_shape" in self.declared and tuple(self.input_shape) != input_shape:
            raise SpaceError(f"space.input_shape {list(self.input_shape)} does not match {what}'s shape "
                             f"{list(input_shape)}; remove input_shape from the space (it is taken from the data)")
        if "likelihood" in self.declared and self.likelihood != likelihood:
            raise SpaceError(f"space.likelihood {self.likelihood!r} differs from the dataset's {likelihood!r}; "
                             "remove likelihood from the space (the dataset block sets it)")
        if len(input_shape) != 3 and "conv" in self.family:
            raise SpaceError(f"family conv needs image data, but {what} are vectors of {input_shape[0]} features; "
                             "use family: [mlp] for vector data")
        import dataclasses

        bound = dataclasses.replace(self, input_shape=input_shape, likelihood=likelihood,
                                    declared=self.declared | {"input_shape", "likelihood"})
        bound._check_buildable()
        return bound

    @classmethod
    def from_yaml(cls, text: str) -> "SearchSpace":
        return cls.from_dict(safe_yaml(text, "search space"))

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        p = Path(path)
        return cls.from_yaml(read_text(p, f"search space file {str(p)!r} does not exist; check the path",
                                       lambda e: f"search space file {str(p)!r} is not readable text "
                                                 f"({type(e).__name__})", SpaceError))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "family": list(self.family),
            "input_shape": list(self.input_shape),
            **({"likelihood": self.likelihood} if self.likelihood != "bernoulli" else {}),
            "latent_dim": list(self.latent_dim),
            "activation": list(self.activation),
            "decoder": self.decoder,
            "weight_bits": list(self.weight_bits),
            "bits_per_layer": self.bits_per_layer,
            "act_bits": list(self.act_bits),
        }
        for f in ("mlp", "conv"):
            if getattr(self, f):
                d[f] = {k: list(v) for k, v in getattr(self, f).items()}
        for k in COMPRESSION_KEYS:  # only when searched: older spaces keep their dict (and fingerprints)
            if self.searches(k):
                d[k] = list(getattr(self, k))
        if self.arithmetic != ("float",):
            d["arithmetic"] = list(self.arithmetic)
        return d

    @property
    def int_bits(self) -> tuple[int, ...]:
        """The bit-widths an ``int8`` spec may use: ``weight_bits`` of 8 or fewer."""
        return tuple(b for b in self.weight_bits if b <= 8)

    def searches(self, key: str) -> bool:
        """Whether the space decides compression ``key`` (``quantizer``, ``rank``, ``sparsity``) per layer."""
        return tuple(getattr(self, key)) != _COMPRESSION_DEFAULT[key]

    @property
    def compression_keys(self) -> tuple[str, ...]:
        """The compression dimensions this space searches (empty for a bits-and-architecture space)."""
        return tuple(k for k in COMPRESSION_KEYS if self.searches(k))

    def _check_buildable(self) -> None:
        """Every conv geometry the space allows must fit the input (no layer shrinks it to nothing), and
        its largest spec must stay under :data:`MAX_PARAMS` (counted from the layer plan: no memory)."""
        self._check_size()
        if "conv" not in self.family:
            return
        if len(self.input_shape) != 3:
            raise SpaceError(f"family conv needs image data [channels, height, width], but input_shape is "
                             f"{list(self.input_shape)} (a vector); use family: [mlp] for vector data")
        c = self.conv
        if any(s > k for s in c["stride"] for k in c["kernel"]):
            raise SpaceError("conv.stride: every stride must be <= every kernel (a larger stride skips pixels)")
        h = min(self.input_shape[1:])
        for layer in range(max(c["depth"])):
            h = min(conv_out(h, k, s) for k in c["kernel"] for s in c["stride"])
            if h < 1:
                raise SpaceError(
                    f"conv: {layer + 1} conv layers can shrink a {list(self.input_shape[1:])} input to nothing; "
                    "lower conv.depth or the strides"
                )

    def _check_size(self) -> None:
        def largest(fam: str):
            def choose(name: str, choices: tuple) -> Any:
                if name == "family":
                    return fam
                nums = [c for c in choices if isinstance(c, int) and not isinstance(c, bool)]
                return max(nums) if nums else choices[0]
            return self.define(choose)

        for fam in self.family:
            if fam == "conv" and len(self.input_shape) != 3:
                continue  # refused by the caller with its own message
            try:
                spec = largest(fam)
            except SpecError:
                continue  # e.g. a conv geometry that does not fit: reported by the caller
            n = param_count(spec)
            if n > MAX_PARAMS:
                raise SpaceError(f"{fam}: the largest spec of this space has {n:,} parameters, over the "
                                 f"{MAX_PARAMS:,} vaenas builds; lower the widths, channels or latent_dim")

    # ------------------------------------------------------------------ the define-by-run program
    def define(self, choose: Choose) -> ArchSpec:
        """Build a spec by asking ``choose(name, choices)`` for each decision, in a fixed order."""
        family = choose("family", self.family)
        latent = choose("latent_dim", self.latent_dim)
        activation = choose("activation", self.activation)
        kw: dict[str, Any] = {}
        if family == "mlp":
            depth = choose("mlp.depth", self.mlp["depth"])
            enc = tuple(choose(f"mlp.enc.width{i}", self.mlp["width"]) for i in range(depth))
            dec = (
                tuple(choose(f"mlp.dec.width{i}", self.mlp["width"]) for i in range(depth))
                if self.decoder == "free"
                else None
            )
        else:
            c = self.conv
            depth = choose("conv.depth", c["depth"])
            kw["enc_channels"] = tuple(choose(f"conv.enc.channels{i}", c["channels"]) for i in range(depth))
            kw["kernels"] = tuple(choose(f"conv.enc.kernel{i}", c["kernel"]) for i in range(depth))
            kw["strides"] = tuple(choose(f"conv.enc.stride{i}", c["stride"]) for i in range(depth))
            fc_depth = choose("conv.fc_depth", c["fc_depth"])
            enc = tuple(choose(f"conv.enc.width{i}", c["fc_width"]) for i in range(fc_depth))
            dec = None
            if self.decoder == "free":
                dec = tuple(choose(f"conv.dec.width{i}", c["fc_width"]) for i in range(fc_depth))
                kw["dec_channels"] = tuple(choose(f"conv.dec.channels{i}", c["channels"]) for i in range(depth))
        arithmetic = choose("arithmetic", self.arithmetic) if self.arithmetic != ("float",) else "float"
        integer = arithmetic == "int8"
        act_bits = None if integer else choose("act_bits", self.act_bits)
        skeleton = ArchSpec(
            family=family, enc_hidden=enc, dec_hidden=dec, latent_dim=latent, activation=activation,
            weight_bits=(32,) * (len(enc) + (len(dec) if dec is not None else len(enc)) + 2 + 2 * len(kw.get("enc_channels", ()))),
            act_bits=act_bits, input_shape=self.input_shape, likelihood=self.likelihood, **kw,
        )
        names = skeleton.layer_names()
        key, choices = ("ibits", self.int_bits) if integer else ("bits", self.weight_bits)
        if self.bits_per_layer:
            bits = tuple(choose(f"{key}.{n}", choices) for n in names)
        else:
            bits = (choose(key, choices),) * len(names)
        return skeleton.replace(weight_bits=bits, arithmetic=arithmetic,
                                **self._define_compression(choose, skeleton, bits, integer))

    def _define_compression(self, choose: Choose, skeleton: ArchSpec, bits: tuple[int, ...],
                            integer: bool = False) -> dict[str, Any]:
        """The compression decisions (none unless the space searches them; an int8 spec is never k-means
        quantised nor structurally pruned, so neither is asked)."""
        keys = tuple(k for k in self.compression_keys if not (integer and k in ("quantizer", "pruning")))
        if not keys:
            return {}
        pruning = "unstructured"
        if "pruning" in keys and skeleton.act_bits is None:
            pruning = choose("pruning", self.pruning)
        structured = pruning == "structured"
        prunable = skeleton.prunable_units() if structured else {}
        quant, rank, sparsity = [], [], []
        for n, b in zip(skeleton.layer_names(), bits):
            quant.append(choose(f"quantizer.{n}", self.quantizer) if "quantizer" in keys and b < 32 else "uniform")
            rank.append(choose(f"rank.{n}", self.rank) if "rank" in keys and not structured else None)
            asked = "sparsity" in keys and rank[-1] is None and (not structured or n in prunable)
            sparsity.append(choose(f"sparsity.{n}", self.sparsity) if asked else 0.0)
        return {"quantizer": tuple(quant), "rank": tuple(rank), "sparsity": tuple(float(v) for v in sparsity),
                "pruning": pruning}

    def dimensions(self) -> dict[str, tuple]:
        """Every named categorical decision the space can ask, with its choices (for Optuna etc.)."""
        dims: dict[str, tuple] = {}
        walks = [(fam, a) for fam in self.family for a in self.arithmetic]
        for fam, arith in walks:  # the deepest program of each family and arithmetic (unstructured: every decision)

            def choose(name: str, choices: tuple, fam: str = fam, arith: str = arith) -> Any:
                dims.setdefault(name, tuple(choices))
                if name == "family":
                    return fam
                if name == "arithmetic":
                    return arith
                if name.startswith(("bits", "ibits")):  # a quantised width, so the quantizer decisions are asked
                    return min(choices)
                if name.startswith("rank.") or name == "act_bits":  # unfactorised / float activations if
                    return None if None in choices else choices[0]  # allowed: sparsity and pruning are asked
                if name == "pruning":  # unstructured if allowed, so the rank decisions are asked
                    return "unstructured" if "unstructured" in choices else choices[0]
                return max(choices) if name.endswith("depth") else choices[0]

            self.define(choose)
        return dims

    # ------------------------------------------------------------------ the operations
    def sample(self, rng: Rng = None) -> ArchSpec:
        r = _rng(rng)
        return self.define(lambda n, c: r.choice(c))

    def to_params(self, spec: ArchSpec) -> dict[str, Any]:
        """The decisions that produce ``spec`` (raises :class:`SpecError` if it is not in the space)."""
        verdict = self.contains(spec)
        if not verdict:
            raise SpecError(f"spec {spec.id} is not in search space {self.name!r}: {verdict.reason}")
        return self._params(spec)

    def _params(self, spec: ArchSpec) -> dict[str, Any]:
        p: dict[str, Any] = {"family": spec.family, "latent_dim": spec.latent_dim, "activation": spec.activation}
        if spec.family == "mlp":
            p["mlp.depth"] = len(spec.enc_hidden)
        else:
            p["conv.depth"] = len(spec.enc_channels)
            for i, (ch, k, s) in enumerate(zip(spec.enc_channels, spec.kernels, spec.strides)):
                p[f"conv.enc.channels{i}"], p[f"conv.enc.kernel{i}"], p[f"conv.enc.stride{i}"] = ch, k, s
            p["conv.fc_depth"] = len(spec.enc_hidden)
            if self.decoder == "free":
                for i, ch in enumerate(spec.decoder_channels):
                    p[f"conv.dec.channels{i}"] = ch
        for i, w in enumerate(spec.enc_hidden):
            p[f"{spec.family}.enc.width{i}"] = w
        if self.decoder == "free":
            for i, w in enumerate(spec.decoder_hidden):
                p[f"{spec.family}.dec.width{i}"] = w
        integer = spec.is_integer
        if self.arithmetic != ("float",):
            p["arithmetic"] = "int8" if integer else "float"
        if not integer:
            p["act_bits"] = spec.act_bits
        key = "ibits" if integer else "bits"
        if self.bits_per_layer:
            for n, b in zip(spec.layer_names(), spec.weight_bits):
                p[f"{key}.{n}"] = b
        else:
            p[key] = spec.weight_bits[0]
        keys = tuple(k for k in self.compression_keys if not (integer and k in ("quantizer", "pruning")))
        structured = spec.pruning == "structured"
        if "pruning" in keys and spec.act_bits is None:
            p["pruning"] = spec.pruning or "unstructured"
        prunable = spec.prunable_units() if structured else {}
        for i, (n, b) in enumerate(zip(spec.layer_names(), spec.weight_bits)):
            if "quantizer" in keys and b < 32:
                p[f"quantizer.{n}"] = spec.layer_quantizer(i)
            if "rank" in keys and not structured:
                p[f"rank.{n}"] = spec.layer_rank(i)
            if "sparsity" in keys and spec.layer_rank(i) is None and (not structured or n in prunable):
                p[f"sparsity.{n}"] = spec.layer_sparsity(i)
        return p

    def from_params(self, params: dict[str, Any]) -> ArchSpec:
        def choose(name: str, choices: tuple) -> Any:
            if name not in params:
                raise SpaceError(f"params: decision {name!r} is missing")
            if params[name] not in choices:
                raise SpaceError(f"params: {name}={params[name]!r} is not one of {list(choices)}")
            return params[name]

        return self.define(choose)

    def contains(self, spec: ArchSpec) -> Verdict:
        """Whether the program can produce ``spec``; if not, the first decision that cannot."""
        if tuple(spec.input_shape) != tuple(self.input_shape):
            return Verdict(False, f"input_shape {list(spec.input_shape)} != space's {list(self.input_shape)}")
        if spec.likelihood != self.likelihood:
            return Verdict(False, f"likelihood {spec.likelihood!r} != space's {self.likelihood!r}")
        if spec.family not in self.family:
            return Verdict(False, f"family {spec.family!r} not in {list(self.family)}")
        if self.decoder == "mirror" and (spec.dec_hidden not in (None, tuple(reversed(spec.enc_hidden)))
                                         or spec.dec_channels not in (None, tuple(reversed(spec.enc_channels)))):
            return Verdict(False, "the space mirrors the decoder but the spec's decoder differs")
        if self.decoder == "free" and spec.family == "mlp" and len(spec.decoder_hidden) != len(spec.enc_hidden):
            return Verdict(False, "decoder depth differs from encoder depth")
        if spec.family == "conv" and len(spec.decoder_hidden) != len(spec.enc_hidden):
            return Verdict(False, "decoder FC depth differs from encoder FC depth")
        if not self.bits_per_layer and len(set(spec.weight_bits)) != 1:
            return Verdict(False, "the space shares one bit-width across layers but the spec mixes them")
        params = self._params(spec)

        def choose(name: str, choices: tuple) -> Any:
            if params.get(name, object()) not in choices:
                raise _Miss(f"{name}={params.get(name)!r} not in {list(choices)}")
            return params[name]

        try:
            rebuilt = self.define(choose)
        except _Miss as m:
            return Verdict(False, m.reason)
        if rebuilt != spec:
            return Verdict(False, "the spec differs from what its decisions build")
        return Verdict(True)

    def mutate(self, spec: ArchSpec, rng: Rng = None) -> ArchSpec:
        """Change one decision (with more than one choice) to another value; new layers are sampled."""
        r = _rng(rng)
        params = self.to_params(spec)
        dims = self.dimensions()
        mutable = [n for n in params if len(dims[n]) > 1]
        if not mutable:
            return spec
        target = r.choice(mutable)
        params[target] = r.choice([c for c in dims[target] if c != params[target]])
        return self.define(lambda n, c: params[n] if n in params and params[n] in c else r.choice(c))

    def crossover(self, a: ArchSpec, b: ArchSpec, rng: Rng = None) -> ArchSpec:
        """Uniform crossover of the two parents' decisions; a decision only one parent made comes from it."""
        r = _rng(rng)
        pa, pb = self.to_params(a), self.to_params(b)

        def choose(name: str, choices: tuple) -> Any:
            have = [p[name] for p in (pa, pb) if name in p and p[name] in choices]
            return r.choice(have) if have else r.choice(choices)

        return self.define(choose)

    def encode(self, spec: ArchSpec) -> list[float]:
        """A fixed-length numeric vector: per dimension, the choice index scaled to [0, 1] (-1 if inactive)."""
        params = self.to_params(spec)
        out = []
        for name, choices in self.dimensions().items():
            if name not in params:
                out.append(-1.0)
            else:
                out.append(choices.index(params[name]) / max(1, len(choices) - 1))
        return out

    def size(self) -> int:
        """The number of distinct specs in the space (exact)."""
        total = 0
        keys = self.compression_keys
        n_float_act = 1 if None in self.act_bits else 0
        base_float = len(self.latent_dim) * len(self.activation) * n_float_act
        base_quant = len(self.latent_dim) * len(self.activation) * (len(self.act_bits) - n_float_act)
        q = lambda b: len(self.quantizer) if "quantizer" in keys and b < 32 else 1  # noqa: E731
        n_s = len(self.sparsity) if "sparsity" in keys else 1
        r = (len(self.rank) - (None in self.rank) + (None in self.rank) * n_s) if "rank" in keys else n_s
        kinds = self.pruning if "pruning" in keys else ("unstructured",)

        def combos(layers: int, per, per_fixed, n_fixed: int) -> int:
            """Assignments of ``layers`` layers: ``per(b)`` choices each, ``per_fixed(b)`` for ``n_fixed`` of them."""
            if self.bits_per_layer:
                return sum(per(b) for b in self.weight_bits) ** (layers - n_fixed) * \
                    sum(per_fixed(b) for b in self.weight_bits) ** n_fixed
            return sum(per(b) ** (layers - n_fixed) * per_fixed(b) ** n_fixed for b in self.weight_bits)

        base_int = len(self.latent_dim) * len(self.activation) if "int8" in self.arithmetic else 0
        if "float" not in self.arithmetic:
            base_float = base_quant = 0

        def layer_choices(layers: int) -> int:
            unstructured = combos(layers, lambda b: q(b) * r, q, 0)
            # structured: no rank; sparsity only on the hidden-unit layers (all but the head and the output layer)
            structured = combos(layers, lambda b: q(b) * n_s, q, 2)
            per_float = sum(unstructured if k == "unstructured" else structured for k in kinds)
            return base_float * per_float + base_quant * unstructured + base_int * integer(layers)

        def integer(layers: int) -> int:  # int8: bits <= 8, uniform, unstructured
            if self.bits_per_layer:
                return (len(self.int_bits) * r) ** layers
            return len(self.int_bits) * r ** layers

        for fam in self.family:
            if fam == "mlp":
                nw = len(self.mlp["width"])
                for d in self.mlp["depth"]:
                    widths = nw ** (2 * d if self.decoder == "free" else d)
                    layers = 2 * d + 2
                    total += widths * layer_choices(layers)
            else:
                c = self.conv
                per_conv = len(c["channels"]) * len(c["kernel"]) * len(c["stride"])
                if self.decoder == "free":
                    per_conv *= len(c["channels"])
                for d in c["depth"]:
                    for f in c["fc_depth"]:
                        widths = len(c["fc_width"]) ** (2 * f if self.decoder == "free" else f)
                        layers = 2 * d + 2 * f + 2
                        total += per_conv**d * widths * layer_choices(layers)
        return total

    def log10_size(self) -> float:
        return math.log10(self.size())
