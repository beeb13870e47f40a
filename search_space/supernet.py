"""A weight-sharing VAE supernet over a search space's MLP specs (stateless: the spec is an argument).

Every spec of the space runs on slices of one set of weights:

* elastic depth: an encoder of depth ``d`` uses the first ``d`` shared encoder layers; decoder
  layers are shared counting from the *output* end (the layer feeding the output layer is
  always shared layer 0), so a shallow decoder reuses the layers nearest the pixels;
* elastic width and latent size: leading slices - output rows ``[:w]``, input columns ``[:w_in]``;
  the head's mu rows are ``[0:L]`` and its logvar rows ``[Lmax:Lmax+L]``;
* bit-width: the *sliced* weight is fake-quantised at the spec's bits with per-channel max-abs
  scales (:func:`fake_quant_weight`, straight-through), so one float weight serves every
  bit-width.

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
from .quant import fake_quant_act, fake_quant_weight
from .space import SearchSpace
from .spec import ArchSpec

ACTIVATIONS = {
    "relu": F.relu, "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "elu": F.elu, "silu": F.silu, "gelu": F.gelu,
    "tanh": torch.tanh, "sigmoid": torch.sigmoid,
}


def extreme_spec(space: SearchSpace, which: str) -> ArchSpec:
    """The largest (``max``) or smallest (``min``) MLP spec: every numeric decision at its max/min."""
    pick = max if which == "max" else min

    def choose(name: str, choices: tuple):
        if name == "family":
            return "mlp"
        if name in ("activation",):
            return choices[0]
        if name == "act_bits":
            return None if None in choices else pick(choices)
        return pick(choices)

    return space.define(choose)


class MLPSupernet(nn.Module):
    def __init__(self, space: SearchSpace):
        super().__init__()
        if "mlp" not in space.family:
            raise SpaceError("supernet: only MLP spaces are supported so far (family must include 'mlp')")
        self.space = space
        depths, widths = space.mlp["depth"], space.mlp["width"]
        self.max_depth, self.max_width, self.max_latent = max(depths), max(widths), max(space.latent_dim)
        self.n_in = math.prod(space.input_shape)
        shallow = 0 in depths
        W, L = self.max_width, self.max_latent
        self.enc = nn.ModuleList(nn.Linear(self.n_in if i == 0 else W, W) for i in range(self.max_depth))
        self.head = nn.Linear(max(W, self.n_in) if shallow else W, 2 * L)
        self.dec = nn.ModuleList(nn.Linear(max(W, L), W) for _ in range(self.max_depth))  # from the output end
        self.out = nn.Linear(max(W, L) if shallow else W, self.n_in)

    # ------------------------------------------------------------------ slicing
    def _check(self, spec: ArchSpec) -> None:
        v = self.space.contains(spec)
        if not v:
            raise SpaceError(f"supernet: spec {spec.id} is not in its space: {v.reason}")
        if spec.family != "mlp":
            raise SpaceError("supernet: only MLP specs are supported so far")

    def sliced(self, spec: ArchSpec) -> list[tuple[str, torch.Tensor, torch.Tensor, int]]:
        """``(layer name, weight slice, bias slice, bits)`` in ``spec.layer_names()`` order."""
        bits = dict(zip(spec.layer_names(), spec.weight_bits))
        L, Lm = spec.latent_dim, self.max_latent
        out = []
        width = self.n_in
        for i, w in enumerate(spec.enc_hidden):
            m = self.enc[i]
            out.append((f"enc.fc{i}", m.weight[:w, :width], m.bias[:w], bits[f"enc.fc{i}"]))
            width = w
        hw = torch.cat([self.head.weight[:L, :width], self.head.weight[Lm:Lm + L, :width]])
        hb = torch.cat([self.head.bias[:L], self.head.bias[Lm:Lm + L]])
        out.append(("head", hw, hb, bits["head"]))
        width = L
        dec = spec.decoder_hidden
        for k, w in enumerate(dec):
            m = self.dec[len(dec) - 1 - k]
            out.append((f"dec.fc{k}", m.weight[:w, :width], m.bias[:w], bits[f"dec.fc{k}"]))
            width = w
        out.append(("dec.out", self.out.weight[:, :width], self.out.bias, bits["dec.out"]))
        return out

    # ------------------------------------------------------------------ running one spec
    def forward(self, x: torch.Tensor, spec: ArchSpec, eps: torch.Tensor | None = None):
        """``(logits, mu, logvar)`` of ``spec`` on the shared weights (``eps``: (N, latent_dim) noise)."""
        self._check(spec)
        act = ACTIVATIONS[spec.activation]
        layers = self.sliced(spec)
        n_enc = len(spec.enc_hidden)

        def lin(h, layer):
            _, w, b, bits = layer
            return F.linear(fake_quant_act(h, spec.act_bits), fake_quant_weight(w, bits, 0), b)

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
        model = build_vae(spec).to(self.out.weight.device)
        layers = model.weight_layers()
        for name, w, b, _bits in self.sliced(spec):
            m = layers[name]
            m.weight.copy_(w)
            m.bias.copy_(b)
            if m.bits < 32:
                m.calibrate()  # the max-abs step size the supernet quantises with
        return model

    @torch.no_grad()
    def load_standalone(self, model: VAE) -> None:
        """Copy a standalone model's weights into the slices its spec uses (inverse of :meth:`extract`)."""
        spec = model.spec
        self._check(spec)
        layers = model.weight_layers()
        for name, w, b, _bits in self.sliced(spec):
            if name == "head":
                L, Lm = spec.latent_dim, self.max_latent
                src = layers[name]
                self.head.weight[:L, : w.shape[1]] = src.weight[:L]
                self.head.weight[Lm:Lm + L, : w.shape[1]] = src.weight[L:]
                self.head.bias[:L] = src.bias[:L]
                self.head.bias[Lm:Lm + L] = src.bias[L:]
                continue
            w.copy_(layers[name].weight)  # the slice is a view of the shared weight
            b.copy_(layers[name].bias)
