import math

import pytest
import torch

from evaluator import (
    EvalFailure, Evaluator, LatencyConfig, Objectives, TrainConfig, check_objectives, deployable_model,
    float_model, measure_latency, seeded_model, train,
)
from search_space import ArchSpec, VaenasInputError


@pytest.fixture(scope="module")
def trained_4bit(mnist_small):
    m = seeded_model(ArchSpec.mlp((64,), 8, bits=4), 0)
    train(m, mnist_small.train, TrainConfig(epochs=2, batch_size=100, device="cpu"))
    return m


def test_float_model_equals_fake_quant(trained_4bit, mnist_small):
    fm = float_model(trained_4bit)
    x = mnist_small.val[:50]
    eps = torch.zeros(50, 8)
    with torch.no_grad():
        assert torch.allclose(fm(x, eps)[0], trained_4bit(x, eps)[0], atol=1e-4)


def test_int8_model_stays_close_to_fake_quant(trained_4bit, mnist_small):
    deploy, path = deployable_model(trained_4bit)
    assert path == "int8-dynamic-linear"
    assert sum("quantized.dynamic" in type(m).__module__ for m in deploy.modules()) == 4  # all four Linears run int8
    x = mnist_small.val[:200]
    with torch.no_grad():
        mu, _ = trained_4bit.encode(x)
        ref = torch.sigmoid(trained_4bit.decode(mu))
        got = torch.sigmoid(deploy(x))
    assert (got - ref).abs().mean() < 0.01
    assert (got - ref).abs().max() < 0.15


def test_fp32_path_when_any_layer_is_float():
    m = seeded_model(ArchSpec(family="mlp", enc_hidden=(16,), latent_dim=2, weight_bits=(4, 4, 4, 32)), 0)
    assert deployable_model(m)[1] == "fp32"
    conv = seeded_model(ArchSpec(family="conv", enc_channels=(4,), kernels=(3,), strides=(2,), enc_hidden=(),
                                 latent_dim=2, weight_bits=(8,) * 4), 0)
    assert deployable_model(conv)[1] == "int8-dynamic-linear+fp32-conv"


def test_latency_result_is_sane(trained_4bit):
    threads = torch.get_num_threads()
    r = measure_latency(trained_4bit, LatencyConfig(repeats=30, warmup=3, batch_size=4))
    assert 0 < r.p10_ms <= r.median_ms <= r.p90_ms and r.iqr_ms >= 0
    assert r.threads == 1 and r.batch_size == 4 and r.repeats == 30
    assert torch.get_num_threads() == threads  # restored


def test_evaluator_scores_and_fails_honestly(mnist_small):
    ev = Evaluator(mnist_small, TrainConfig(epochs=1, batch_size=100), LatencyConfig(repeats=20, warmup=2))
    spec = ArchSpec.mlp((32,), 4, bits=8)
    obj = ev.evaluate(spec)
    assert isinstance(obj, Objectives)
    assert obj.spec_id == spec.id and math.isfinite(obj.neg_elbo) and obj.latency_ms > 0
    assert obj.params == seeded_model(spec, 0).num_params()
    assert obj.flops == 2 * (784 * 32 + 32 * 8 + 4 * 32 + 32 * 784)
    assert obj.bitops == (784 * 32 + 32 * 8 + 4 * 32 + 32 * 784) * 8 * 32
    assert not obj.neg_elbo_is_estimate and obj.train_seconds > 0
    assert Objectives.from_dict(obj.to_dict()) == obj
    assert obj.values(["neg_elbo", "size_bytes"]) == (obj.neg_elbo, float(obj.size_bytes))
    bad = Evaluator(mnist_small, TrainConfig(epochs=1, batch_size=100, lr=1e6)).evaluate(spec)
    assert isinstance(bad, EvalFailure) and "diverged" in bad.reason


@pytest.mark.parametrize("names", [["neg_elbo"], ["neg_elbo", "speed"], ["neg_elbo"] * 2, ["neg_elbo", "flops", "bitops",
                                                                                             "params", "size_bytes"]])
def test_objective_choice_is_validated(names):
    with pytest.raises(VaenasInputError):
        check_objectives(names)
