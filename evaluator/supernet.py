"""Training a weight-sharing supernet (sandwich rule + in-place distillation) and scoring specs on it.

Sandwich rule (Yu et al., BigNAS/"universally slimmable"): each step trains the largest spec,
the smallest spec and ``n_random`` random specs of the space on the same batch and noise; the
largest learns the −ELBO, the others the −ELBO plus ``kd_weight`` times in-place distillation
from the largest: the binary cross-entropy of their reconstruction logits against the largest
spec's (detached) pixel probabilities. It is a ``step_loss`` for the one training loop.

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
from .train import TrainConfig, TrainResult, resolve_device, train


@dataclass(frozen=True)
class SandwichConfig:
    n_random: int = 2
    kd_weight: float = 1.0
    seed: int = 0


def sandwich_loss(space: SearchSpace, cfg: SandwichConfig = SandwichConfig()):
    big, small = extreme_spec(space, "max"), extreme_spec(space, "min")
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
        for spec in [small] + [space.sample(rng) for _ in range(cfg.n_random)]:
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
