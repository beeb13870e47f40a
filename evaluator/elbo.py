"""−ELBO and the IWAE-k NLL bound, in nats per image, for Bernoulli-likelihood VAEs."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def neg_elbo_terms(model, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction NLL ``-log p(x|z)`` (one z sample) and analytic ``KL(q(z|x) || N(0, I))``."""
    logits, mu, logvar = model(x, eps)
    rec = F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1), reduction="none").sum(1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)
    return rec, kl


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate_neg_elbo(model, data: torch.Tensor, *, batch_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean −ELBO, reconstruction term and KL over ``data`` (binarised), with seeded noise."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    g = torch.Generator(device=device).manual_seed(seed)
    tot = {"neg_elbo": 0.0, "rec": 0.0, "kl": 0.0}
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].to(device, torch.float32)
        eps = torch.randn((len(x), model.spec.latent_dim), generator=g, device=device)
        rec, kl = neg_elbo_terms(model, x, eps)
        tot["rec"] += rec.sum().item()
        tot["kl"] += kl.sum().item()
    model.train(was_training)
    n = len(data)
    out = {k: v / n for k, v in tot.items()}
    out["neg_elbo"] = out["rec"] + out["kl"]
    return out


@torch.inference_mode()
def iwae_nll(model, data: torch.Tensor, *, k: int = 1000, seed: int = 0, max_rows: int = 32768) -> float:
    """IWAE-k estimate of the NLL (an upper bound that tightens as ``k`` grows), mean over ``data``.

    Work is batched over images and chunks of samples so that at most ``max_rows`` decoder rows
    are alive at once; ``k=1000`` over 10,000 images fits in a few hundred MB.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    g = torch.Generator(device=device).manual_seed(seed)
    d = model.spec.latent_dim
    img_batch = max(1, min(len(data), max_rows // min(k, max_rows)))
    k_chunk = max(1, min(k, max_rows // img_batch))
    total = 0.0
    for i in range(0, len(data), img_batch):
        x = data[i : i + img_batch].to(device, torch.float32)
        b = len(x)
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        xf = x.flatten(1)
        chunks = []
        for j in range(0, k, k_chunk):
            kc = min(k_chunk, k - j)
            eps = torch.randn((kc, b, d), generator=g, device=device)
            z = mu + std * eps
            logits = model.decode(z.reshape(kc * b, d)).reshape(kc, b, -1)
            log_px = -F.binary_cross_entropy_with_logits(logits, xf.expand(kc, b, -1), reduction="none").sum(-1)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            chunks.append(log_px + log_pz - log_qz)
        log_w = torch.cat(chunks, 0)
        total -= (torch.logsumexp(log_w, 0) - math.log(k)).sum().item()
    model.train(was_training)
    return total / len(data)


@torch.inference_mode()
def reconstruction_error(model, data: torch.Tensor, *, batch_size: int = 1000, metric: str = "mse") -> float:
    """Per-pixel reconstruction error of the decoder's mean at ``z = mu`` (no sampling), averaged over
    every pixel of ``data`` (binarised): ``metric="mse"`` - squared error between the input bits and
    ``sigmoid(logits)``; ``"bce"`` - binary cross-entropy in nats (the reconstruction term of the
    −ELBO at the posterior mean, divided by the number of pixels)."""
    if metric not in ("mse", "bce"):
        raise ValueError(f"reconstruction_error: metric must be 'mse' or 'bce', got {metric!r}")
    was_training = model.training
    model.eval()
    device = _device_of(model)
    tot = 0.0
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].to(device, torch.float32)
        mu, _ = model.encode(x)
        logits = model.decode(mu)
        if metric == "mse":
            tot += (torch.sigmoid(logits) - x).pow(2).sum().item()
        else:
            tot += F.binary_cross_entropy_with_logits(logits, x.view_as(logits), reduction="sum").item()
    model.train(was_training)
    return tot / data.numel()
