"""A weight-sharing VAE supernet over a search space's MLP specs (stateless: the spec is an argument).

Every spec of the space runs on slices of one set of weights:

* elastic depth: an encoder of depth ``d`` uses the first ``d`` shared encoder layers; hidden
  decoder layers are shared counting from the *output* end (the layer feeding the output layer
  is always shared layer 0), so a shallow decoder reuses the layers nearest the pixels. The two
  layers at the latent boundary - the head (last hidden -> mu, logvar) and the decoder's input
  layer (z -> first hidden) - are one per depth: their inputs mean different things at different
  depths, and sharing them across depths made shallow specs look far worse than they train
  (measured: ``benchmarks/supernet_fidelity.py``, README);
* elastic width and latent size: leading slices - output rows ``[:w]``, input columns ``[:w_in]``;
  the head's mu rows are ``[0:L]`` and its logvar rows ``[Lmax:Lmax+L]``;
* bit-width: the *sliced* weight is fake-quantised at the spec's bits with a learned
  per-output-channel step size (LSQ, as the standalone layers) - one step-size vector per shared
  layer and bit-width, sliced like the rows - so one float weight serves every bit-width;
  ``learned_scales=False`` uses per-slice max-abs scales instead (straight-through).

``forward(x, spec, eps)`` runs one spec; ``extract(spec)`` returns a standalone
:class:`~search_space.builder.VAE` carrying the inherited weights (its quantised layers' step
sizes calibrated to the same max-abs scales), whose forward equals ``forward(x, spec)``
exactly. There is no "active subnet" state. Conv spaces are not supported yet.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .builder import VAE, build_vae
from .activations import get_activation
from .errors import SpaceError
from .likelihood import get_likelihood
from .plan import Step, layer_plan
from .quant import fake_quant_act, fake_quant_weight, lsq_fake_quant_weight, qmax_for
from .space import SearchSpace
from .spec import ArchSpec, conv_out



def _apply(step: Step, h: torch.Tensor, sliced: tuple, act_bits: int | None) -> torch.Tensor:
    """One plan step on sliced shared weights ``(name, w, b, bits, scale)``, fake-quantised as in QAT."""
    _, w, b, bits, scale = sliced
    ax = step.ch_axis
    wq = lsq_fake_quant_weight(w, scale, bits, ax) if scale is not None else fake_quant_weight(w, bits, ax)
    h = fake_quant_act(h, act_bits)
    if step.kind == "linear":
        return F.linear(h, wq, b)
    if step.kind == "conv":
        return F.conv2d(h, wq, b, stride=step.stride, padding=step.padding)
    return F.conv_transpose2d(h, wq, b, stride=step.stride, padding=step.padding, output_padding=step.output_padding)


def run_plan(spec: ArchSpec, sliced: list, x: torch.Tensor, eps: torch.Tensor | None = None):
    """``(out, mu, logvar)`` of ``spec``'s layer plan on ``sliced`` weights (one entry per layer, in plan
    order): the computation of :class:`~search_space.builder.VAE`, functionally."""
    act, plan, weights = get_activation(spec.activation).fn, layer_plan(spec), iter(sliced)

    def chain(layers, h):
        for layer in layers:
            if layer.op.kind == "linear":
                h = h.flatten(1)
            h = _apply(layer.op, h, next(weights), spec.act_bits)
            if layer.op.reshapes_output:
                h = h.view(h.shape[0], *layer.op.out_shape)
            h = act(h) if layer.op.act_after else h
        return h

    mu, logvar = chain(plan.encoder, x.reshape(x.shape[0], *spec.input_shape)).chunk(2, dim=1)
    if eps is None:
        eps = torch.randn_like(mu)
    return chain(plan.decoder, mu + torch.exp(0.5 * logvar) * eps), mu, logvar


def structure_groups(space: SearchSpace) -> list:
    """The structural groups of the space's specs (see :func:`group_of`), in a fixed order."""
    if tuple(space.family) == ("mlp",):
        return sorted(space.mlp["depth"])
    if tuple(space.family) == ("conv",):
        return [f"conv{n}.fc{f}" for n in sorted(space.conv["depth"]) for f in sorted(space.conv["fc_depth"])]
    raise SpaceError("supernet: the space must have one family (family: [mlp] or family: [conv]), "
                     f"got {list(space.family)}")


