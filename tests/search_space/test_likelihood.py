"""Likelihood correctness: −ELBO, IWAE and bits/dim against independent computations written here
from ``torch.distributions`` (and the logistic CDF in closed form), for every likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from evaluator import bits_per_dim, evaluate_neg_elbo, iwae_nll, reconstruction_error, seeded_model
from search_space import LIKELIHOODS, ArchSpec, get_likelihood

# the decoder's raw log-scale output passes through a smooth floor (written out here, independently)
FLOOR = {"discretized_logistic": -7.0, "gaussian": math.log(1e-3)}


def _log_scale(raw: torch.Tensor, lik: str) -> torch.Tensor:
    f = FLOOR[lik]
    return f + torch.log1p(torch.exp(raw - f))


def _logistic_cdf(v, loc, scale):
    return torch.sigmoid((v - loc) / scale)


def reference_log_px(lik: str, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | decoder output) per example, float64, from torch.distributions / closed-form CDFs."""
    out, x = out.double(), x.double().view(len(x), -1)
    if lik == "bernoulli":
        return Bernoulli(logits=out.flatten(1)).log_prob(x).sum(1)
    loc, raw = out.chunk(2, dim=1)
    loc, scale = loc.flatten(1), torch.exp(_log_scale(raw, lik)).flatten(1)
    if lik == "gaussian":
        return Normal(loc, scale).log_prob(x).sum(1)
    # discretised logistic over 256 bins of [-1, 1]; edge bins take the tails. P(bin) = F(hi) - F(lo) with
    # the logistic CDF F, computed in log space on the side of the bin away from the mode (no cancellation)
    a, b = (x + 1 / 255 - loc) / scale, (x - 1 / 255 - loc) / scale
    ls = torch.nn.functional.logsigmoid
    left = ls(a) + torch.log(-torch.expm1(ls(b) - ls(a)))  # F(hi) - F(lo)
    right = ls(-b) + torch.log(-torch.expm1(ls(-a) - ls(-b)))  # (1 - F(lo)) - (1 - F(hi)): the same mass
    mid = torch.where(x - loc > 0, right, left)
    lp = torch.where(x < -1 + 1e-6, ls(a), torch.where(x > 1 - 1e-6, ls(-b), mid))
    return lp.sum(1)


SPECS = {
    "bernoulli": ArchSpec.mlp((12,), 3, input_shape=(1, 4, 5)),
    "discretized_logistic": ArchSpec(family="conv", enc_hidden=(), latent_dim=3, weight_bits=(32,) * 4,
                                     enc_channels=(4,), kernels=(3,), strides=(2,), input_shape=(3, 6, 6),
                                     likelihood="discretized_logistic"),
    "gaussian": ArchSpec.mlp((9,), 2, input_shape=(7,), likelihood="gaussian"),
}


