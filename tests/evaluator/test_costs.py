import random

import pytest

from evaluator import count_bitops, count_flops, count_params, static_costs
from search_space import ArchSpec, SearchSpace, build_vae, pack_model


def test_mlp_flops_by_hand():
    spec = ArchSpec(family="mlp", enc_hidden=(5,), dec_hidden=(6,), latent_dim=3, weight_bits=(4, 8, 2, 32))
    macs = {"enc.fc0": 784 * 5, "head": 5 * 6, "dec.fc0": 3 * 6, "dec.out": 6 * 784}
    fr = count_flops(spec)
    assert fr.per_layer == {k: 2 * v for k, v in macs.items()}
    assert fr.total == 2 * sum(macs.values())
    assert count_bitops(spec) == (784 * 5 * 4 + 30 * 8 + 18 * 2 + 6 * 784 * 32) * 32
    assert count_bitops(spec.replace(act_bits=8)) == (784 * 5 * 4 + 30 * 8 + 18 * 2 + 6 * 784 * 32) * 8
    assert "relu" in fr.uncounted and "exp" in fr.uncounted  # reported, not counted as 0
    assert "view" not in fr.uncounted


def test_conv_flops_by_hand():
    # conv 1->4, k3 s2 on 28x28 -> 14x14; fc 4*14*14 -> 8; head 8 -> 2*2; dec fc 2 -> 8; proj 8 -> 4*14*14;
    # tconv 4 -> 1, k3 s2 back to 28x28 (each input pixel scatters a 3x3 kernel per output channel)
    spec = ArchSpec(family="conv", enc_channels=(4,), kernels=(3,), strides=(2,), enc_hidden=(8,), latent_dim=2,
                    weight_bits=(32,) * 6)
    macs = {
        "enc.conv0": 4 * 14 * 14 * 1 * 3 * 3, "enc.fc0": 784 * 8, "head": 8 * 4, "dec.fc0": 2 * 8,
        "dec.proj": 8 * 784, "dec.tconv0": 4 * 14 * 14 * 1 * 3 * 3,
    }
    fr = count_flops(spec)
    assert fr.per_layer == {k: 2 * v for k, v in macs.items()}
    assert fr.total == 2 * sum(macs.values())


SPACE = SearchSpace.from_dict({
    "family": ["mlp", "conv"], "latent_dim": [3, 8], "mlp": {"depth": [0, 1, 2], "width": [7, 33]},
    "conv": {"depth": [1, 2], "channels": [3, 5], "kernel": [3, 4], "stride": [1, 2], "fc_depth": [0, 1], "fc_width": [9]},
    "weight_bits": [2, 4, 8, 32], "decoder": "free",
})


@pytest.mark.parametrize("seed", range(8))
def test_params_and_size_match_a_real_model(seed, tmp_path):
    spec = SPACE.sample(random.Random(seed))
    model = build_vae(spec)
    c = static_costs(spec)
    assert c.params == sum(m.weight.numel() + m.bias.numel() for m in model.weight_layers().values()) == count_params(spec)
    f = tmp_path / "packed.bin"
    f.write_bytes(pack_model(model))
    assert c.size_bytes == f.stat().st_size
    assert c.flops == count_flops(spec).total > 0


def test_static_costs_are_computed_once_per_spec():
    from evaluator import static_costs
    from search_space import ArchSpec

    spec = ArchSpec.mlp((24,), 3, bits=4)
    again = ArchSpec.from_json(spec.to_json())  # an equal spec, another object
    assert static_costs(spec) is static_costs(again)
    assert static_costs(spec).ram_bytes > 0 and static_costs(spec).flash_bytes > static_costs(spec).size_bytes
