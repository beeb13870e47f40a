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
from .errors import SpaceError
from .quant import fake_quant_act, fake_quant_weight, lsq_fake_quant_weight, qmax_for
from .space import SearchSpace
from .spec import ArchSpec

ACTIVATIONS = {
    "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu, "silu": F.silu, "gelu": F.gelu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid,
}


def extreme_spec(space: SearchSpace, which: str, depth: int | None = None) -> ArchSpec:
    """The largest (``max``) or smallest (``min``) MLP spec: every numeric decision at its max/min
    (the depth too, unless ``depth`` fixes it)."""
    pick = max if which == "max" else min

    def choose(name: str, choices: tuple):
        if name == "family":
            return "mlp"
        if name == "mlp.depth" and depth is not None:
            return depth
        if name in ("activation",):
            return choices[0]
        if name == "act_bits":
            return None if None in choices else pick(choices)
        return pick(choices)

    return space.define(choose)


class MLPSupernet(nn.Module):
    def __init__(self, space: SearchSpace, learned_scales: bool = True):
        super().__init__()
        if "mlp" not in space.family:
            raise SpaceError("supernet: only MLP spaces are supported so far (family must include 'mlp')")
        self.space = space
        depths, widths = space.mlp["depth"], space.mlp["width"]
        self.depths = tuple(sorted(depths))
        self.max_depth, self.max_width, self.max_latent = max(depths), max(widths), max(space.latent_dim)
        self.n_in = math.prod(space.input_shape)
        W, L = self.max_width, self.max_latent
        self.enc = nn.ModuleList(nn.Linear(self.n_in if i == 0 else W, W) for i in range(self.max_depth))
        # one head and one decoder input layer per depth (see the module docstring)
        self.heads = nn.ModuleDict({str(d): nn.Linear(self.n_in if d == 0 else W, 2 * L) for d in self.depths})
        self.dec_in = nn.ModuleDict({str(d): nn.Linear(L, self.n_in if d == 0 else W) for d in self.depths})
        self.dec = nn.ModuleList(nn.Linear(W, W) for _ in range(max(0, self.max_depth - 1)))  # from the output end
        self.out = nn.Linear(W, self.n_in) if self.max_depth > 0 else None
        self.learned_scales = learned_scales
        self._keys: dict[int, str] = {}
        named = [(f"enc{i}", m) for i, m in enumerate(self.enc)] + [(f"head{d}", m) for d, m in self.heads.items()]
        named += [(f"decin{d}", m) for d, m in self.dec_in.items()] + [(f"dec{i}", m) for i, m in enumerate(self.dec)]
        named += [("out", self.out)] if self.out is not None else []
        self.scales = nn.ParameterDict()
        for key, m in named:
            self._keys[id(m)] = key
            if learned_scales:
                for b in space.weight_bits:
                    if b < 32:  # LSQ's initial step: 2 mean|w| / sqrt(Q) per output channel
                        init = 2 * m.weight.detach().abs().mean(1) / math.sqrt(qmax_for(b))
                        self.scales[f"{key}_b{b}"] = nn.Parameter(init.clamp_min(1e-8))

    def head(self, depth: int) -> nn.Linear:
        return self.heads[str(depth)]

    def decoder_layers(self, depth: int) -> list[nn.Linear]:
        """The shared layers a decoder of ``depth`` hidden layers runs, input to output (incl. the output layer)."""
        if depth == 0:
            return [self.dec_in["0"]]
        return [self.dec_in[str(depth)]] + [self.dec[depth - 1 - k] for k in range(1, depth)] + [self.out]

    # ------------------------------------------------------------------ slicing
    def _check(self, spec: ArchSpec) -> None:
        v = self.space.contains(spec)
        if not v:
            raise SpaceError(f"supernet: spec {spec.id} is not in its space: {v.reason}")
        if spec.family != "mlp":
            raise SpaceError("supernet: only MLP specs are supported so far")

    def _scale(self, m: nn.Linear, bits: int) -> torch.Tensor | None:
        if bits >= 32 or not self.learned_scales:
            return None
        return self.scales[f"{self._keys[id(m)]}_b{bits}"]

    def sliced(self, spec: ArchSpec) -> list[tuple[str, torch.Tensor, torch.Tensor, int, torch.Tensor | None]]:
        """``(layer name, weight slice, bias slice, bits, step-size slice or None)`` in ``spec.layer_names()``
        order (None: 32-bit, or max-abs scales without ``learned_scales``)."""
        bits = dict(zip(spec.layer_names(), spec.weight_bits))
        L, Lm = spec.latent_dim, self.max_latent
        out = []
        width = self.n_in

        def rows(m, name, w, width):
            s = self._scale(m, bits[name])
            return (name, m.weight[:w, :width], m.bias[:w], bits[name], None if s is None else s[:w])

        for i, w in enumerate(spec.enc_hidden):
            out.append(rows(self.enc[i], f"enc.fc{i}", w, width))
            width = w
        head = self.head(len(spec.enc_hidden))
        hw = torch.cat([head.weight[:L, :width], head.weight[Lm:Lm + L, :width]])
        hb = torch.cat([head.bias[:L], head.bias[Lm:Lm + L]])
        hs = self._scale(head, bits["head"])
        out.append(("head", hw, hb, bits["head"], None if hs is None else torch.cat([hs[:L], hs[Lm:Lm + L]])))
        width = L
        dec = spec.decoder_hidden
        for k, (w, m) in enumerate(zip(dec, self.decoder_layers(len(dec)))):
            out.append(rows(m, f"dec.fc{k}", w, width))
            width = w
        m = self.decoder_layers(len(dec))[-1]
        out.append(rows(m, "dec.out", m.weight.shape[0], width))
        return out

    # ------------------------------------------------------------------ running one spec
    def forward(self, x: torch.Tensor, spec: ArchSpec, eps: torch.Tensor | None = None):
        """``(logits, mu, logvar)`` of ``spec`` on the shared weights (``eps``: (N, latent_dim) noise)."""
        self._check(spec)
        act = ACTIVATIONS[spec.activation]
        layers = self.sliced(spec)
        n_enc = len(spec.enc_hidden)

        def lin(h, layer):
            _, w, b, bits, scale = layer
            wq = lsq_fake_quant_weight(w, scale, bits, 0) if scale is not None else fake_quant_weight(w, bits, 0)
            return F.linear(fake_quant_act(h, spec.act_bits), wq, b)

        h = x.reshape(x.shape[0], -1)
        for layer in layers[:n_enc]:
            h = act(lin(h, layer))
        mu, logvar = lin(h, layers[n_enc]).chunk(2, dim=1)
        if eps is None:
            eps = torch.randn_like(mu)
        h = mu + torch.exp(0.5 * logvar) * eps
        for layer in layers[n_enc + 1:-1]:
            h = act(lin(h, layer))
        logits = lin(h, layers[-1]).view(x.shape[0], *spec.input_shape)
        return logits, mu, logvar

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
                head = self.head(len(spec.enc_hidden))
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
