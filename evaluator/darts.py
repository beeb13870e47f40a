"""DARTS-style differentiable search over widths, bit-widths and the latent size (MLP spaces).

Architecture parameters: one logit vector per encoder width decision, per weight layer's
bit-width decision (or one shared, if the space shares bits) and for the latent size; the depth
is fixed (``depth``, default the space's deepest). The mixed model runs on one
:class:`~search_space.supernet.MLPSupernet`'s full weights:

* width of a layer: its output is multiplied by the expected channel mask
  ``sum_k p_k * [c < w_k]`` (FBNetV2-style channel masking);
* bit-width of a layer: the weight used is ``sum_b p_b * fake_quant(W, b)``;
* latent size: the same expected mask on the latent channels of z, and the KL of each channel is
  weighted by its mask.

The decoder mirrors the encoder's width decisions. The expected cost is differentiable:
``E[size] = sum_layers E[fan_in] * E[fan_out] * E[bits] / 8`` bytes (independent decisions),
normalised by the largest spec's. Loss = −ELBO + ``lam`` * E[cost] / cost_max (nats).
First-order DARTS: alternate an Adam step on the weights (training batch) and one on the
architecture logits (validation batch). ``derive()`` takes each decision's argmax and returns
a spec of the space, which the study then evaluates like any other trial.

Data comes in as tensors and the loss is written here (its reconstruction term is the space's
likelihood, ``search_space/likelihood.py``), so the strategy package stays free of the evaluator;
the study wires data and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from search_space import ArchSpec, SearchSpace, SpaceError, VaenasInputError
from search_space.errors import check_block, check_type
from search_space.quant import fake_quant_weight
from search_space.activations import get_activation
from search_space.plan import layer_plan
from search_space.supernet import MLPSupernet

from .elbo import kl_terms


@dataclass(frozen=True)
class DartsConfig:
    steps: int = 300
    batch_size: int = 100
    lr: float = 2e-3
    arch_lr: float = 3e-2
    warmup_steps: int = 50  # weight-only steps before the architecture starts to move
    seed: int = 0
    device: str = "cpu"


DARTS_KEYS = ("lambdas", "steps", "depth", "arch_lr", "warmup_steps", "batch_size")
DEFAULT_LAMBDAS = [0, 10, 100, 1000, 10000]


def darts_block(block, space: SearchSpace) -> dict:
    """A study config's ``darts:`` block, checked against ``space`` (one line naming ``darts.KEY``); the
    lambdas as floats. Kept a mapping: it is part of the study's fingerprint as written."""
    darts = dict(check_block("darts", block, set(DARTS_KEYS)))
    lams = darts.get("lambdas", DEFAULT_LAMBDAS)
    if not isinstance(lams, list) or not lams or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in lams):
        raise VaenasInputError(f"darts.lambdas: expected a non-empty list of numbers >= 0, got {lams!r}")
    darts["lambdas"] = [float(v) for v in lams]
    for k in ("steps", "warmup_steps", "batch_size"):
        if k in darts and (check_type(f"darts.{k}", darts[k], int) < (0 if k == "warmup_steps" else 1)):
            raise VaenasInputError(f"darts.{k}: must be {'>= 0' if k == 'warmup_steps' else '>= 1'}, got {darts[k]}")
    if "arch_lr" in darts and not check_type("darts.arch_lr", darts["arch_lr"], (int, float)) > 0:
        raise VaenasInputError(f"darts.arch_lr: must be > 0, got {darts['arch_lr']}")
    if "depth" in darts:
        check_type("darts.depth", darts["depth"], int, allow_none=True)
    try:
        DartsSearch.check_space(space, darts.get("depth"))
    except VaenasInputError as e:
        raise VaenasInputError(f"{e}; remove the darts block or use an MLP space with a mirrored decoder") from None
    return darts


