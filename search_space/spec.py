"""The frozen architecture spec: one VAE described completely, with an exact JSON round trip.

Layout of the weight layers (the order of ``weight_bits``), given by :meth:`ArchSpec.layer_names`:

* ``mlp``:  ``enc.fc0 .. enc.fc{n-1}``, ``head`` (-> mu, logvar), ``dec.fc0 .. dec.fc{m-1}``, ``dec.out``
* ``conv``: ``enc.conv0 ..``, ``enc.fc0 ..``, ``head``, ``dec.fc0 ..``, ``dec.proj`` (-> feature map),
  ``dec.tconv0 ..`` (the last one outputs the image logits)

The conv decoder mirrors the encoder's geometry (kernel, stride, spatial sizes) so the output
matches the input shape exactly; its channels (``dec_channels``) and its FC widths
(``dec_hidden``) may differ from the encoder's. ``None`` means "mirror the encoder".

``input_shape`` is ``(channels, height, width)`` for images or ``(features,)`` for vectors (MLP
family only). ``likelihood`` names the decoder's distribution (``search_space/likelihood.py``): the
output layer emits ``likelihood.n_params`` numbers per input dimension (``output_shape``).

Compression beyond bit-widths (``search_space/compression.py``): optional per-layer tuples
``sparsity`` (pruned fraction, 0 = dense), ``rank`` (fraction of full rank, null = unfactorised)
and ``quantizer`` (``uniform`` | ``kmeans``), each ``None`` when no layer uses it.

JSON versions: version 2 added ``likelihood`` and vector input shapes; version 3 the compression
tuples; version 4 ``arithmetic`` (``int8``: integer inference, ``search_space/integer.py``). A spec
is written at the lowest version that holds it: a Bernoulli image VAE without them is still
written as version 1, byte for byte as before, so its ``id`` - and every id recorded in a study, a
benchmark or an export - is unchanged; older files load with the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .activations import ACTIVATIONS as ACTIVATION_REGISTRY
from .compression import MAX_SPARSITY, PRUNINGS, QUANTIZERS, kept_count
from .errors import SpecError
from .likelihood import LIKELIHOODS, get_likelihood
from .plan import prunable_units, weighted_mean_bits

SPEC_TYPE = "vaenas.ArchSpec"
SPEC_VERSION = 4  # written only when a version-4 field is used (see the module docstring)
READ_VERSIONS = (1, 2, 3, 4)
ARITHMETICS = ("float", "int8")  # "int8": integer inference (search_space/integer.py)
COMPRESSION_FIELDS = ("sparsity", "rank", "quantizer", "pruning")
FAMILIES = ("mlp", "conv")
ACTIVATIONS = tuple(ACTIVATION_REGISTRY)  # the registered names (search_space/activations.py)
ALLOWED_BITS = (2, 3, 4, 5, 6, 8, 32)
ALLOWED_ACT_BITS = (2, 3, 4, 5, 6, 8)


def _int_tuple(name: str, value: Any, *, allow_none: bool = False) -> tuple[int, ...] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise SpecError(f"{name}: expected a list of integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{name}: expected integers, got {v!r} in {list(value)!r}")
        out.append(int(v))
    return tuple(out)


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Spatial size after a Conv2d with padding ``(kernel - 1) // 2`` (the builder's choice)."""
    return (size + 2 * ((kernel - 1) // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class ArchSpec:
    """One VAE, completely. Immutable and hashable; build it with :func:`search_space.build_vae`."""

    family: str
    enc_hidden: tuple[int, ...]
    latent_dim: int
    weight_bits: tuple[int, ...]
    activation: str = "relu"
    dec_hidden: tuple[int, ...] | None = None
    enc_channels: tuple[int, ...] = ()
    kernels: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dec_channels: tuple[int, ...] | None = None
    act_bits: int | None = None
    input_shape: tuple[int, ...] = (1, 28, 28)
    likelihood: str = "bernoulli"
    sparsity: tuple[float, ...] | None = None
    rank: tuple[float | None, ...] | None = None
    quantizer: tuple[str, ...] | None = None
    pruning: str | None = None  # "structured": sparsity removes whole units/channels; None = unstructured
    arithmetic: str | None = None  # "int8": integer inference (search_space/integer.py); None = float

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        if self.family not in FAMILIES:
            raise SpecError(f"family: must be one of {list(FAMILIES)}, got {self.family!r}")
        for name in ("enc_hidden", "weight_bits", "enc_channels", "kernels", "strides", "input_shape"):
            set_(name, _int_tuple(name, getattr(self, name)))
        for name in ("dec_hidden", "dec_channels"):
            set_(name, _int_tuple(name, getattr(self, name), allow_none=True))
        if isinstance(self.latent_dim, bool) or not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise SpecError(f"latent_dim: must be a positive integer, got {self.latent_dim!r}")
        if self.activation not in ACTIVATIONS:
            raise SpecError(f"activation: must be one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if len(self.input_shape) not in (1, 3) or min(self.input_shape) < 1:
            raise SpecError(f"input_shape: must be (channels, height, width) for images or (features,) for vectors, "
                            f"all > 0, got {self.input_shape!r}")
        if self.likelihood not in LIKELIHOODS:
            raise SpecError(f"likelihood: {self.likelihood!r} is unknown; use one of {sorted(LIKELIHOODS)}")
        # canonical form: an explicit mirror is stored as None, so equal models have equal ids
        if self.dec_hidden == tuple(reversed(self.enc_hidden)):
            set_("dec_hidden", None)
        if self.dec_channels is not None and self.dec_channels == tuple(reversed(self.enc_channels)):
            set_("dec_channels", None)
        for name in ("enc_hidden", "dec_hidden", "enc_channels", "dec_channels"):
            vals = getattr(self, name)
            if vals and min(vals) < 1:
                raise SpecError(f"{name}: every width/channel count must be >= 1, got {list(vals)}")
        if self.family == "mlp":
            self._check_mlp()
        else:
            self._check_conv()
        n_layers = len(self.layer_names())
        if len(self.weight_bits) != n_layers:
            raise SpecError(
                f"weight_bits: need one entry per weight layer ({n_layers}: {', '.join(self.layer_names())}), "
                f"got {len(self.weight_bits)}"
            )
        bad = [b for b in self.weight_bits if b not in ALLOWED_BITS]
        if bad:
            raise SpecError(f"weight_bits: {bad[0]} is not allowed; use one of {list(ALLOWED_BITS)} (32 = float)")
        if self.act_bits is not None and (isinstance(self.act_bits, bool) or self.act_bits not in ALLOWED_ACT_BITS):
            raise SpecError(f"act_bits: must be null (float) or one of {list(ALLOWED_ACT_BITS)}, got {self.act_bits!r}")
        self._check_compression(n_layers)
        self._check_arithmetic()

    def _check_arithmetic(self) -> None:
        """``arithmetic: int8`` needs every layer integer: uniform weights of 2-8 bits, no ``act_bits`` (the
        integer mode quantises activations itself), no structured pruning."""
        if self.arithmetic == "float":
            object.__setattr__(self, "arithmetic", None)  # canonical: the default is written as absent
        if self.arithmetic is None:
            return
        if self.arithmetic not in ARITHMETICS:
            raise SpecError(f"arithmetic: {self.arithmetic!r} is not allowed; use one of {list(ARITHMETICS)}")
        names = self.layer_names()
        for name, b, q in zip(names, self.weight_bits, self.quantizer or ("uniform",) * len(names)):
            if b > 8:
                raise SpecError(f"arithmetic int8: layer {name} has {b}-bit (float) weights, which cannot run in "
                                "integers; give it 2-8 bits or use arithmetic float")
            if q != "uniform":
                raise SpecError(f"arithmetic int8: layer {name} uses a k-means codebook, which keeps the float path; "
                                "use quantizer uniform for it or arithmetic float")
        if self.act_bits is not None:
            raise SpecError("arithmetic int8: act_bits must be null (the integer mode quantises every activation to "
                            "int8 with learned static scales)")
        if self.pruning == "structured":
            raise SpecError("arithmetic int8: structured pruning is not supported in the integer mode yet; "
                            "use unstructured pruning or arithmetic float")

    @property
    def is_integer(self) -> bool:
        """Integer inference (``arithmetic: int8``)."""
        return self.arithmetic == "int8"

    def _check_mlp(self) -> None:
        for name in ("enc_channels", "kernels", "strides"):
            if getattr(self, name):
                raise SpecError(f"{name}: must be empty for family 'mlp', got {list(getattr(self, name))}")
        if self.dec_channels is not None:
            raise SpecError("dec_channels: must be null for family 'mlp'")

    def _check_conv(self) -> None:
        if len(self.input_shape) != 3:
            raise SpecError(f"family 'conv' needs image data (channels, height, width), but the input is a vector "
                            f"of {self.input_shape[0]} features; use family 'mlp' for vector data")
        n = len(self.enc_channels)
        if n == 0:
            raise SpecError("enc_channels: family 'conv' needs at least one conv layer")
        if len(self.kernels) != n or len(self.strides) != n:
            raise SpecError(
                f"kernels/strides: need one per conv layer ({n}), got {len(self.kernels)} kernels "
                f"and {len(self.strides)} strides"
            )
        if min(self.kernels) < 1 or min(self.strides) < 1:
            raise SpecError("kernels/strides: must be >= 1")
        if any(s > k for k, s in zip(self.kernels, self.strides)):
            raise SpecError(f"strides: a stride larger than its kernel skips pixels ({self.kernels=}, {self.strides=})")
        if self.dec_channels is not None and len(self.dec_channels) != n:
            raise SpecError(f"dec_channels: need one per conv layer ({n}), got {list(self.dec_channels)}")
        h, w = self.input_shape[1:]
        for k, s in zip(self.kernels, self.strides):
            h, w = conv_out(h, k, s), conv_out(w, k, s)
            if h < 1 or w < 1:
                raise SpecError(f"kernels/strides: the conv stack shrinks a {self.input_shape[1:]} input to nothing")

    def _check_compression(self, n_layers: int) -> None:
        """Validate and canonicalise ``sparsity``, ``rank`` and ``quantizer`` (all-default -> None)."""
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        names = self.layer_names()
        for field_, default in (("sparsity", 0.0), ("rank", None), ("quantizer", "uniform")):
            vals = getattr(self, field_)
            if vals is None:
                continue
            if isinstance(vals, (str, bytes)) or not hasattr(vals, "__iter__"):
                raise SpecError(f"{field_}: expected a list with one entry per weight layer, got {vals!r}")
            vals = tuple(vals)
            if len(vals) != n_layers:
                raise SpecError(f"{field_}: need one entry per weight layer ({n_layers}: {', '.join(names)}), "
                                f"got {len(vals)}")
            for v in vals:
                if field_ == "quantizer":
                    ok = v in QUANTIZERS
                    want = f"one of {list(QUANTIZERS)}"
                else:
                    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    if field_ == "sparsity":
                        ok, want = ok and 0 <= v <= MAX_SPARSITY, f"a fraction in [0, {MAX_SPARSITY}]"
                    else:
                        ok, want = (v is None) or (ok and 0 < v <= 1), "null or a fraction in (0, 1]"
                if not ok:
                    raise SpecError(f"{field_}: {v!r} is not allowed; use {want} per layer")
            if field_ == "sparsity":
                vals = tuple(float(v) for v in vals)
            elif field_ == "rank":
                vals = tuple(None if v is None else float(v) for v in vals)
            set_(field_, None if all(v == default for v in vals) else vals)
        if self.pruning not in PRUNINGS:
            raise SpecError(f"pruning: {self.pruning!r} is not allowed; use one of {list(PRUNINGS)}")
        if self.pruning == "unstructured":
            set_("pruning", None)  # canonical: the default is written as absent
        if self.pruning == "structured":
            self._check_structured(names)
        for i, name in enumerate(names):
            if self.sparsity and self.rank and self.sparsity[i] > 0 and self.rank[i] is not None:
                raise SpecError(f"sparsity/rank: layer {name} is both pruned and factorised; choose one per layer")
            if self.quantizer and self.quantizer[i] == "kmeans" and self.weight_bits[i] >= 32:
                raise SpecError(f"quantizer: layer {name} is 32-bit (float); k-means needs weight_bits below 32")

    def _check_structured(self, names: list[str]) -> None:
        if self.rank is not None:
            raise SpecError("pruning: structured pruning changes the next layer's input, so it cannot be combined with "
                            "rank (factorised layers); use unstructured pruning or drop rank")
        if self.act_bits is not None:
            raise SpecError("pruning: structured pruning with act_bits is not supported (the per-example activation "
                            "range would include the removed units); use act_bits null or unstructured pruning")
        units = self.prunable_units()
        for name, s in zip(names, self.sparsity or ()):
            if s > 0 and name not in units:
                raise SpecError(f"sparsity: layer {name}'s outputs are not hidden units (it feeds the latent or the "
                                f"output), so structured pruning cannot remove them; set its sparsity to 0")

    def prunable_units(self) -> dict[str, int]:
        """Layers whose outputs structured pruning may remove, with their unit (feature or channel) counts
        (:func:`search_space.plan.prunable_units`)."""
        return prunable_units(self)

    def deployed(self) -> "ArchSpec":
        """What ships: for structured pruning the dense spec with the removed units gone (narrower widths and
        channels, same bits and quantizers); every other spec is itself."""
        return self if self.pruning != "structured" else self._deployed

    @functools.cached_property
    def _deployed(self) -> "ArchSpec":
        sp = dict(zip(self.layer_names(), self.sparsity or (0.0,) * len(self.weight_bits)))
        keep = lambda name, n: kept_count(n, sp.get(name, 0.0))  # noqa: E731
        kw: dict[str, Any] = dict(
            enc_hidden=tuple(keep(f"enc.fc{i}", w) for i, w in enumerate(self.enc_hidden)),
            dec_hidden=tuple(keep(f"dec.fc{i}", w) for i, w in enumerate(self.decoder_hidden)),
            sparsity=None, pruning=None)
        if self.family == "conv":
            dch = self.decoder_channels
            kw["enc_channels"] = tuple(keep(f"enc.conv{i}", c) for i, c in enumerate(self.enc_channels))
            kw["dec_channels"] = (keep("dec.proj", dch[0]),) + tuple(
                keep(f"dec.tconv{i}", dch[i + 1]) for i in range(len(dch) - 1))
        return self.replace(**kw)

    def layer_sparsity(self, i: int) -> float:
        return self.sparsity[i] if self.sparsity else 0.0

    def layer_rank(self, i: int) -> float | None:
        return self.rank[i] if self.rank else None

    def layer_quantizer(self, i: int) -> str:
        return self.quantizer[i] if self.quantizer else "uniform"

    @property
    def uses_compression(self) -> bool:
        """True when any layer is pruned, factorised or k-means quantised, or pruning is structured (a
        version-3 spec)."""
        return any(getattr(self, f) is not None for f in COMPRESSION_FIELDS)

    # ----------------------------------------------------------------- derived structure
    @property
    def decoder_hidden(self) -> tuple[int, ...]:
        return tuple(reversed(self.enc_hidden)) if self.dec_hidden is None else self.dec_hidden

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def n_inputs(self) -> int:
        """Data dimensions per example (pixels x channels, or features)."""
        return math.prod(self.input_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The decoder output's shape per example: the likelihood's parameters stacked on axis 0."""
        k = get_likelihood(self.likelihood).n_params
        return (k * self.input_shape[0], *self.input_shape[1:])

    @property
    def decoder_channels(self) -> tuple[int, ...]:
        return tuple(reversed(self.enc_channels)) if self.dec_channels is None else self.dec_channels

    def feature_shapes(self) -> list[tuple[int, int, int]]:
        """Encoder feature-map shapes, input first (conv family); the decoder walks them backwards."""
        shapes = [tuple(self.input_shape)]
        if self.family != "conv":
            return shapes
        c, h, w = self.input_shape
        for ch, k, s in zip(self.enc_channels, self.kernels, self.strides):
            h, w = conv_out(h, k, s), conv_out(w, k, s)
            shapes.append((ch, h, w))
        return shapes

    def layer_names(self) -> list[str]:
        names = [f"enc.conv{i}" for i in range(len(self.enc_channels))]
        names += [f"enc.fc{i}" for i in range(len(self.enc_hidden))]
        names.append("head")
        names += [f"dec.fc{i}" for i in range(len(self.decoder_hidden))]
        if self.family == "mlp":
            names.append("dec.out")
        else:
            names.append("dec.proj")
            names += [f"dec.tconv{i}" for i in range(len(self.enc_channels))]
        return names

    @property
    def mean_bits(self) -> float:
        """Mean weight bit-width weighted by each layer's weight count (packed weight bits / weights):
        a model whose weights are 97 % 2-bit reads ~2.6 bits, not its layers' plain average."""
        return weighted_mean_bits(self)

    @property
    def layer_mean_bits(self) -> float:
        """The layers' plain (unweighted) average bit-width."""
        return sum(self.weight_bits) / len(self.weight_bits)

    # ----------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        v2 = self.likelihood != "bernoulli" or not self.is_image
        version = 4 if self.arithmetic else 3 if self.uses_compression else 2 if v2 else 1
        d: dict[str, Any] = {"type": SPEC_TYPE, "version": version}
        for f in dataclasses.fields(self):
            if f.name == "likelihood" and version == 1:
                continue  # version 1 form: unchanged bytes, unchanged id
            if f.name in COMPRESSION_FIELDS + ("arithmetic",) and getattr(self, f.name) is None:
                continue  # absent = unused: older specs keep their bytes and ids
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "ArchSpec":
        if not isinstance(d, dict):
            raise SpecError(f"arch spec: expected a JSON object, got {type(d).__name__}")
        if d.get("type") != SPEC_TYPE:
            raise SpecError(f"type: expected {SPEC_TYPE!r}, got {d.get('type')!r} (not a vaenas arch spec)")
        if d.get("version") not in READ_VERSIONS:
            raise SpecError(f"version: this vaenas reads versions {list(READ_VERSIONS)}, got {d.get('version')!r}; "
                            "upgrade vaenas to read it")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"type", "version"})
        if unknown:
            raise SpecError(f"{unknown[0]}: unknown field; known fields are {sorted(names)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise SpecError(f"{missing[0]}: required field is missing")
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=(",", ":") if indent is None else None)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"arch spec: not valid JSON ({e})") from None
        return cls.from_dict(d)

    @functools.cached_property
    def id(self) -> str:
        """Stable short id: the first 12 hex digits of the SHA-256 of the canonical JSON (computed once: the
        spec is frozen)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def replace(self, **changes: Any) -> "ArchSpec":
        return dataclasses.replace(self, **changes)

    @classmethod
    def mlp(cls, hidden: tuple[int, ...] | list[int], latent_dim: int, bits: int = 32, **kw: Any) -> "ArchSpec":
        """Convenience: a mirrored MLP VAE with every weight layer at ``bits``."""
        n = 2 * len(hidden) + 2 if kw.get("dec_hidden") is None else len(hidden) + len(kw["dec_hidden"]) + 2
        return cls(family="mlp", enc_hidden=tuple(hidden), latent_dim=latent_dim, weight_bits=(bits,) * n, **kw)
