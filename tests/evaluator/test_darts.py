"""DARTS over widths, bits and latent size: larger lambda gives lower expected cost; derived specs are valid."""

from __future__ import annotations

import pytest
import torch

from search_space import SearchSpace, SpaceError, packed_size_bytes
from evaluator.darts import DartsConfig, DartsSearch, lambda_sweep

SPACE = SearchSpace.from_dict({"latent_dim": [4, 8, 16], "mlp": {"depth": [2], "width": [16, 32, 64, 128]},
                               "weight_bits": [2, 4, 8, 32], "bits_per_layer": True})


def test_expected_cost_is_exact_at_one_hot_logits():
    d = DartsSearch(SPACE)
    with torch.no_grad():
        for logits, k in ((d.width_logits, 1), (d.latent_logits, 2), (d.bit_logits, 1)):
            logits.fill_(-1e4)
            logits[..., k] = 1e4
    spec = d.derive()
    assert spec.enc_hidden == (32, 32) and spec.latent_dim == 16 and set(spec.weight_bits) == {4}
    weights_bytes = sum((n * 4 + 7) // 8 for n in (784 * 32, 32 * 32, 32 * 32, 16 * 32, 32 * 32, 32 * 784))
    assert float(d.expected_size_bytes().detach()) == pytest.approx(weights_bytes, rel=1e-3)
    assert packed_size_bytes(spec) > weights_bytes  # the packed size adds scales and biases


def test_larger_lambda_gives_lower_expected_cost(mnist_small):
    cfg = DartsConfig(steps=60, warmup_steps=10, batch_size=64, seed=0)
    res = lambda_sweep(SPACE, mnist_small.train, mnist_small.val, [0.0, 20.0, 200.0, 2000.0], cfg)
    costs = [info["expected_cost_ratio"] for _, info in res]
    assert all(a > b for a, b in zip(costs, costs[1:])), costs
    for spec, _ in res:
        assert SPACE.contains(spec)
    sizes = [packed_size_bytes(s) for s, _ in res]
    assert sizes[0] > sizes[-1]


def test_darts_refuses_spaces_it_cannot_search():
    with pytest.raises(SpaceError, match="MLP-only"):
        DartsSearch(SearchSpace.from_dict({"latent_dim": [4], "mlp": {"depth": [1], "width": [8]},
                                           "decoder": "free"}))


def test_darts_on_vectors_with_a_gaussian_likelihood_sizes_the_output_for_two_parameters():
    space = SearchSpace.from_dict({"latent_dim": [2, 4], "mlp": {"depth": [1], "width": [8, 16]},
                                   "weight_bits": [4, 32], "input_shape": [10], "likelihood": "gaussian"})
    d = DartsSearch(space)
    with torch.no_grad():
        for logits in (d.width_logits, d.latent_logits, d.bit_logits):
            logits.fill_(-1e4)
            logits[..., 0] = 1e4
    spec = d.derive()
    assert spec.input_shape == (10,) and spec.likelihood == "gaussian" and space.contains(spec)
    # enc 10->8, head 8->2*2, dec 2->8, out 8->2*10 (loc and log-scale per feature), all 4-bit
    weights_bytes = sum((n * 4 + 7) // 8 for n in (10 * 8, 8 * 4, 2 * 8, 8 * 20))
    assert float(d.expected_size_bytes().detach()) == pytest.approx(weights_bytes, rel=1e-3)
    x = torch.randn(64, 10)
    res = lambda_sweep(space, x, x[:32], [0.0, 1e4], DartsConfig(steps=20, warmup_steps=5, batch_size=16))
    assert all(space.contains(s) for s, _ in res)
