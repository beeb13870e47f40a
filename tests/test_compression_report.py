"""The compression report's own arithmetic: sparse packed size, global magnitude pruning, the verdict."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from search_space import ArchSpec, build_vae, pack_model

spec_ = importlib.util.spec_from_file_location(
    "compression_report", Path(__file__).resolve().parents[1] / "benchmarks" / "compression_report.py")
cr = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(cr)


def test_seed_architectures_are_the_ones_the_issue_describes():
    names = cr.SEED_CONV.layer_names()
    assert sum(n.startswith("enc.conv") for n in names) == 2 and names.count("enc.fc0") + names.count("head") == 2
    assert sum(n.startswith("dec.fc") or n == "dec.proj" for n in names) == 2
    assert sum(n.startswith("dec.tconv") for n in names) == 2 and cr.SEED_CONV.latent_dim == 20
    assert cr.SEED_MLP.enc_hidden == (400, 400) and cr.SEED_MLP.latent_dim == 20 and cr.SEED_MLP.mean_bits == 32


@pytest.mark.parametrize("amount", [0.3, 0.5])
def test_global_magnitude_pruning_zeroes_the_smallest_weights_and_sparse_bytes_count_them(amount):
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = build_vae(ArchSpec.mlp((32, 16), 4))
    all_w = torch.cat([m.weight.detach().abs().flatten() for m in model.weight_layers().values()])
    layers = cr.magnitude_prune(model, amount)
    for m, n in layers:
        prune.remove(m, n)
    w = torch.cat([m.weight.detach().flatten() for m in model.weight_layers().values()])
    n_zero = int((w == 0).sum())
    assert n_zero == round(amount * w.numel())
    kept_min = w[w != 0].abs().min()
    assert kept_min >= all_w.sort().values[n_zero - 1]  # the zeroed ones were the smallest in magnitude
    dense = len(pack_model(model))  # float32 weights + biases
    n_bias = sum(m.bias.numel() for m in model.weight_layers().values())
    bitmaps = sum((m.weight.numel() + 7) // 8 for m in model.weight_layers().values())
    assert cr.sparse_bytes(model) == bitmaps + 4 * (w.numel() - n_zero) + 4 * n_bias
    assert cr.sparse_bytes(model) < dense


def test_target_verdict_met_and_missed():
    mlp = {"packed_bytes": 1600, "test_neg_elbo": 100.0}

    def row(name, b, e):
        return {"name": name, "group": "vaenas", "packed_bytes": b, "ratio_vs_fp32_mlp": 1600 / b,
                "neg_elbo_vs_fp32_mlp": e / 100 - 1}

    v = cr.target_verdict([row("a", 100, 101.9), row("b", 90, 103)], mlp)
    assert v["met"] and v["name"] == "a" and "MET" in v["text"]
    v = cr.target_verdict([row("a", 101, 101.0), row("b", 90, 103)], mlp)  # a too big, b too poor
    assert not v["met"] and "misses the −ELBO limit by 1.00 points" in v["text"]