def _data(lik: str, n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    shape = (n, *SPECS[lik].input_shape)
    if lik == "bernoulli":
        return torch.bernoulli(torch.full(shape, 0.4), generator=g)
    if lik == "discretized_logistic":  # model space: 2 v / 255 - 1, with both edges present
        v = torch.randint(0, 256, shape, generator=g).float()
        v.view(n, -1)[:, 0], v.view(n, -1)[:, 1] = 0, 255
        return v * 2 / 255 - 1
    return torch.randn(shape, generator=g) * 1.5


def _model(lik: str):
    torch.manual_seed(0)
    model = seeded_model(SPECS[lik], 1)
    with torch.no_grad():  # a decoder far from its initial point: large and small scales, shifted locs
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.mark.parametrize("lik", sorted(LIKELIHOODS))
def test_neg_elbo_matches_an_independent_computation(lik):
    model, x = _model(lik), _data(lik)
    seed = 3
    got = evaluate_neg_elbo(model, x, seed=seed)
    eps = torch.randn((len(x), model.spec.latent_dim), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        out = model.decode(mu + torch.exp(0.5 * logvar) * eps)
    rec = -reference_log_px(lik, out, x)
    q = Normal(mu.double(), torch.exp(0.5 * logvar.double()))
    kl = kl_divergence(q, Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))).sum(1)
    assert got["rec"] == pytest.approx(rec.mean().item(), rel=1e-5)
    assert got["kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert got["neg_elbo"] == pytest.approx((rec + kl).mean().item(), rel=1e-5)
    dims = math.prod(model.spec.input_shape)
    if model.spec.is_image:
        assert got["bits_per_dim"] == pytest.approx(got["neg_elbo"] / (dims * math.log(2)), rel=1e-12)
    else:
        assert "bits_per_dim" not in got
    assert bits_per_dim(1000.0, 784) == pytest.approx(1000.0 / (784 * math.log(2)))


@pytest.mark.parametrize("lik", sorted(LIKELIHOODS))
def test_iwae_matches_an_independent_computation(lik):
    model, x = _model(lik), _data(lik, n=10)
    k, seed = 16, 2
    got = iwae_nll(model, x, k=k, seed=seed)
    g = torch.Generator().manual_seed(seed)
    d = model.spec.latent_dim
    with torch.no_grad():
        mu, logvar = model.encode(x)
        eps = torch.randn((k, len(x), d), generator=g)  # one chunk: k x batch fits max_rows
        std = torch.exp(0.5 * logvar)
        z = mu + std * eps
        out = model.decode(z.reshape(k * len(x), d))
        log_px = reference_log_px(lik, out, x.repeat(k, *([1] * (x.dim() - 1)))).view(k, len(x))
        prior, q = Normal(0.0, 1.0), Normal(mu.double(), std.double())
        log_w = log_px + prior.log_prob(z.double()).sum(-1) - q.log_prob(z.double()).sum(-1)
        ref = -(torch.logsumexp(log_w, 0) - math.log(k)).mean().item()
    assert got == pytest.approx(ref, rel=1e-5)
    assert got <= evaluate_neg_elbo(model, x, seed=seed)["neg_elbo"] + 5.0  # a tighter bound, up to noise


@pytest.mark.parametrize("lik", ["discretized_logistic", "gaussian"])
def test_log_prob_over_sharp_and_wide_scales(lik):
    g = torch.Generator().manual_seed(1)
    n, d = 64, 30
    loc = torch.rand(n, d, generator=g) * 3 - 1.5
    raw = torch.rand(n, d, generator=g) * 10 - 9  # log-scales from the floor up to e^1
    x = torch.randint(0, 256, (n, d), generator=g).float() * 2 / 255 - 1
    out = torch.cat([loc, raw], 1)
    got = get_likelihood(lik).log_prob(out, x).double()
    ref = reference_log_px(lik, out, x)
    assert torch.isfinite(ref).all()
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-3)


def test_discretized_logistic_is_a_distribution_over_the_256_bins():
    lik = get_likelihood("discretized_logistic")
    bins = torch.arange(256, dtype=torch.float64).float() * 2 / 255 - 1  # every 8-bit value, model space
    for loc, raw in ((0.0, -3.0), (0.9, -6.0), (-1.3, 0.5), (0.2, -20.0)):
        out = torch.tensor([[loc, raw]]).repeat(256, 1)
        p = torch.exp(lik.log_prob(out.view(256, 2), bins.view(256, 1)).double())
        assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
    # a sharp logistic on a bin's centre: P = sigmoid(h / s) - sigmoid(-h / s), h half a bin, s = e^-7 (the floor)
    h_over_s = (1 / 255) / math.exp(-7 + math.log1p(math.exp(-20 + 7)))
    centre = torch.tensor([[bins[100].item(), -20.0]])
    p = math.exp(lik.log_prob(centre, bins[100].view(1, 1)).item())
    assert p == pytest.approx(1 / (1 + math.exp(-h_over_s)) - 1 / (1 + math.exp(h_over_s)), rel=1e-4)


