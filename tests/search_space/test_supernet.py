"""The weight-sharing supernet: exact extraction, weight sharing, bit-width switching, no state."""

from __future__ import annotations

import random

import pytest
import torch
from torch.nn import functional as F

from search_space import ArchSpec, SearchSpace, build_vae, dequantize_weight, quantize_weight
from search_space.supernet import ConvSupernet, MLPSupernet, build_supernet, extreme_spec

SPACES = {
    "mirror": SearchSpace.from_dict({"latent_dim": [4, 8, 16], "activation": ["relu", "elu"],
                                     "mlp": {"depth": [1, 2, 3], "width": [16, 32, 64]},
                                     "weight_bits": [2, 3, 4, 8, 32], "bits_per_layer": True}),
    "free-depth0-act8": SearchSpace.from_dict({"latent_dim": [2, 6], "mlp": {"depth": [0, 1, 2], "width": [8, 24]},
                                               "decoder": "free", "weight_bits": [4, 32], "act_bits": [None, 8]}),
    # elastic channels, kernels (3 is the centre of 5, 4 crops 0..3), strides 1/2 (several geometries)
    "conv-mirror": SearchSpace.from_dict({"family": ["conv"], "latent_dim": [3, 5], "activation": ["relu", "elu"],
                                          "conv": {"depth": [1, 2], "channels": [4, 6], "kernel": [3, 4, 5],
                                                   "stride": [1, 2], "fc_depth": [0, 1, 2], "fc_width": [8, 12]},
                                          "weight_bits": [2, 4, 32], "input_shape": [1, 12, 12]}),
    "conv-free-act8": SearchSpace.from_dict({"family": ["conv"], "latent_dim": [2, 4], "decoder": "free",
                                             "conv": {"depth": [1, 2], "channels": [3, 5], "kernel": [3, 4],
                                                      "stride": [2], "fc_depth": [0, 1], "fc_width": [6, 10]},
                                             "weight_bits": [3, 8, 32], "act_bits": [None, 8], "input_shape": [2, 9, 9]}),
    # other likelihoods: the output layer emits 2 parameters per dimension (vectors; RGB images)
    "vector-gaussian": SearchSpace.from_dict({"latent_dim": [2, 3], "mlp": {"depth": [0, 1, 2], "width": [5, 9]},
                                              "weight_bits": [4, 32], "input_shape": [7], "likelihood": "gaussian"}),
    "conv-rgb-dlogistic": SearchSpace.from_dict({"family": ["conv"], "latent_dim": [2, 4],
                                                 "conv": {"depth": [1, 2], "channels": [3, 5], "kernel": [3, 4],
                                                          "stride": [1, 2], "fc_depth": [0, 1], "fc_width": [6]},
                                                 "weight_bits": [4, 32], "input_shape": [3, 8, 8],
                                                 "likelihood": "discretized_logistic"}),
}


@pytest.fixture(params=sorted(SPACES))
def space(request):
    return SPACES[request.param]


def _net(space, seed=0, learned_scales=True):
    torch.manual_seed(seed)
    net = build_supernet(space, learned_scales=learned_scales)
    for name, p in net.named_parameters():  # non-zero biases, varied step sizes: slicing mistakes show
        if name.startswith("scales."):
            with torch.no_grad():
                p.uniform_(0.02, 0.3)
        else:
            torch.nn.init.normal_(p, std=0.2)
    return net


@pytest.mark.parametrize("learned_scales", [True, False])
def test_extract_matches_forward_exactly(space, learned_scales):
    net = _net(space, learned_scales=learned_scales)
    rng = random.Random(0)
    x = torch.rand(5, *space.input_shape)
    for _ in range(40):
        spec = space.sample(rng)
        eps = torch.randn(5, spec.latent_dim)
        with torch.no_grad():
            a = net(x, spec, eps)
            b = net.extract(spec)(x, eps)
        for u, v in zip(a, b):
            assert torch.equal(u, v), spec


def test_largest_spec_weights_equal_a_standalone_model(space):
    net = _net(space)
    big = extreme_spec(space, "max")
    assert all(b == max(space.weight_bits) for b in big.weight_bits)
    torch.manual_seed(3)
    model = build_vae(big)
    for m in model.weight_layers().values():
        torch.nn.init.normal_(m.bias, std=0.1)
    net.load_standalone(model)
    ext = net.extract(big)
    for (name, m), m2 in zip(model.weight_layers().items(), ext.weight_layers().values()):
        assert torch.equal(m.weight, m2.weight) and torch.equal(m.bias, m2.bias), name
    # the largest spec uses every shared weight in full
    for i in range(net.max_depth):
        if isinstance(net, MLPSupernet):
            assert torch.equal(net.enc[i].weight, getattr(model.enc, f"fc{i}").weight)
        else:
            assert torch.equal(net.convs[i].weight, getattr(model.enc, f"conv{i}").weight)
            assert torch.equal(net.tconvs[i].weight, getattr(model.dec, f"tconv{net.max_depth - 1 - i}").weight)
    x, eps = torch.rand(3, *space.input_shape), torch.randn(3, big.latent_dim)
    for m in model.weight_layers().values():
        if m.bits < 32:
            m.calibrate()
    with torch.no_grad():
        assert torch.equal(net(x, big, eps)[0], model(x, eps)[0])