def group_of(spec: ArchSpec):
    """A spec's structural group: its depth (MLP, an int) or ``"conv{n}.fc{f}"`` (conv and FC depths).

    Specs of one group run the same layers of a supernet (only widths, kernels and bits differ);
    calibration and the sandwich rule work per group."""
    if spec.family == "mlp":
        return len(spec.enc_hidden)
    return f"conv{len(spec.enc_channels)}.fc{len(spec.enc_hidden)}"


def extreme_spec(space: SearchSpace, which: str, depth=None) -> ArchSpec:
    """The largest (``max``) or smallest (``min``) spec of a one-family space: every numeric decision
    at its max/min - strides at their min for ``max`` (larger feature maps) and max for ``min`` -
    and the depth too unless ``depth`` fixes the group (:func:`group_of`)."""
    pick = max if which == "max" else min
    structure_groups(space)  # refuses mixed-family spaces
    family = space.family[0]
    fixed: dict[str, int] = {}
    if depth is not None:
        if family == "mlp":
            fixed["mlp.depth"] = depth
        else:
            n, f = str(depth).removeprefix("conv").split(".fc")
            fixed["conv.depth"], fixed["conv.fc_depth"] = int(n), int(f)

    def choose(name: str, choices: tuple):
        if name == "family":
            return family
        if name in fixed:
            return fixed[name]
        if name in ("activation",):
            return choices[0]
        if name == "act_bits":
            return None if None in choices else pick(choices)
        if ".stride" in name:
            return (min if which == "max" else max)(choices)
        return pick(choices)

    return space.define(choose)