def test_reconstruction_error_metrics_read_the_likelihood():
    for lik in LIKELIHOODS:
        model, x = _model(lik), _data(lik)
        with torch.no_grad():
            out = model.decode(model.encode(x)[0])
        nll = -reference_log_px(lik, out, x).sum().item() / x.numel()
        assert reconstruction_error(model, x, metric="nll") == pytest.approx(nll, rel=1e-5)
        mean = get_likelihood(lik).mean(out)
        assert reconstruction_error(model, x, metric="mse") == pytest.approx(
            (mean - x.view_as(mean)).pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="use metric='nll'"):
        reconstruction_error(_model("gaussian"), _data("gaussian"), metric="bce")


@pytest.mark.parametrize("lik", sorted(LIKELIHOODS))
def test_samples_and_distillation_are_consistent(lik):
    L = get_likelihood(lik)
    model, x = _model(lik), _data(lik)
    with torch.no_grad():
        out = model.decode(model.encode(x)[0])
    s = L.sample(out, torch.Generator().manual_seed(0))
    assert s.shape == x.view(len(x), *model.spec.input_shape).shape and torch.isfinite(s).all()
    if lik == "bernoulli":
        assert set(torch.unique(s).tolist()) <= {0.0, 1.0}
    if lik == "discretized_logistic":
        assert torch.allclose(torch.round((s + 1) * 127.5), (s + 1) * 127.5, atol=1e-4)  # bin centres
    d_self = L.distill(out, out)
    d_other = L.distill(out + 0.5, out)  # a student away from the teacher
    assert (d_other > d_self).all()  # pulled toward the teacher: minimal at the teacher itself
    if lik != "bernoulli":
        assert torch.allclose(d_self, torch.zeros_like(d_self), atol=1e-5)


def test_spec_output_shape_and_head_size_follow_the_likelihood():
    from evaluator import count_flops, count_params

    base = ArchSpec.mlp((16,), 4, input_shape=(1, 6, 6))
    dl = base.replace(likelihood="discretized_logistic")
    assert base.output_shape == (1, 6, 6) and dl.output_shape == (2, 6, 6)
    # the output layer emits loc and log-scale: 16 x 36 more weights and 36 more biases
    assert count_params(dl) - count_params(base) == 16 * 36 + 36
    assert count_flops(dl).per_layer["dec.out"] == 2 * count_flops(base).per_layer["dec.out"]
    conv = SPECS["discretized_logistic"]
    assert conv.output_shape == (6, 6, 6)
    with torch.no_grad():
        out, _, _ = seeded_model(conv, 0)(torch.zeros(2, 3, 6, 6))
    assert out.shape == (2, 6, 6, 6)


def test_softplus_matches_float64_and_its_gradient_is_the_sigmoid():
    """The likelihoods' own softplus (a faster CPU path than ``log1p``) against float64, over the whole range."""
    from search_space.likelihood import softplus

    t = torch.cat([torch.linspace(-90, 90, 180001), torch.tensor([0.0, 1e-8, -1e-8, 1e4, -1e4])])
    ref = torch.nn.functional.softplus(t.double(), threshold=40)  # exact to 1e-17 in float64
    got = softplus(t).double()
    assert (got - ref).abs().max() < 1e-6
    normal = ref > 1e-30  # below that the float32 result is subnormal
    assert ((got - ref).abs() / ref)[normal].max() < 5e-7
    assert torch.isinf(softplus(torch.tensor(float("inf")))) and softplus(torch.tensor(-float("inf"))) == 0
    x = torch.randn(64, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (x,)) and torch.autograd.gradgradcheck(softplus, (x,))
    (g,) = torch.autograd.grad(softplus(x).sum(), x)
    assert torch.allclose(g, torch.sigmoid(x))


def test_bernoulli_draws_are_torch_bernoulli_on_cpu():
    """``rand < p`` draws the same bits from the same generator as ``torch.bernoulli`` (CPU), p = 0 and 1 included."""
    from search_space.likelihood import bernoulli

    p = torch.rand(300, 784)
    p[0], p[1] = 0.0, 1.0
    for seed in (0, 7):
        a = bernoulli(p, torch.Generator().manual_seed(seed))
        b = torch.bernoulli(p, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a, b)
    assert a[0].sum() == 0 and a[1].sum() == 784
