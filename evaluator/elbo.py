"""−ELBO and the IWAE-k NLL bound, in nats per example, for any likelihood; bits per dimension.

The reconstruction term is the spec's likelihood's ``log_prob`` (``search_space/likelihood.py``);
nothing here knows which likelihood it is. Data passed in are in model space (``Splits.val`` /
``Splits.test``, prepared once by the likelihood). ``bits_per_dim`` converts nats per example to
bits per data dimension, the unit published image results use: ``nats / (dims * ln 2)``.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def bits_per_dim(nats: float, dims: int) -> float:
    """Nats per example -> bits per data dimension."""
    return nats / (dims * math.log(2))


def kl_terms(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per latent dimension: KL(N(mu, exp(logvar)) || N(0, 1)) - the one owner of the ELBO's KL."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_gaussians(mu_p: torch.Tensor, lv_p: torch.Tensor, mu_q: torch.Tensor, lv_q: torch.Tensor) -> torch.Tensor:
    """Per example: KL(N(mu_p, exp(lv_p)) || N(mu_q, exp(lv_q))) of diagonal Gaussians, summed over dimensions."""
    return 0.5 * (lv_q - lv_p + (lv_p.exp() + (mu_p - mu_q).pow(2)) / lv_q.exp() - 1).sum(1)


def kl_std_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Analytic ``KL(N(mu, exp(logvar)) || N(0, I))`` per example."""
    return kl_terms(mu, logvar).sum(1)


def neg_elbo_terms(model, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example reconstruction NLL ``-log p(x|z)`` (one z sample) and analytic ``KL(q(z|x) || N(0, I))``."""
    out, mu, logvar = model(x, eps)
    return -model.likelihood.log_prob(out, x), kl_std_normal(mu, logvar)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def evaluate_neg_elbo(model, data: torch.Tensor, *, batch_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean −ELBO, reconstruction term and KL (nats per example) over ``data`` (model space), seeded noise;
    for image models also ``bits_per_dim`` (the −ELBO in bits per data dimension)."""
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
    if model.spec.is_image:
        out["bits_per_dim"] = bits_per_dim(out["neg_elbo"], model.spec.n_inputs)
    return out


@torch.inference_mode()
def iwae_nll(model, data: torch.Tensor, *, k: int = 1000, seed: int = 0, max_rows: int = 32768) -> float:
    """IWAE-k estimate of the NLL in nats per example (an upper bound that tightens as ``k`` grows), mean
    over ``data``.

    Work is batched over images and chunks of samples so that at most ``max_rows`` decoder rows
    are alive at once; ``k=1000`` over 10,000 images fits in a few hundred MB.
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    g = torch.Generator(device=device).manual_seed(seed)
    d = model.spec.latent_dim
    lik = model.likelihood
    img_batch = max(1, min(len(data), max_rows // min(k, max_rows)))
    k_chunk = max(1, min(k, max_rows // img_batch))
    total = 0.0
    for i in range(0, len(data), img_batch):
        x = data[i : i + img_batch].to(device, torch.float32)
        b = len(x)
        mu, logvar = model.encode(x)
        std = torch.exp(0.5 * logvar)
        chunks = []
        for j in range(0, k, k_chunk):
            kc = min(k_chunk, k - j)
            eps = torch.randn((kc, b, d), generator=g, device=device)
            z = mu + std * eps
            out = model.decode(z.reshape(kc * b, d))
            xs = x.unsqueeze(0).expand(kc, *x.shape).reshape(kc * b, *x.shape[1:])
            log_px = lik.log_prob(out, xs).view(kc, b)
            log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
            log_qz = -0.5 * (eps.pow(2) + LOG_2PI + logvar).sum(-1)
            chunks.append(log_px + log_pz - log_qz)
        log_w = torch.cat(chunks, 0)
        total -= (torch.logsumexp(log_w, 0) - math.log(k)).sum().item()
    model.train(was_training)
    return total / len(data)


@torch.inference_mode()
def reconstruction_error(model, data: torch.Tensor, *, batch_size: int = 1000, metric: str = "mse") -> float:
    """Per-dimension reconstruction error of the decoder at ``z = mu`` (no sampling), averaged over every
    dimension of ``data`` (model space): ``metric="mse"`` - squared error between the data and the
    likelihood's mean (Bernoulli: ``sigmoid(logits)``); ``"nll"`` - ``-log p(x | z = mu)`` in nats (the
    reconstruction term of the −ELBO at the posterior mean) per dimension; ``"bce"`` - the same for a
    Bernoulli model (its binary cross-entropy)."""
    if metric not in ("mse", "nll", "bce"):
        raise ValueError(f"reconstruction_error: metric must be 'mse', 'nll' or 'bce', got {metric!r}")
    if metric == "bce" and model.spec.likelihood != "bernoulli":
        raise ValueError(f"reconstruction_error: 'bce' is the Bernoulli NLL; this model's likelihood is "
                         f"{model.spec.likelihood!r}: use metric='nll'")
    lik = model.likelihood
    was_training = model.training
    model.eval()
    device = _device_of(model)
    tot = 0.0
    for i in range(0, len(data), batch_size):
        x = data[i : i + batch_size].to(device, torch.float32)
        mu, _ = model.encode(x)
        out = model.decode(mu)
        if metric == "mse":
            tot += (lik.mean(out) - x.view_as(lik.mean(out))).pow(2).sum().item()
        else:
            tot -= lik.log_prob(out, x).sum().item()
    model.train(was_training)
    return tot / data.numel()