class _SharedWeights(nn.Module):
    """What every supernet shares: the spec check, learned step sizes per layer x bit-width, the head's
    (mu, logvar) row slicing, and :meth:`extract` / :meth:`load_standalone` over :meth:`sliced`."""

    family = ""

    def __init__(self, space: SearchSpace, learned_scales: bool):
        super().__init__()
        structure_groups(space)
        if tuple(space.family) != (self.family,):
            raise SpaceError(f"supernet: {type(self).__name__} needs family: [{self.family}], got {list(space.family)}")
        self.space = space
        self.max_latent = max(space.latent_dim)
        self.learned_scales = learned_scales
        self.likelihood = get_likelihood(space.likelihood)  # the decoder's distribution, as in build_vae
        self._keys: dict[int, str] = {}
        self.scales = nn.ParameterDict()

    def _register_scales(self, named: list[tuple[str, nn.Module]], ch_axis: dict[str, int] | None = None) -> None:
        for key, m in named:
            self._keys[id(m)] = key
            if self.learned_scales:
                axis = (ch_axis or {}).get(key, 0)
                w = m.weight.detach().transpose(0, axis).flatten(1)
                for b in self.space.weight_bits:
                    if b < 32:  # LSQ's initial step: 2 mean|w| / sqrt(Q) per output channel
                        init = 2 * w.abs().mean(1) / math.sqrt(qmax_for(b))
                        self.scales[f"{key}_b{b}"] = nn.Parameter(init.clamp_min(1e-8))

    def _check(self, spec: ArchSpec) -> None:
        v = self.space.contains(spec)
        if not v:
            raise SpaceError(f"supernet: spec {spec.id} is not in its space: {v.reason}")

    def _scale(self, m: nn.Module, bits: int) -> torch.Tensor | None:
        if bits >= 32 or not self.learned_scales:
            return None
        return self.scales[f"{self._keys[id(m)]}_b{bits}"]

    def _head_slice(self, head: nn.Linear, spec: ArchSpec, width: int, bits: int):
        L, Lm = spec.latent_dim, self.max_latent
        hw = torch.cat([head.weight[:L, :width], head.weight[Lm:Lm + L, :width]])
        hb = torch.cat([head.bias[:L], head.bias[Lm:Lm + L]])
        hs = self._scale(head, bits)
        return ("head", hw, hb, bits, None if hs is None else torch.cat([hs[:L], hs[Lm:Lm + L]]))

    def head_for(self, spec: ArchSpec) -> nn.Linear:
        raise NotImplementedError

    def shared_layers(self, spec: ArchSpec) -> dict[str, nn.Module]:
        """The shared module each weight layer of ``spec`` takes its slice of (the family's sharing rules)."""
        raise NotImplementedError

    def sliced(self, spec: ArchSpec) -> list[tuple[str, torch.Tensor, torch.Tensor, int, torch.Tensor | None]]:
        """``(layer name, weight slice, bias slice, bits, step-size slice or None)`` of every layer of ``spec``'s
        plan, in order (None: 32-bit, or max-abs scales without ``learned_scales``): leading output and input
        channels of the shared weight, the centre taps of a larger kernel; the head's mu and logvar rows."""
        shared = self.shared_layers(spec)
        out = []
        for layer in layer_plan(spec).layers:
            op, m = layer.op, shared[layer.name]
            if op.name == "head":
                out.append(self._head_slice(m, spec, op.in_size, op.bits))
                continue
            s = self._scale(m, op.bits)
            rows = op.out_channels
            out.append((op.name, self._weight_slice(m, op), m.bias[:rows], op.bits, None if s is None else s[:rows]))
        return out

    def _weight_slice(self, m: nn.Module, op: Step) -> torch.Tensor:
        if op.kind == "linear":
            return m.weight[:op.out_size, :op.in_size]
        t = _crop(m.weight.shape[-1], op.kernel)
        if op.kind == "conv":
            return m.weight[:op.out_channels, :op.in_channels, t, t]
        return m.weight[:op.in_channels, :op.out_channels, t, t]  # ConvTranspose2d: (in, out, k, k)

    @torch.no_grad()
    def extract(self, spec: ArchSpec) -> VAE:
        """A standalone model with the inherited weights; same outputs as ``forward(x, spec)``."""
        self._check(spec)
        model = build_vae(spec).to(next(self.parameters()).device)
        layers = model.weight_layers()
        for name, w, b, _bits, scale in self.sliced(spec):
            m = layers[name]
            m.weight.copy_(w)
            m.bias.copy_(b)
            if m.bits < 32:
                if scale is None:
                    m.calibrate()  # the max-abs step size the supernet quantises with
                else:
                    m.weight_scale.copy_(scale)  # the learned step size of this layer and bit-width
                    m._scale_ready = True
        return model

    @torch.no_grad()
    def load_standalone(self, model: VAE) -> None:
        """Copy a standalone model's weights into the slices its spec uses (inverse of :meth:`extract`)."""
        spec = model.spec
        self._check(spec)
        layers = model.weight_layers()
        for name, w, b, bits, scale in self.sliced(spec):
            src = layers[name]
            learned = scale is not None and bool((src.weight_scale != 0).all())
            if name == "head":
                L, Lm = spec.latent_dim, self.max_latent
                head = self.head_for(spec)
                head.weight[:L, : w.shape[1]] = src.weight[:L]
                head.weight[Lm:Lm + L, : w.shape[1]] = src.weight[L:]
                head.bias[:L] = src.bias[:L]
                head.bias[Lm:Lm + L] = src.bias[L:]
                if learned:
                    full = self._scale(head, bits)
                    full[:L] = src.weight_scale[:L]
                    full[Lm:Lm + L] = src.weight_scale[L:]
                continue
            w.copy_(src.weight)  # the slice is a view of the shared weight
            b.copy_(src.bias)
            if learned:
                scale.copy_(src.weight_scale)  # a view of the shared step sizes too


