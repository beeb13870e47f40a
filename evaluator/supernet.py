"""Training a weight-sharing supernet (sandwich rule + in-place distillation) and scoring specs on it.

Sandwich rule (Yu et al., BigNAS/"universally slimmable"): each step trains the largest spec,
the smallest spec and ``n_random`` random specs of the space on the same batch and noise; the
largest learns the −ELBO, the others the −ELBO plus ``kd_weight`` times in-place distillation
from the largest: the binary cross-entropy of their reconstruction logits against the largest
spec's (detached) pixel probabilities. With elastic depth (per-depth boundary layers, see
``search_space/supernet.py``) the widest spec of *every* depth is trained each step
(``per_depth_max``), so shallow specs' own layers are not left to random sampling. It is a
``step_loss`` for the one training loop.

Scores from inherited weights are *estimates* (``neg_elbo_is_estimate=True`` wherever shown).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from search_space import ArchSpec, SearchSpace
from search_space.supernet import MLPSupernet, extreme_spec

from .data import Splits
from .elbo import evaluate_neg_elbo
from .latency import LatencyConfig
from .objectives import EvalFailure, score_model
from .train import TrainConfig, TrainingDiverged, TrainResult, resolve_device, train


@dataclass(frozen=True)
class SandwichConfig:
    n_random: int = 2
    kd_weight: float = 1.0
    seed: int = 0
    per_depth_max: bool = True


def sandwich_loss(space: SearchSpace, cfg: SandwichConfig = SandwichConfig()):
    big, small = extreme_spec(space, "max"), extreme_spec(space, "min")
    others = [small]
    if cfg.per_depth_max:
        others += [extreme_spec(space, "max", depth=d) for d in sorted(space.mlp["depth"])
                   if d != len(big.enc_hidden)]
    rng = random.Random(cfg.seed)

    def loss(net: MLPSupernet, x: torch.Tensor, g: torch.Generator, beta: float) -> torch.Tensor:
        eps = torch.randn((len(x), net.max_latent), generator=g, device=x.device)

        def terms(spec: ArchSpec):
            logits, mu, logvar = net(x, spec, eps[:, : spec.latent_dim])
            rec = F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(1)
            kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
            return logits, (rec + beta * kl).mean()

        t_logits, total = terms(big)
        target = torch.sigmoid(t_logits.detach()).flatten(1)
        for spec in others + [space.sample(rng) for _ in range(cfg.n_random)]:
            logits, l = terms(spec)
            kd = F.binary_cross_entropy_with_logits(logits.flatten(1), target, reduction="none").sum(1).mean()
            total = total + l + cfg.kd_weight * kd
        return total

    return loss


def train_supernet(space: SearchSpace, data: Splits, cfg: TrainConfig, sandwich: SandwichConfig = SandwichConfig(),
                   progress: bool = False) -> tuple[MLPSupernet, TrainResult]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = MLPSupernet(space)
    net.to(resolve_device(cfg.device))
    res = train(net, data.train, cfg, step_loss=sandwich_loss(space, sandwich), progress=progress)
    return net, res


def estimate_neg_elbo(net: MLPSupernet, spec: ArchSpec, data: torch.Tensor, seed: int = 0) -> float:
    """Validation −ELBO of ``spec`` with inherited weights - an ESTIMATE, not a standalone-trained figure."""
    return evaluate_neg_elbo(net.extract(spec), data, seed=seed)["neg_elbo"]


@dataclass(frozen=True)
class SupernetConfig:
    """A study's supernet-backed evaluation (the ``supernet:`` block of a study config)."""

    epochs: float = 10.0  # supernet training epochs (sandwich steps over the training split)
    n_random: int = 2
    kd_weight: float = 1.0
    finetune_steps: int = 0  # per-spec fine-tune of the inherited weights before scoring (0: none)
    n_val: int | None = 2000  # validation images the estimate is computed on (None: all)
    remeasure: int = 10  # front specs re-measured by standalone training after the search

    def sandwich(self, seed: int) -> SandwichConfig:
        return SandwichConfig(n_random=self.n_random, kd_weight=self.kd_weight, seed=seed)


class SupernetEvaluator:
    """Scores specs with weights inherited from a trained supernet: the −ELBO is an ESTIMATE.

    Costs (size, FLOPs, params) are exact and latency is measured on the extracted model, as for
    standalone trials; only the −ELBO differs, and every result carries ``neg_elbo_is_estimate``.
    Same ``evaluate_with_model`` interface as :class:`~evaluator.Evaluator`.
    """

    def __init__(self, net: MLPSupernet, data: Splits, train_cfg: TrainConfig, latency_cfg: LatencyConfig,
                 cfg: SupernetConfig = SupernetConfig()):
        self.net, self.data, self.train_cfg, self.latency_cfg, self.cfg = net, data, train_cfg, latency_cfg, cfg
        self.val = data.val if cfg.n_val is None else data.val[: cfg.n_val]

    def evaluate(self, spec: ArchSpec, seed: int | None = None):
        return self.evaluate_with_model(spec, seed)[0]

    def evaluate_with_model(self, spec: ArchSpec, seed: int | None = None):
        seed = self.train_cfg.seed if seed is None else seed
        model = self.net.extract(spec)
        seconds, epochs = 0.0, 0.0
        if self.cfg.finetune_steps > 0:
            ft = TrainConfig(**{**self.train_cfg.to_dict(), "seed": seed, "max_steps": self.cfg.finetune_steps,
                                "lr_schedule": "constant", "qat_delay": 0.0, "kl_warmup_steps": 0})
            try:
                res = train(model, self.data.train, ft)
            except TrainingDiverged as e:
                return EvalFailure(spec.id, f"fine-tune diverged: {e}"), None
            seconds, epochs = res.seconds, res.epochs
        return score_model(model, spec, self.val, self.latency_cfg, seed=seed, train_seconds=seconds, epochs=epochs,
                           estimate=True)
