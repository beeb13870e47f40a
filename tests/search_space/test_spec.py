import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search_space import ArchSpec, SearchSpace, SpecError

SPACE = SearchSpace.from_dict({
    "family": ["mlp", "conv"],
    "latent_dim": [2, 8, 20],
    "activation": ["relu", "tanh", "elu"],
    "mlp": {"depth": [0, 1, 2, 3], "width": [16, 64, 400]},
    "conv": {"depth": [1, 2], "channels": [4, 8], "kernel": [3, 4, 5], "stride": [1, 2],
             "fc_depth": [0, 1, 2], "fc_width": [32, 64]},
    "decoder": "free",
    "weight_bits": [2, 3, 4, 5, 6, 8, 32],
    "act_bits": [None, 4, 8],
})


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_json_round_trip_is_exact(seed):
    spec = SPACE.sample(random.Random(seed))
    text = spec.to_json()
    back = ArchSpec.from_json(text)
    assert back == spec
    assert back.to_json() == text
    assert back.id == spec.id
    assert ArchSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    d = spec.to_dict()
    assert d["type"] == "vaenas.ArchSpec" and d["version"] == 1


def test_id_is_stable_and_distinguishes():
    a = ArchSpec.mlp((400, 400), 20)
    assert a.id == ArchSpec.mlp([400, 400], 20).id
    assert len(a.id) == 12
    assert a.id != ArchSpec.mlp((400, 400), 20, bits=4).id
    assert a.id != a.replace(latent_dim=21).id


def test_explicit_mirror_decoder_is_canonicalised():
    a = ArchSpec.mlp((400, 200), 20)
    b = ArchSpec(family="mlp", enc_hidden=(400, 200), dec_hidden=(200, 400), latent_dim=20, weight_bits=(32,) * 6)
    assert a == b and a.id == b.id and b.dec_hidden is None
    c = ArchSpec(family="mlp", enc_hidden=(400, 200), dec_hidden=(100, 400), latent_dim=20, weight_bits=(32,) * 6)
    assert c != a and c.decoder_hidden == (100, 400)


def test_layer_names_and_counts():
    s = ArchSpec(family="conv", enc_channels=(32, 64), kernels=(4, 4), strides=(2, 2), enc_hidden=(256,),
                 latent_dim=20, weight_bits=(8,) * 8)
    assert s.layer_names() == ["enc.conv0", "enc.conv1", "enc.fc0", "head", "dec.fc0", "dec.proj",
                               "dec.tconv0", "dec.tconv1"]
    assert ArchSpec.mlp((400, 400), 20).layer_names() == ["enc.fc0", "enc.fc1", "head", "dec.fc0", "dec.fc1", "dec.out"]


GOOD = dict(family="mlp", enc_hidden=(64,), latent_dim=8, weight_bits=(32, 32, 32, 32))


@pytest.mark.parametrize("change, field", [
    ({"family": "rnn"}, "family"),
    ({"latent_dim": 0}, "latent_dim"),
    ({"latent_dim": 2.5}, "latent_dim"),
    ({"weight_bits": (7, 32, 32, 32)}, "weight_bits"),
    ({"weight_bits": (32, 32)}, "weight_bits"),
    ({"enc_hidden": (0,)}, "enc_hidden"),
    ({"enc_hidden": "64"}, "enc_hidden"),
    ({"activation": "swish2"}, "activation"),
    ({"act_bits": 32}, "act_bits"),
    ({"kernels": (3,)}, "kernels"),
    ({"family": "conv", "enc_channels": (8,), "kernels": (3,), "strides": (4,), "weight_bits": (32,) * 6}, "strides"),
    ({"family": "conv", "enc_channels": (8, 8), "kernels": (3,), "strides": (2,), "weight_bits": (32,) * 8}, "kernels"),
    ({"family": "conv", "enc_channels": (8,) * 6, "kernels": (4,) * 6, "strides": (2,) * 6, "weight_bits": (32,) * 16},
     "kernels/strides"),
])
def test_invalid_specs_name_the_field(change, field):
    with pytest.raises(SpecError) as e:
        ArchSpec(**{**GOOD, **change})
    assert str(e.value).startswith(field), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text, field", [
    ("{not json", "arch spec"),
    ("[1, 2]", "arch spec"),
    ('{"type": "other", "version": 1}', "type"),
    ('{"type": "vaenas.ArchSpec", "version": 99}', "version"),
    ('{"type": "vaenas.ArchSpec", "version": 1, "family": "mlp"}', "enc_hidden"),
    ('{"type": "vaenas.ArchSpec", "version": 1, "family": "mlp", "enc_hidden": [], "latent_dim": 2, '
     '"weight_bits": [32, 32], "colour": 1}', "colour"),
])
def test_bad_json_is_rejected_clearly(text, field):
    with pytest.raises(SpecError) as e:
        ArchSpec.from_json(text)
    assert str(e.value).startswith(field), str(e.value)