class MLPSupernet(_SharedWeights):
    family = "mlp"

    def __init__(self, space: SearchSpace, learned_scales: bool = True):
        super().__init__(space, learned_scales)
        depths, widths = space.mlp["depth"], space.mlp["width"]
        self.depths = tuple(sorted(depths))
        self.max_depth, self.max_width = max(depths), max(widths)
        self.n_in = math.prod(space.input_shape)
        self.n_out = self.likelihood.n_params * self.n_in  # the likelihood's parameters per input dimension
        W, L = self.max_width, self.max_latent
        self.enc = nn.ModuleList(nn.Linear(self.n_in if i == 0 else W, W) for i in range(self.max_depth))
        # one head and one decoder input layer per depth (see the module docstring)
        self.heads = nn.ModuleDict({str(d): nn.Linear(self.n_in if d == 0 else W, 2 * L) for d in self.depths})
        self.dec_in = nn.ModuleDict({str(d): nn.Linear(L, self.n_out if d == 0 else W) for d in self.depths})
        self.dec = nn.ModuleList(nn.Linear(W, W) for _ in range(max(0, self.max_depth - 1)))  # from the output end
        self.out = nn.Linear(W, self.n_out) if self.max_depth > 0 else None
        named = [(f"enc{i}", m) for i, m in enumerate(self.enc)] + [(f"head{d}", m) for d, m in self.heads.items()]
        named += [(f"decin{d}", m) for d, m in self.dec_in.items()] + [(f"dec{i}", m) for i, m in enumerate(self.dec)]
        named += [("out", self.out)] if self.out is not None else []
        self._register_scales(named)

    def head_for(self, spec: ArchSpec) -> nn.Linear:
        return self.head(len(spec.enc_hidden))

    def head(self, depth: int) -> nn.Linear:
        return self.heads[str(depth)]

    def decoder_layers(self, depth: int) -> list[nn.Linear]:
        """The shared layers a decoder of ``depth`` hidden layers runs, input to output (incl. the output layer)."""
        if depth == 0:
            return [self.dec_in["0"]]
        return [self.dec_in[str(depth)]] + [self.dec[depth - 1 - k] for k in range(1, depth)] + [self.out]

    # ------------------------------------------------------------------ which shared layer each layer uses
    def shared_layers(self, spec: ArchSpec) -> dict[str, nn.Module]:
        dec = len(spec.decoder_hidden)
        names = [f"dec.fc{k}" for k in range(dec)] + ["dec.out"]
        out = {f"enc.fc{i}": self.enc[i] for i in range(len(spec.enc_hidden))}
        out["head"] = self.head_for(spec)
        out.update(zip(names, self.decoder_layers(dec)))
        return out

    # ------------------------------------------------------------------ running one spec
    def forward(self, x: torch.Tensor, spec: ArchSpec, eps: torch.Tensor | None = None):
        """``(out, mu, logvar)`` of ``spec`` on the shared weights (``out``: the likelihood's parameters;
        ``eps``: (N, latent_dim) noise)."""
        self._check(spec)
        return run_plan(spec, self.sliced(spec), x, eps)


def _crop(k_max: int, k: int) -> slice:
    """The taps of a ``k``-kernel inside the shared ``k_max``-kernel: aligned on the tap at offset 0
    (index ``(k - 1) // 2`` with the builder's padding), so a smaller kernel is the centre of the larger."""
    start = (k_max - 1) // 2 - (k - 1) // 2
    return slice(start, start + k)