def test_bit_width_switching_is_exactly_the_quantiser():
    space = SPACES["mirror"]
    net = _net(space)
    x = torch.rand(4, 1, 28, 28)
    base = ArchSpec.mlp((64, 32), 8, bits=32)
    eps = torch.randn(4, 8)
    outs = {}
    for b in (2, 3, 4, 8, 32):
        spec = base.replace(weight_bits=(b,) * len(base.layer_names()))
        layers = net.sliced(spec)
        h = x.flatten(1)
        ws = []
        for _, w, bias, bits, scale in layers:
            if bits < 32:
                q, s = quantize_weight(w, bits, 0, scale=scale)  # the learned step of this layer and bit-width
                assert q.abs().max() <= 2 ** (bits - 1) - 1
                w = dequantize_weight(q, s, 0)
            ws.append((w, bias))
        h = F.relu(F.linear(h, *ws[0]))
        h = F.relu(F.linear(h, *ws[1]))
        mu, logvar = F.linear(h, *ws[2]).chunk(2, 1)
        h = mu + torch.exp(0.5 * logvar) * eps
        h = F.relu(F.linear(h, *ws[3]))
        h = F.relu(F.linear(h, *ws[4]))
        manual = F.linear(h, *ws[5]).view(4, 1, 28, 28)
        with torch.no_grad():
            outs[b] = net(x, spec, eps)[0]
        assert torch.allclose(outs[b], manual, atol=1e-5), b
    assert not torch.allclose(outs[2], outs[32])  # and the bits really change the model


def test_stateless_and_gradients_touch_only_the_slices():
    space = SPACES["mirror"]
    net = _net(space)
    x = torch.rand(2, 1, 28, 28)
    a = ArchSpec.mlp((16,), 4, bits=4)
    b = extreme_spec(space, "max")
    with torch.no_grad():
        first = net(x, a, torch.zeros(2, 4))[0]
        net(x, b, torch.zeros(2, b.latent_dim))
        again = net(x, a, torch.zeros(2, 4))[0]
    assert torch.equal(first, again)  # no "active subnet" state
    net.zero_grad()
    net(x, a, torch.randn(2, 4))[0].sum().backward()
    g = net.enc[0].weight.grad
    assert g[:16].abs().sum() > 0 and g[16:].abs().sum() == 0
    assert net.enc[1].weight.grad is None or net.enc[1].weight.grad.abs().sum() == 0
    head = net.head(1)
    assert head.weight.grad[4:16].abs().sum() == 0  # mu rows beyond L=4 untouched
    assert head.weight.grad[16:20].abs().sum() > 0  # logvar rows of L=4
    for d in (2, 3):  # the other depths' boundary layers are untouched
        assert net.head(d).weight.grad is None and net.dec_in[str(d)].weight.grad is None


def test_specs_outside_the_space_are_refused():
    net = _net(SPACES["mirror"])
    from search_space import SpaceError

    with pytest.raises(SpaceError, match="not in its space"):
        net(torch.rand(1, 1, 28, 28), ArchSpec.mlp((100,), 4))


def test_learned_step_sizes_get_lsq_gradients_only_in_the_slice():
    space = SPACES["mirror"]
    net = _net(space)
    spec = ArchSpec.mlp((16, 32), 4, bits=4)
    net.zero_grad()
    net(torch.rand(3, 1, 28, 28), spec, torch.randn(3, 4))[0].sum().backward()
    g = net.scales["enc0_b4"].grad
    assert g[:16].abs().sum() > 0 and g[16:].abs().sum() == 0
    assert net.scales["enc0_b2"].grad is None  # other bit-widths' step sizes untouched
    # a standalone model trained elsewhere round-trips through the supernet with its step sizes
    model = net.extract(spec)
    with torch.no_grad():
        for m in model.weight_layers().values():
            m.weight_scale.mul_(1.5)
    net.load_standalone(model)
    again = net.extract(spec)
    for (n, a), b in zip(model.weight_layers().items(), again.weight_layers().values()):
        assert torch.equal(a.weight_scale, b.weight_scale), n


def test_depth_calibration_interpolates_in_log_params_between_anchors():
    import math

    from evaluator import count_params
    from evaluator.supernet import DepthCalibration, anchor_specs

    space = SPACES["mirror"]
    anchors = anchor_specs(space)
    assert sorted((len(s.enc_hidden), s.enc_hidden[0]) for s in anchors) == [(1, 16), (1, 64), (2, 16), (2, 64),
                                                                             (3, 16), (3, 64)]
    small, big = ArchSpec.mlp((16,), 4, bits=2), ArchSpec.mlp((64,), 16, bits=32)
    xs, xb = math.log(count_params(small)), math.log(count_params(big))
    cal = DepthCalibration({1: [(xb, -20.0), (xs, -2.0)]})
    assert cal.offset(small) == pytest.approx(-2.0) and cal.offset(big) == pytest.approx(-20.0)
    mid = ArchSpec.mlp((32,), 8, bits=4)
    t = (math.log(count_params(mid)) - xs) / (xb - xs)
    assert 0 < t < 1 and cal.offset(mid) == pytest.approx(-2.0 + t * -18.0)
    assert cal.offset(ArchSpec.mlp((16, 16), 4, bits=2)) == 0.0  # no anchors for that depth: no correction


