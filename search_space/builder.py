"""Build a VAE from an :class:`ArchSpec`: encoder -> (mu, logvar) -> z -> decoder output (the parameters of
the spec's likelihood, ``search_space/likelihood.py``, shaped ``spec.output_shape``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .compression import factor_rank, sparsity_at
from .likelihood import Likelihood, get_likelihood
from .quant import QUANT_LAYERS, QuantConv2d, QuantConvTranspose2d, QuantLinear
from .spec import ArchSpec
from .structured import masked_layers, narrow_state, prune_units, unit_groups

ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def _tconv_output_padding(in_size: int, target: int, k: int, s: int) -> int:
    p = (k - 1) // 2
    op = target - ((in_size - 1) * s - 2 * p + k)
    assert 0 <= op < s, (in_size, target, k, s, op)  # guaranteed by conv_out's padding rule
    return op


class LowRank(nn.Module):
    """A layer trained and shipped as two factors (``search_space/compression.py``): ``u(v(x))``."""

    def __init__(self, v: nn.Module, u: nn.Module):
        super().__init__()
        self.v, self.u = v, u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


def _weight_layer(spec: ArchSpec, name: str, kind: str, c_in: int, c_out: int, k: int = 1, s: int = 1,
                  op: tuple[int, int] = (0, 0)) -> nn.Module:
    """One weight layer of ``spec`` (a ``LowRank`` pair when the spec factorises it)."""
    i = spec.layer_names().index(name)
    q = dict(bits=spec.weight_bits[i], act_bits=spec.act_bits, quantizer=spec.layer_quantizer(i))
    p = (k - 1) // 2
    rank = spec.layer_rank(i)
    if rank is None:
        structured = spec.pruning == "structured"
        m = dict(sparsity=0.0 if structured else spec.layer_sparsity(i),
                 masked=structured and name in masked_layers(spec))
        if kind == "linear":
            return QuantLinear(c_in, c_out, **m, **q)
        if kind == "conv":
            return QuantConv2d(c_in, c_out, k, stride=s, padding=p, **m, **q)
        return QuantConvTranspose2d(c_in, c_out, k, stride=s, padding=p, output_padding=op, **m, **q)
    if kind == "linear":
        r = factor_rank(c_out, c_in, rank)
        return LowRank(QuantLinear(c_in, r, bias=False, **q), QuantLinear(r, c_out, **q))
    if kind == "conv":
        r = factor_rank(c_out, c_in * k * k, rank)
        return LowRank(QuantConv2d(c_in, r, k, stride=s, padding=p, bias=False, **q), QuantConv2d(r, c_out, 1, **q))
    r = factor_rank(c_in, c_out * k * k, rank)
    return LowRank(QuantConv2d(c_in, r, 1, bias=False, **q),
                   QuantConvTranspose2d(r, c_out, k, stride=s, padding=p, output_padding=op, **q))


class VAE(nn.Module):
    """A VAE whose weight layers are named as ``spec.layer_names()`` (``enc.fc0``, ``head``, ...).

    ``forward(x, eps=None)`` returns ``(out, mu, logvar)`` - ``out`` the likelihood's parameters
    (Bernoulli: logits), shaped ``(N, *spec.output_shape)``; pass ``eps`` (same shape as ``mu``)
    to control the reparameterisation noise, otherwise it is drawn with ``torch.randn_like``.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act = ACTIVATION_MODULES[spec.activation]
        self.act = act()
        self.enc, self.dec = nn.Module(), nn.Module()
        shapes = spec.feature_shapes()

        for i, (ch, k, s) in enumerate(zip(spec.enc_channels, spec.kernels, spec.strides)):
            setattr(self.enc, f"conv{i}", _weight_layer(spec, f"enc.conv{i}", "conv", shapes[i][0], ch, k, s))
        width = math.prod(shapes[-1])
        for i, out in enumerate(spec.enc_hidden):
            setattr(self.enc, f"fc{i}", _weight_layer(spec, f"enc.fc{i}", "linear", width, out))
            width = out
        self.head = _weight_layer(spec, "head", "linear", width, 2 * spec.latent_dim)

        width = spec.latent_dim
        for i, out in enumerate(spec.decoder_hidden):
            setattr(self.dec, f"fc{i}", _weight_layer(spec, f"dec.fc{i}", "linear", width, out))
            width = out
        if spec.family == "mlp":
            n_out = math.prod(spec.output_shape)
            self.dec.out = _weight_layer(spec, "dec.out", "linear", width, n_out)
        else:
            n = len(spec.enc_channels)
            dch = spec.decoder_channels
            _, h, w = shapes[-1]
            self._dec_start = (dch[0], h, w)
            self.dec.proj = _weight_layer(spec, "dec.proj", "linear", width, dch[0] * h * w)
            for i in range(n):
                j = n - 1 - i  # the encoder layer this one mirrors
                in_hw, out_shape = shapes[j + 1][1:], shapes[j]
                out_ch = dch[i + 1] if i + 1 < n else spec.output_shape[0]
                k, s = spec.kernels[j], spec.strides[j]
                op = (_tconv_output_padding(in_hw[0], out_shape[1], k, s), _tconv_output_padding(in_hw[1], out_shape[2], k, s))
                setattr(self.dec, f"tconv{i}", _weight_layer(spec, f"dec.tconv{i}", "tconv", dch[i], out_ch, k, s, op))
        self._names = spec.layer_names()
        self._sparse = [m for m in self.modules() if isinstance(m, QUANT_LAYERS) and m.sparsity > 0]
        self._units = unit_groups(spec)  # structured pruning's plan (empty otherwise)
        self._layers = self.weight_layers() if self._units else {}
        self._masked = [m for m in self.modules() if isinstance(m, QUANT_LAYERS) and m.masked]

    @property
    def likelihood(self) -> Likelihood:
        return get_likelihood(self.spec.likelihood)

    def weight_layers(self) -> dict[str, nn.Module]:
        """The quantised weight layers in ``spec.layer_names()`` order (the order of ``spec.weight_bits``);
        a factorised layer contributes its two factors, ``<name>.v`` then ``<name>.u`` (packing order)."""
        out: dict[str, nn.Module] = {}
        for name in self._names:
            m = self.get_submodule(name)
            if isinstance(m, LowRank):
                out[f"{name}.v"], out[f"{name}.u"] = m.v, m.u
            else:
                out[name] = m
        return out

    @torch.no_grad()
    def after_step(self, step: int, total: int) -> None:
        """Called by the training loop after each optimiser step (1-based ``step`` of ``total``): moves every
        sparse layer along its pruning schedule (:func:`~search_space.compression.sparsity_at`), about
        100 times per run and at the last step; a model without sparse layers does nothing."""
        every = max(1, total // 100)
        if step % every and step != total:
            for m in self._masked:  # between schedule steps pruned weights only stay 0 (no re-ranking, no sync)
                m.weight.mul_(m.weight_mask)
            return
        for m in self._sparse:
            m.prune_to(sparsity_at(m.sparsity, step, total))
        for g in self._units:
            prune_units(self._layers, g, sparsity_at(g.target, step, total))

    @torch.no_grad()
    def finalize_sparsity(self) -> None:
        """Every sparse layer (or pruned unit group) at its exact target (the end of training; packing calls
        it too)."""
        for m in self._sparse:
            m.finalize_sparsity()
        for g in self._units:
            prune_units(self._layers, g, g.target)

    def shipped(self) -> "VAE":
        """The model that ships: itself, or for structured pruning the narrower dense VAE of
        ``spec.deployed()`` carrying the kept units' weights (the same function)."""
        if not self._units:
            return self
        self.finalize_sparsity()
        ship = VAE(self.spec.deployed()).to(next(self.parameters()).device)
        ship.load_state_dict(narrow_state(self))
        return ship.train(self.training)

    def num_params(self) -> int:
        """Weights + biases: the model's parameter count (quantisers' learned step sizes and k-means codebooks
        are not counted here; they are part of the packed size). A sparse layer counts all its weights
        (pruned ones are zeros in every deployable form); the packed bytes count only the kept ones."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.endswith(("weight_scale", "codebook")))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        h = x.reshape(x.shape[0], *spec.input_shape)
        for i in range(len(spec.enc_channels)):
            h = self.act(getattr(self.enc, f"conv{i}")(h))
        h = h.flatten(1)
        for i in range(len(spec.enc_hidden)):
            h = self.act(getattr(self.enc, f"fc{i}")(h))
        mu, logvar = self.head(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters, ``(N, *spec.output_shape)``; works for any leading batch size."""
        spec = self.spec
        h = z
        for i in range(len(spec.decoder_hidden)):
            h = self.act(getattr(self.dec, f"fc{i}")(h))
        if spec.family == "mlp":
            return self.dec.out(h).view(h.shape[0], *spec.output_shape)
        h = self.act(self.dec.proj(h)).view(h.shape[0], *self._dec_start)
        n = len(spec.enc_channels)
        for i in range(n):
            h = getattr(self.dec, f"tconv{i}")(h)
            if i + 1 < n:
                h = self.act(h)
        return h

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def build_vae(spec: ArchSpec) -> VAE:
    """Instantiate the VAE described by ``spec`` (PyTorch default initialisation; seed torch first)."""
    return VAE(spec)
