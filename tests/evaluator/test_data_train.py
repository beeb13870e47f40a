import math

import pytest
import torch

from evaluator import (
    DataUnavailableError, TrainConfig, TrainingDiverged, evaluate_neg_elbo, iwae_nll, load_data, neg_elbo_terms,
    lr_at, reconstruction_error, seeded_model, train,
)
from search_space import ArchSpec, VaenasInputError


def test_splits_shapes_disjoint_and_fixed(data_root):
    d = load_data("mnist", data_root)
    assert d.train.shape == (50_000, 1, 28, 28) and d.train.dtype == torch.uint8
    assert d.val.shape == (10_000, 1, 28, 28) and d.test.shape == (10_000, 1, 28, 28)
    assert set(torch.unique(d.val).tolist()) == {0.0, 1.0}
    again = load_data("mnist", data_root)
    assert torch.equal(d.val, again.val) and torch.equal(d.test, again.test) and torch.equal(d.train, again.train)
    # validation images are carved from the training set and are not in the train split
    train_keys = {hash(img.numpy().tobytes()) for img in d.train[:50_000:7]}
    from evaluator.sources import read_torchvision
    tr = read_torchvision("MNIST", data_root, {}, "mnist").train
    assert len(tr) == 60_000
    val_u8 = tr[torch.randperm(60_000, generator=torch.Generator().manual_seed(0))[-10_000:]]
    assert not train_keys & {hash(img.numpy().tobytes()) for img in val_u8}


def test_fashion_mnist_and_subsets(data_root):
    d = load_data("fashion_mnist", data_root, n_train=100, n_eval=50)
    assert d.train.shape == (100, 1, 28, 28) and d.val.shape == (50, 1, 28, 28) and d.name == "fashion_mnist"


def test_data_root_from_env(data_root, monkeypatch):
    monkeypatch.setenv("VAENAS_DATA", str(data_root))
    assert load_data("mnist", n_train=10, n_eval=10).train.shape[0] == 10


def test_missing_dataset_offline_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"file://{tmp_path}/nowhere/"])
    with pytest.raises(DataUnavailableError) as e:
        load_data("mnist", tmp_path / "empty")
    msg = str(e.value)
    assert "MNIST/raw" in msg and "copy" in msg and "\n" not in msg
    with pytest.raises(VaenasInputError, match="dataset: 'cifar' is unknown"):
        load_data("cifar", tmp_path)


def test_training_lowers_the_loss_and_is_seeded(mnist_small):
    spec = ArchSpec.mlp((64,), 8, bits=4)
    cfg = TrainConfig(epochs=2, batch_size=100, seed=3, device="cpu")  # bitwise: CPU
    a = seeded_model(spec, 1)
    before = evaluate_neg_elbo(a, mnist_small.val)["neg_elbo"]
    res = train(a, mnist_small.train, cfg)
    after = evaluate_neg_elbo(a, mnist_small.val)["neg_elbo"]
    assert res.steps == 40 and math.isclose(res.epochs, 2.0)
    assert after < before - 100, (before, after)
    b = seeded_model(spec, 1)
    train(b, mnist_small.train, cfg)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    c = seeded_model(spec, 1)
    train(c, mnist_small.train, TrainConfig(epochs=2, batch_size=100, seed=4, device="cpu"))
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_max_steps_warmup_and_cosine(mnist_small):
    spec = ArchSpec.mlp((32,), 4)
    res = train(seeded_model(spec, 0), mnist_small.train,
                TrainConfig(epochs=5, max_steps=7, batch_size=64, kl_warmup_steps=5, lr_schedule="cosine"), log_every=3)
    assert res.steps == 7 and [s for s, _ in res.history] == [3, 6, 7]


def test_lr_warmup_ramps_then_follows_the_schedule():
    const = TrainConfig(lr=1e-3, lr_warmup_steps=4)
    assert [lr_at(const, s, 10) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    cos = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_warmup_steps=4)
    plain = TrainConfig(lr=1e-3, lr_schedule="cosine")
    assert lr_at(cos, 1, 10) == pytest.approx(lr_at(plain, 1, 10) * 2 / 4)
    assert [lr_at(cos, s, 10) for s in range(4, 10)] == [lr_at(plain, s, 10) for s in range(4, 10)]
    assert lr_at(plain, 9, 10) == pytest.approx(1e-3 * plain.lr_min_ratio)


