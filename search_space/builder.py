"""Build a VAE from an :class:`ArchSpec`: encoder -> (mu, logvar) -> z -> decoder output (the parameters of
the spec's likelihood, ``search_space/likelihood.py``, shaped ``spec.output_shape``)."""

from __future__ import annotations

import torch
from torch import nn

from .activations import get_activation
from .compression import sparsity_at
from .integer import ActQuant, integer_step, quantized_tensors
from .likelihood import Likelihood, get_likelihood
from .packing import unpack_state_dict
from .plan import Layer, Step, layer_plan, unit_groups
from .quant import QUANT_LAYERS, QuantConv2d, QuantConvTranspose2d, QuantLinear
from .spec import ArchSpec
from .structured import narrow_state, prune_units


class LowRank(nn.Module):
    """A layer trained and shipped as two factors (``search_space/compression.py``): ``u(v(x))``."""

    def __init__(self, v: nn.Module, u: nn.Module):
        super().__init__()
        self.v, self.u = v, u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.u(self.v(x))


def step_module(step: Step) -> nn.Module:
    """The quantised module of one plan step."""
    q = dict(bits=step.bits, act_bits=step.act_bits, quantizer=step.quantizer, sparsity=step.sparsity,
             masked=step.masked, bias=step.bias)
    if step.kind == "linear":
        return QuantLinear(step.in_size, step.out_size, **q)
    c_in, c_out, k = step.in_shape[0], step.out_shape[0], step.kernel
    if step.kind == "conv":
        return QuantConv2d(c_in, c_out, k, stride=step.stride, padding=step.padding, **q)
    return QuantConvTranspose2d(c_in, c_out, k, stride=step.stride, padding=step.padding,
                                output_padding=step.output_padding, **q)


def layer_module(layer: Layer) -> nn.Module:
    """One weight layer of the plan: its quantised module, or a ``LowRank`` pair of its factors."""
    mods = [step_module(s) for s in layer.steps]
    return mods[0] if len(mods) == 1 else LowRank(*mods)


class VAE(nn.Module):
    """A VAE whose weight layers are named as ``spec.layer_names()`` (``enc.fc0``, ``head``, ...).

    ``forward(x, eps=None)`` returns ``(out, mu, logvar)`` - ``out`` the likelihood's parameters
    (Bernoulli: logits), shaped ``(N, *spec.output_shape)``; pass ``eps`` (same shape as ``mu``)
    to control the reparameterisation noise, otherwise it is drawn with ``torch.randn_like``.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        self.act = get_activation(spec.activation).module()
        self.enc, self.dec = nn.Module(), nn.Module()
        self.plan = layer_plan(spec)
        self._encoder, self._decoder = self._chain(self.plan.encoder, True), self._chain(self.plan.decoder, False)
        for layer in self.plan.layers:
            part, _, attr = layer.name.rpartition(".")
            setattr(getattr(self, part) if part else self, attr, layer_module(layer))
        self._sparse = [m for m in self.modules() if isinstance(m, QUANT_LAYERS) and m.sparsity > 0]
        self._units = unit_groups(spec)  # structured pruning's plan (empty otherwise)
        self._layers = self.weight_layers() if self._units else {}
        self._masked = [m for m in self.modules() if isinstance(m, QUANT_LAYERS) and m.masked]
        if spec.is_integer:  # the int8 tensors' static quantisers (search_space/integer.py)
            self.aq = nn.ModuleDict({aq_key(n): ActQuant() for n in quantized_tensors(spec)})

    @property
    def likelihood(self) -> Likelihood:
        return get_likelihood(self.spec.likelihood)

    def weight_layers(self) -> dict[str, nn.Module]:
        """The quantised weight layers in ``spec.layer_names()`` order (the order of ``spec.weight_bits``);
        a factorised layer contributes its two factors, ``<name>.v`` then ``<name>.u`` (packing order)."""
        return {s.name: self.get_submodule(s.name) for s in self.plan.steps()}

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
        return sum(p.numel() for n, p in self.named_parameters() if not n.endswith(("weight_scale", "codebook"))
                   and not n.startswith("aq."))

    @staticmethod
    def _chain(layers, encoder: bool) -> tuple:
        """Per layer, what a forward pass needs, read from the plan once: (module name's parts, flatten the
        input - the encoder's linear layers, the feature map to reshape the output to or None, the activation
        follows)."""
        return tuple((tuple(layer.name.split(".")), encoder and layer.op.kind == "linear",
                      layer.op.out_shape if layer.op.reshapes_output else None, layer.op.act_after) for layer in layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.reshape(x.shape[0], *self.spec.input_shape)
        if self.spec.is_integer:
            h = self._run_integer(self.plan.encoder, h, "x")
        else:
            h = self._run(self._encoder, h)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The likelihood's parameters, ``(N, *spec.output_shape)``; works for any leading batch size."""
        if self.spec.is_integer:
            return self._run_integer(self.plan.decoder, z, "z").reshape(z.shape[0], *self.spec.output_shape)
        return self._run(self._decoder, z)

    def _run_integer(self, layers, h: torch.Tensor, first: str) -> torch.Tensor:
        """The integer chain (``search_space/integer.py``): values exactly the int8 model's, QAT gradients."""
        steps = [s for layer in layers for s in layer.steps]
        aq = self.aq[first]
        x, xq = aq(h)
        for i, st in enumerate(steps):
            n = x.shape[0]
            x, xq = x.reshape(n, *st.in_shape), xq.reshape(n, *st.in_shape)
            last = i == len(steps) - 1
            out = None if last else self.aq[aq_key(st.name)]
            pre = None if last else self.aq[aq_key(st.name + ".pre")] if aq_key(st.name + ".pre") in self.aq else None
            x, xq = integer_step(st, self.get_submodule(st.name), x, xq, aq, out, pre, self.spec.activation)
            aq = out
        return x

    def _run(self, chain: tuple, h: torch.Tensor) -> torch.Tensor:
        for parts, flatten, shape, act in chain:
            m = self
            for p in parts:  # the module as it is now (a layer may be replaced after construction)
                m = getattr(m, p)
            if flatten:
                h = h.flatten(1)  # the maps as one vector before the first FC layer (a no-op after it)
            h = m(h)
            if shape is not None:
                h = h.view(h.shape[0], *shape)
            if act:
                h = self.act(h)
        return h

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None):
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def aq_key(tensor: str) -> str:
    """The ``VAE.aq`` key of an int8 tensor's quantiser (module names cannot hold dots)."""
    return tensor.replace(".", "_")


def build_vae(spec: ArchSpec) -> VAE:
    """Instantiate the VAE described by ``spec`` (PyTorch default initialisation; seed torch first)."""
    return VAE(spec)


def unpack_model(spec: ArchSpec, data: bytes) -> VAE:
    """A fresh model carrying the packed weights (:mod:`.packing`); its forward equals the packed model's
    exactly (for structured pruning a model of ``spec.deployed()``, the narrower VAE that ships)."""
    model = build_vae(spec.deployed())
    model.load_state_dict(unpack_state_dict(spec, data))
    return model