class DartsSearch(nn.Module):
    @staticmethod
    def check_space(space: SearchSpace, depth: int | None = None) -> int:
        """The depth DARTS will search at; SpaceError if the space is not one it can search."""
        if tuple(space.family) != ("mlp",) or space.decoder != "mirror" or tuple(space.act_bits) != (None,) \
                or tuple(space.arithmetic) != ("float",):
            raise SpaceError("darts: needs an MLP-only space with a mirrored decoder and no activation quantisation "
                             "(act_bits null, arithmetic float)")
        if space.compression_keys:
            raise SpaceError(f"darts: cannot relax space.{space.compression_keys[0]} (the mixed model runs on the "
                             "supernet's shared dense weights); remove it from the space or the darts block")
        depth = depth if depth is not None else max(space.mlp["depth"])
        if depth not in space.mlp["depth"] or depth < 1:
            raise SpaceError(f"darts: depth {depth} is not a choice of mlp.depth {list(space.mlp['depth'])}")
        return depth

    def __init__(self, space: SearchSpace, depth: int | None = None):
        super().__init__()
        self.space = space
        self.depth = self.check_space(space, depth)
        self.net = MLPSupernet(space)
        self.widths = torch.tensor(space.mlp["width"], dtype=torch.float32)
        self.latents = torch.tensor(space.latent_dim, dtype=torch.float32)
        self.bits = list(space.weight_bits)
        self.template = ArchSpec.mlp((max(space.mlp["width"]),) * self.depth, max(space.latent_dim),
                                     bits=max(self.bits), **self._data_kw())
        self.layer_names = self.template.layer_names()
        n_bits = len(self.layer_names) if space.bits_per_layer else 1
        self.width_logits = nn.Parameter(torch.zeros(self.depth, len(self.widths)))
        self.latent_logits = nn.Parameter(torch.zeros(len(self.latents)))
        self.bit_logits = nn.Parameter(torch.zeros(n_bits, len(self.bits)))

    def _data_kw(self) -> dict:
        sp = self.space
        return {"activation": sp.activation[0], "input_shape": sp.input_shape, "likelihood": sp.likelihood}

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.width_logits, self.latent_logits, self.bit_logits]

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    # ------------------------------------------------------------------ expectations
    def _mask(self, logits: torch.Tensor, choices: torch.Tensor, n: int) -> torch.Tensor:
        p = torch.softmax(logits, -1)
        keep = (torch.arange(n, device=logits.device)[None, :] < choices.to(logits.device)[:, None]).float()
        return p @ keep  # (n,) expected "channel c is on"

    def _bit_probs(self, layer: int) -> torch.Tensor:
        return torch.softmax(self.bit_logits[layer if self.space.bits_per_layer else 0], -1)

    def expected_size_bytes(self) -> torch.Tensor:
        pw = torch.softmax(self.width_logits, -1)
        ew = pw @ self.widths.to(pw.device)  # E[width] per encoder layer
        el = torch.softmax(self.latent_logits, -1) @ self.latents.to(pw.device)
        n_in = float(self.net.n_in)
        fans = [(n_in, ew[0])] + [(ew[i - 1], ew[i]) for i in range(1, self.depth)]
        fans.append((ew[-1], 2 * el))  # head
        fans.append((el, ew[-1]))  # mirrored decoder
        fans += [(ew[i], ew[i - 1]) for i in range(self.depth - 1, 0, -1)]
        fans.append((ew[0], float(self.net.n_out)))  # output layer: the likelihood's parameters
        bits = torch.tensor([float(b) for b in self.bits], device=pw.device)
        total = torch.zeros((), device=pw.device)
        for j, (a, b) in enumerate(fans):
            eb = self._bit_probs(j) @ bits
            total = total + a * b * eb / 8.0
        return total

    def max_size_bytes(self) -> float:
        wmax, lmax, bmax = float(self.widths.max()), float(self.latents.max()), float(max(self.bits))
        n_in = float(self.net.n_in)
        n_out = float(self.net.n_out)
        n = n_in * wmax + (self.depth - 1) * wmax * wmax * 2 + 2 * wmax * lmax + lmax * wmax + wmax * n_out
        return n * bmax / 8.0

    # ------------------------------------------------------------------ the mixed model
    def _weight(self, w: torch.Tensor, layer: int) -> torch.Tensor:
        p = self._bit_probs(layer)
        return sum(p[k] * (w if b >= 32 else fake_quant_weight(w, b, 0)) for k, b in enumerate(self.bits))

    def neg_elbo(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The relaxed model's −ELBO: the widest spec's layer plan on the supernet's shared layers, each
        hidden layer's outputs scaled by the expected "unit is on" mask of its width, the latent by that
        of the latent size, every weight the bit-probability mixture of its quantised forms."""
        net, act, plan = self.net, get_activation(self.space.activation[0]).fn, layer_plan(self.template)
        shared = net.shared_layers(self.template)
        masks = [self._mask(self.width_logits[i], self.widths, net.max_width) for i in range(self.depth)]
        # mirrored: decoder layer k has the width of encoder layer depth-1-k
        unit_mask = {**{f"enc.fc{i}": masks[i] for i in range(self.depth)},
                     **{f"dec.fc{k}": masks[self.depth - 1 - k] for k in range(self.depth)}}
        lmask = self._mask(self.latent_logits, self.latents, net.max_latent)

        def chain(layers, h, j):
            for layer in layers:
                m = shared[layer.name]
                h = F.linear(h, self._weight(m.weight[:, :h.shape[1]], j), m.bias)
                h = act(h) * unit_mask[layer.name] if layer.op.act_after else h
                j += 1
            return h

        out = chain(plan.encoder, x.flatten(1), 0)
        mu, logvar = out[:, :net.max_latent], out[:, net.max_latent:]
        z = (mu + torch.exp(0.5 * logvar) * eps) * lmask
        out = chain(plan.decoder, z, len(plan.encoder))
        rec = -net.likelihood.log_prob(out.view(len(x), *self.template.output_shape), x)
        kl = (kl_terms(mu, logvar) * lmask).sum(1)
        return (rec + kl).mean()

    # ------------------------------------------------------------------ search and derive
    def search(self, train_x: torch.Tensor, val_x: torch.Tensor, lam: float, cfg: DartsConfig = DartsConfig()) -> dict:
        """Alternate weight steps (train) and architecture steps (val); returns the final expectations."""
        dev = torch.device(cfg.device)
        self.to(dev)
        g = torch.Generator(device=dev).manual_seed(cfg.seed)
        w_opt = torch.optim.Adam(self.weight_parameters(), lr=cfg.lr)
        a_opt = torch.optim.Adam(self.arch_parameters(), lr=cfg.arch_lr)
        cmax = self.max_size_bytes()
        tr, va = train_x.to(dev), val_x.to(dev)
        Lm = self.net.max_latent

        lik = self.net.likelihood

        def batch(data: torch.Tensor, training: bool) -> torch.Tensor:
            idx = torch.randint(len(data), (cfg.batch_size,), generator=g, device=dev)
            # training data are stored (e.g. uint8 grey levels), validation data already in model space
            return lik.train_batch(data[idx], g) if training else data[idx].float()

        for step in range(cfg.steps):
            x = batch(tr, True)
            loss = self.neg_elbo(x, torch.randn(len(x), Lm, generator=g, device=dev))
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            if step >= cfg.warmup_steps:
                xv = batch(va, False)
                cost = self.expected_size_bytes() / cmax
                aloss = self.neg_elbo(xv, torch.randn(len(xv), Lm, generator=g, device=dev)) + lam * cost
                a_opt.zero_grad(set_to_none=True)
                aloss.backward()
                a_opt.step()
        with torch.no_grad():
            return {"lam": lam, "expected_size_bytes": float(self.expected_size_bytes()),
                    "expected_cost_ratio": float(self.expected_size_bytes() / cmax)}

    @torch.no_grad()
    def derive(self) -> ArchSpec:
        widths = tuple(int(self.widths[int(i)]) for i in self.width_logits.argmax(-1))
        latent = int(self.latents[int(self.latent_logits.argmax())])
        picks = [self.bits[int(i)] for i in self.bit_logits.argmax(-1)]
        spec = ArchSpec.mlp(widths, latent, bits=32, **self._data_kw())
        n = len(spec.layer_names())
        spec = spec.replace(weight_bits=tuple(picks) if self.space.bits_per_layer else (picks[0],) * n)
        verdict = self.space.contains(spec)
        if not verdict:  # cannot happen for spaces accepted by __init__
            raise SpaceError(f"darts: derived spec is not in the space: {verdict.reason}")
        return spec


def lambda_sweep(space: SearchSpace, train_x: torch.Tensor, val_x: torch.Tensor, lambdas: list[float],
                 cfg: DartsConfig = DartsConfig(), depth: int | None = None) -> list[tuple[ArchSpec, dict]]:
    """One independent DARTS search per ``lam`` (same seed): the derived spec and its expectations."""
    out = []
    for lam in lambdas:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            d = DartsSearch(space, depth)
        info = d.search(train_x, val_x, lam, cfg)
        out.append((d.derive(), info))
    return out
