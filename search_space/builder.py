"""Build a VAE from an :class:`ArchSpec`: encoder -> (mu, logvar) -> z -> decoder output (the parameters of
the spec's likelihood, ``search_space/likelihood.py``, shaped ``spec.output_shape``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .likelihood import Likelihood, get_likelihood
from .quant import QuantConv2d, QuantConvTranspose2d, QuantLinear
from .spec import ArchSpec

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


class VAE(nn.Module):
    """A VAE whose weight layers are named as ``spec.layer_names()`` (``enc.fc0``, ``head``, ...).

    ``forward(x, eps=None)`` returns ``(out, mu, logvar)`` - ``out`` the likelihood's parameters
    (Bernoulli: logits), shaped ``(N, *spec.output_shape)``; pass ``eps`` (same shape as ``mu``)
    to control the reparameterisation noise, otherwise it is drawn with ``torch.randn_like``.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        bits = dict(zip(spec.layer_names(), spec.weight_bits))
        ab = spec.act_bits
        act = ACTIVATION_MODULES[spec.activation]
        self.act = act()
        self.enc, self.dec = nn.Module(), nn.Module()
        shapes = spec.feature_shapes()

        for i, (ch, k, s) in enumerate(zip(spec.enc_channels, spec.kernels, spec.strides)):
            conv = QuantConv2d(shapes[i][0], ch, k, stride=s, padding=(k - 1) // 2, bits=bits[f"enc.conv{i}"], act_bits=ab)
            setattr(self.enc, f"conv{i}", conv)
        width = math.prod(shapes[-1])
        for i, out in enumerate(spec.enc_hidden):
            setattr(self.enc, f"fc{i}", QuantLinear(width, out, bits=bits[f"enc.fc{i}"], act_bits=ab))
            width = out
        self.head = QuantLinear(width, 2 * spec.latent_dim, bits=bits["head"], act_bits=ab)

        width = spec.latent_dim
        for i, out in enumerate(spec.decoder_hidden):
            setattr(self.dec, f"fc{i}", QuantLinear(width, out, bits=bits[f"dec.fc{i}"], act_bits=ab))
            width = out
        if spec.family == "mlp":
            n_out = math.prod(spec.output_shape)
            self.dec.out = QuantLinear(width, n_out, bits=bits["dec.out"], act_bits=ab)
        else:
            n = len(spec.enc_channels)
            dch = spec.decoder_channels
            _, h, w = shapes[-1]
            self._dec_start = (dch[0], h, w)
            self.dec.proj = QuantLinear(width, dch[0] * h * w, bits=bits["dec.proj"], act_bits=ab)
            for i in range(n):
                j = n - 1 - i  # the encoder layer this one mirrors
                in_hw, out_shape = shapes[j + 1][1:], shapes[j]
                out_ch = dch[i + 1] if i + 1 < n else spec.output_shape[0]
                k, s = spec.kernels[j], spec.strides[j]
                op = (_tconv_output_padding(in_hw[0], out_shape[1], k, s), _tconv_output_padding(in_hw[1], out_shape[2], k, s))
                tconv = QuantConvTranspose2d(
                    dch[i], out_ch, k, stride=s, padding=(k - 1) // 2, output_padding=op, bits=bits[f"dec.tconv{i}"], act_bits=ab
                )
                setattr(self.dec, f"tconv{i}", tconv)
        self._names = spec.layer_names()

    @property
    def likelihood(self) -> Likelihood:
        return get_likelihood(self.spec.likelihood)

    def weight_layers(self) -> dict[str, nn.Module]:
        """The weight layers in ``spec.layer_names()`` order (the order of ``spec.weight_bits``)."""
        return {name: self.get_submodule(name) for name in self._names}

    def num_params(self) -> int:
        """Weights + biases: the model's parameter count (quantisers' learned step sizes are not
        counted here; they are part of the packed size as the per-channel scales)."""
        return sum(p.numel() for n, p in self.named_parameters() if not n.endswith("weight_scale"))

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