def test_lr_warmup_changes_training_only_through_the_lr(mnist_small):
    """Warm-up over 0 or 1 step is no warm-up; over 20 steps the run differs (the ramp is applied)."""
    spec = ArchSpec.mlp((32,), 4)
    runs = []
    for w in (0, 1, 20):
        m = seeded_model(spec, 0)
        train(m, mnist_small.train, TrainConfig(max_steps=20, epochs=0, batch_size=64, lr=1e-2, lr_warmup_steps=w))
        runs.append(list(m.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, c) for a, c in zip(runs[0], runs[2]))


def test_divergence_is_reported_not_hidden(mnist_small):
    with pytest.raises(TrainingDiverged, match="mean loss"):
        train(seeded_model(ArchSpec.mlp((32,), 4), 0), mnist_small.train,
              TrainConfig(epochs=1, batch_size=100, lr=1e6), log_every=5)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=-1.0), dict(lr_schedule="step"),
                                 dict(lr_warmup_steps=-1)])
def test_bad_train_config(bad):
    with pytest.raises(VaenasInputError):
        TrainConfig(**bad)


def _reference_iwae(model, x, k, seed):
    g = torch.Generator().manual_seed(seed)
    mu, logvar = model.encode(x)
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((k, len(x), mu.shape[1]), generator=g)
    lls = []
    for i in range(len(x)):
        q = torch.distributions.Normal(mu[i], std[i])
        p = torch.distributions.Normal(torch.zeros_like(mu[i]), torch.ones_like(mu[i]))
        logw = []
        for j in range(k):
            z = mu[i] + std[i] * eps[j, i]
            logits = model.decode(z[None]).flatten()
            lpx = torch.distributions.Bernoulli(logits=logits).log_prob(x[i].flatten()).sum()
            logw.append(lpx + p.log_prob(z).sum() - q.log_prob(z).sum())
        lls.append(torch.logsumexp(torch.stack(logw), 0) - math.log(k))
    return -torch.stack(lls).mean().item()


def test_iwae_matches_a_direct_implementation_and_bounds(mnist_small):
    torch.manual_seed(0)
    model = seeded_model(ArchSpec.mlp((32,), 3), 0)
    train(model, mnist_small.train, TrainConfig(epochs=1, batch_size=100, device="cpu"))
    x = mnist_small.test[:6]
    with torch.no_grad():
        ref = _reference_iwae(model, x, k=5, seed=11)
    assert math.isclose(iwae_nll(model, x, k=5, seed=11), ref, rel_tol=1e-5)
    data = mnist_small.test[:200]
    elbo = evaluate_neg_elbo(model, data)["neg_elbo"]
    k1 = iwae_nll(model, data, k=1, seed=0)
    k200 = iwae_nll(model, data, k=200, seed=0, max_rows=4096)  # chunked over samples and images
    assert abs(k1 - elbo) < 2.0  # IWAE-1 is a one-sample ELBO estimate
    assert k200 < elbo - 1.0  # more samples tighten the bound


def test_neg_elbo_terms_and_recon_error():
    model = seeded_model(ArchSpec.mlp((16,), 2), 0)
    x = torch.randint(0, 2, (4, 1, 28, 28)).float()
    rec, kl = neg_elbo_terms(model, x, torch.zeros(4, 2))
    assert rec.shape == kl.shape == (4,) and torch.all(kl >= 0) and torch.all(rec > 0)
    err = reconstruction_error(model, x)
    assert 0 < err < 1
    # BCE at z = mu, per pixel, is the reconstruction term of the −ELBO with zero noise / 784
    bce = reconstruction_error(model, x, metric="bce")
    assert math.isclose(bce, rec.mean().item() / 784, rel_tol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        reconstruction_error(model, x, metric="l1")


def test_the_loops_adam_is_fused_on_cpu_and_steps_like_the_reference():
    """The training loop's optimiser (``evaluator.train.adam``: the fused kernel) takes the same steps as
    ``torch.optim.Adam``'s default implementation, to float rounding."""
    from evaluator.train import adam

    torch.manual_seed(0)
    a = torch.nn.Linear(20, 5)
    b = torch.nn.Linear(20, 5)
    b.load_state_dict(a.state_dict())
    oa, ob = adam(a.parameters(), 1e-2, torch.device("cpu")), torch.optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    assert oa.defaults["fused"] is True
    for _ in range(20):
        x = torch.randn(8, 20)
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            m(x).pow(2).sum().backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)