class ConvSupernet(_SharedWeights):
    """The conv family on shared weights: conv encoder -> FC layers -> head; FC layers -> projection ->
    transposed-conv decoder (the layout of :class:`~search_space.builder.VAE`).

    * conv and transposed-conv layers: elastic channels (leading slices of output/input channels) and
      elastic kernels (the centre ``k x k`` taps of the largest kernel); strides change no weight.
      Transposed convs are shared by the encoder layer they mirror, so the one producing the image is
      always shared layer 0 (as the MLP decoder is shared from the output end);
    * the layers at the flatten boundary depend on the feature-map geometry (conv depth and final
      ``h x w``), whose flattened features mean different things: the first FC layer (or the head),
      the head, the decoder's input FC layer and the projection back to a feature map are one per
      geometry and FC depth; channel slices of a fixed geometry are leading column/row slices,
      since flattening is channel-major;
    * FC widths, latent size and bit-widths as in :class:`MLPSupernet`.
    """

    family = "conv"

    def __init__(self, space: SearchSpace, learned_scales: bool = True):
        super().__init__(space, learned_scales)
        c = space.conv
        C0 = space.input_shape[0]
        self.max_depth, C, K = max(c["depth"]), max(c["channels"]), max(c["kernel"])
        self.max_channels, self.max_kernel = C, K
        self.fc_depths = tuple(sorted(c["fc_depth"]))
        F_, L = max(c["fc_width"]), self.max_latent
        self.max_fc = F_
        self.convs = nn.ModuleList(nn.Conv2d(C0 if i == 0 else C, C, K) for i in range(self.max_depth))
        C_out = self.likelihood.n_params * C0  # the image-producing layer emits the likelihood's parameters
        self.tconvs = nn.ModuleList(nn.ConvTranspose2d(C, C_out if j == 0 else C, K) for j in range(self.max_depth))
        self.geometries = self._geometries()
        self.fc_in, self.heads, self.dec_in, self.proj = (nn.ModuleDict() for _ in range(4))
        for g, (n, h, w) in self.geometries.items():
            flat = C * h * w
            if max(self.fc_depths) > 0:
                self.fc_in[g] = nn.Linear(flat, F_)
            for f in self.fc_depths:
                self.heads[f"{g}_f{f}"] = nn.Linear(flat if f == 0 else F_, 2 * L)
                if f > 0:
                    self.dec_in[f"{g}_f{f}"] = nn.Linear(L, F_)
                self.proj[f"{g}_f{f}"] = nn.Linear(L if f == 0 else F_, flat)
        n_fc = max(0, max(self.fc_depths) - 1)
        self.enc_fc = nn.ModuleList(nn.Linear(F_, F_) for _ in range(n_fc))  # encoder FC layers 1..
        self.dec_fc = nn.ModuleList(nn.Linear(F_, F_) for _ in range(n_fc))  # from the projection end
        named = [(f"conv{i}", m) for i, m in enumerate(self.convs)] + [(f"tconv{j}", m) for j, m in enumerate(self.tconvs)]
        for prefix, md in (("fcin", self.fc_in), ("head", self.heads), ("decin", self.dec_in), ("proj", self.proj)):
            named += [(f"{prefix}_{k}", m) for k, m in md.items()]
        named += [(f"encfc{i}", m) for i, m in enumerate(self.enc_fc)] + [(f"decfc{i}", m) for i, m in enumerate(self.dec_fc)]
        self._register_scales(named, ch_axis={f"tconv{j}": 1 for j in range(self.max_depth)})

    def _geometries(self) -> dict[str, tuple[int, int, int]]:
        """Every (conv depth, final h, final w) the space can produce, keyed ``g{n}_{h}x{w}``."""
        c = self.space.conv
        sizes = {tuple(self.space.input_shape[1:])}
        out = {}
        for n in range(1, self.max_depth + 1):
            sizes = {(conv_out(h, k, s), conv_out(w, k, s)) for h, w in sizes for k in c["kernel"] for s in c["stride"]
                     if s <= k}
            if n in c["depth"]:
                for h, w in sorted(sizes):
                    out[f"g{n}_{h}x{w}"] = (n, h, w)
        return out

    @staticmethod
    def _geometry(spec: ArchSpec) -> str:
        _, h, w = spec.feature_shapes()[-1]
        return f"g{len(spec.enc_channels)}_{h}x{w}"

    def _key(self, spec: ArchSpec) -> str:
        """The boundary layers' key: geometry and FC depth."""
        return f"{self._geometry(spec)}_f{len(spec.enc_hidden)}"

    def head_for(self, spec: ArchSpec) -> nn.Linear:
        return self.heads[self._key(spec)]

    # ------------------------------------------------------------------ which shared layer each layer uses
    def shared_layers(self, spec: ArchSpec) -> dict[str, nn.Module]:
        g, key, n, dec = self._geometry(spec), self._key(spec), len(spec.enc_channels), len(spec.decoder_hidden)
        out: dict[str, nn.Module] = {f"enc.conv{i}": self.convs[i] for i in range(n)}
        out.update({f"enc.fc{i}": self.fc_in[g] if i == 0 else self.enc_fc[i - 1] for i in range(len(spec.enc_hidden))})
        out["head"] = self.heads[key]
        out.update({f"dec.fc{k}": self.dec_in[key] if k == 0 else self.dec_fc[dec - 1 - k] for k in range(dec)})
        out["dec.proj"] = self.proj[key]
        out.update({f"dec.tconv{i}": self.tconvs[n - 1 - i] for i in range(n)})  # shared by the layer it mirrors
        return out

    # ------------------------------------------------------------------ running one spec
    def forward(self, x: torch.Tensor, spec: ArchSpec, eps: torch.Tensor | None = None):
        """``(out, mu, logvar)`` of ``spec`` on the shared weights (``out``: the likelihood's parameters;
        ``eps``: (N, latent_dim) noise)."""
        self._check(spec)
        return run_plan(spec, self.sliced(spec), x, eps)


def build_supernet(space: SearchSpace, learned_scales: bool = True) -> _SharedWeights:
    """The supernet of a one-family space: :class:`MLPSupernet` or :class:`ConvSupernet`."""
    structure_groups(space)
    return (MLPSupernet if space.family[0] == "mlp" else ConvSupernet)(space, learned_scales=learned_scales)