def test_conv_slices_channels_centre_kernels_and_share_tconvs_from_the_image_end():
    space = SPACES["conv-mirror"]
    net = _net(space)
    assert isinstance(net, ConvSupernet) and net.max_kernel == 5
    spec = space.define(lambda n, c: {"family": "conv", "conv.depth": 2, "conv.fc_depth": 1}.get(n, c[0]))
    spec = spec.replace(enc_channels=(4, 6), kernels=(3, 4), strides=(2, 1))
    assert space.contains(spec)
    model = net.extract(spec)
    # channels are leading slices; kernel 3 is the centre of 5 (taps 1..3), kernel 4 its taps 1..4
    assert torch.equal(model.enc.conv0.weight, net.convs[0].weight[:4, :, 1:4, 1:4])
    assert torch.equal(model.enc.conv1.weight, net.convs[1].weight[:6, :4, 1:5, 1:5])
    # the transposed conv producing the image mirrors encoder layer 0: shared tconv 0, whatever the depth
    assert torch.equal(model.dec.tconv1.weight, net.tconvs[0].weight[:4, :, 1:4, 1:4])
    assert torch.equal(model.dec.tconv0.weight, net.tconvs[1].weight[:6, :4, 1:5, 1:5])
    shallow = spec.replace(enc_channels=(4,), kernels=(3,), strides=(2,),
                           weight_bits=spec.weight_bits[:1] + spec.weight_bits[2:-1])
    assert torch.equal(net.extract(shallow).dec.tconv0.weight, net.tconvs[0].weight[:4, :, 1:4, 1:4])
    # gradients reach only the slices the spec uses; other geometries' boundary layers untouched
    net.zero_grad()
    x = torch.rand(2, *space.input_shape)
    net(x, spec, torch.randn(2, spec.latent_dim))[0].sum().backward()
    g = net.convs[0].weight.grad
    assert g[:4, :, 1:4, 1:4].abs().sum() > 0
    assert g[4:].abs().sum() == 0 and g[:, :, 0].abs().sum() == 0 and g[:, :, 4].abs().sum() == 0
    used = net._key(spec)
    for k, m in net.heads.items():
        assert (m.weight.grad is not None and m.weight.grad.abs().sum() > 0) == (k == used), k
    # geometry really is part of the key: stride 1 vs 2 in layer 1 changes the flattened size
    assert net._key(spec) != net._key(spec.replace(strides=(2, 2)))


def test_finetuned_estimate_is_the_extracted_model_trained_with_the_finetune_recipe(mnist_small):
    """``finetune_steps``: inherited weights trained N constant-lr steps (no warm-ups) - and still an estimate."""
    from evaluator import LatencyConfig, TrainConfig, evaluate_neg_elbo, train
    from evaluator.supernet import SupernetConfig, SupernetEvaluator, finetune_config

    space = SPACES["mirror"]
    net = _net(space)
    study_cfg = TrainConfig(epochs=3, batch_size=50, lr=3e-3, lr_schedule="cosine", lr_warmup_steps=40,
                            kl_warmup_steps=40, qat_delay=0.5, seed=7, device="cpu")
    ft = finetune_config(study_cfg, 6, seed=2)
    assert (ft.max_steps, ft.lr_schedule, ft.lr_warmup_steps, ft.kl_warmup_steps, ft.qat_delay, ft.seed) == \
        (6, "constant", 0, 0, 0.0, 2)
    assert (ft.lr, ft.batch_size) == (study_cfg.lr, study_cfg.batch_size)
    assert finetune_config(study_cfg, 6).seed == study_cfg.seed
    spec = space.sample(random.Random(3))
    ev = SupernetEvaluator(net, mnist_small, study_cfg, LatencyConfig(repeats=3, warmup=1),
                           SupernetConfig(finetune_steps=6, n_val=None))
    result, model = ev.evaluate_with_model(spec, seed=2)
    assert result.neg_elbo_is_estimate and result.epochs == pytest.approx(6 / 40)  # 2,000 images / 50 per step
    by_hand = net.extract(spec)
    train(by_hand, mnist_small.train, ft)
    assert result.neg_elbo == pytest.approx(evaluate_neg_elbo(by_hand, mnist_small.val)["neg_elbo"], abs=1e-4)
    assert result.neg_elbo != pytest.approx(evaluate_neg_elbo(net.extract(spec), mnist_small.val)["neg_elbo"], abs=1e-2)
