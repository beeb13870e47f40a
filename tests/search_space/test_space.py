import random

import pytest
import torch

from search_space import ArchSpec, SearchSpace, SpaceError, SpecError, build_vae

MIXED = {
    "family": ["mlp", "conv"],
    "latent_dim": [4, 16],
    "activation": ["relu", "silu"],
    "mlp": {"depth": [1, 2, 3], "width": [32, 128]},
    "conv": {"depth": [1, 2], "channels": [4, 8], "kernel": [3, 4], "stride": [1, 2], "fc_depth": [0, 1],
             "fc_width": [32]},
    "weight_bits": [2, 4, 8, 32],
    "act_bits": [None, 8],
}


@pytest.mark.parametrize("decoder", ["mirror", "free"])
@pytest.mark.parametrize("bits_per_layer", [True, False])
def test_sample_mutate_crossover_are_contained_and_build(decoder, bits_per_layer):
    space = SearchSpace.from_dict({**MIXED, "decoder": decoder, "bits_per_layer": bits_per_layer})
    rng = random.Random(7)
    x = torch.rand(2, 1, 28, 28)
    for _ in range(60):
        a, b = space.sample(rng), space.sample(rng)
        m = space.mutate(a, rng)
        c = space.crossover(a, b, rng)
        assert m != a
        for s in (a, b, m, c):
            verdict = space.contains(s)
            assert verdict, verdict.reason
            assert space.from_params(space.to_params(s)) == s
            logits, mu, logvar = build_vae(s)(x)
            assert logits.shape == x.shape and mu.shape == (2, s.latent_dim)
            assert len(space.encode(s)) == len(space.dimensions())


def test_seeded_sampling_is_reproducible_and_uses_no_global_rng():
    space = SearchSpace.from_dict(MIXED)
    random.seed(1)
    a = [space.sample(random.Random(3)) for _ in range(5)]
    random.seed(2)
    b = [space.sample(random.Random(3)) for _ in range(5)]
    assert a == b
    r1, r2 = random.Random(11), random.Random(11)
    assert [space.sample(r1) for _ in range(20)] == [space.sample(r2) for _ in range(20)]
    assert space.sample(5) == space.sample(5)


def _enumerate(space: SearchSpace) -> set[ArchSpec]:
    """Brute force: replay the define-by-run program over every prefix of decisions."""
    found: set[ArchSpec] = set()
    stack: list[tuple] = [()]
    while stack:
        prefix = stack.pop()
        pos = [0]

        class Branch(Exception):
            pass

        def choose(name, choices):
            i = pos[0]
            pos[0] += 1
            if i < len(prefix):
                return choices[prefix[i]]
            for j in range(len(choices)):
                stack.append(prefix + (j,))
            raise Branch

        try:
            found.add(space.define(choose))
        except Branch:
            pass
    return found


@pytest.mark.parametrize("decoder", ["mirror", "free"])
@pytest.mark.parametrize("bits_per_layer", [True, False])
def test_size_matches_brute_force_enumeration(decoder, bits_per_layer):
    space = SearchSpace.from_dict({
        "family": ["mlp", "conv"], "latent_dim": [2, 3], "act_bits": [None, 8],
        "mlp": {"depth": [0, 1, 2], "width": [8, 16]},
        "conv": {"depth": [1], "channels": [2, 3], "kernel": [3], "stride": [1, 2], "fc_depth": [0, 1], "fc_width": [8]},
        "weight_bits": [4, 32], "decoder": decoder, "bits_per_layer": bits_per_layer,
    })
    specs = _enumerate(space)
    assert len(specs) == space.size()
    assert all(space.contains(s) for s in specs)


def test_contains_says_why_not():
    space = SearchSpace.from_dict({"latent_dim": [8, 16], "mlp": {"depth": [1, 2], "width": [64, 128]},
                                   "weight_bits": [4, 8]})
    ok = ArchSpec.mlp((64,), 8, bits=4)
    assert space.contains(ok)
    v = space.contains(ok.replace(latent_dim=20))
    assert not v and "latent_dim" in v.reason
    v = space.contains(ArchSpec.mlp((64,), 8, bits=32))
    assert not v and "bits.enc.fc0" in v.reason
    v = space.contains(ArchSpec.mlp((64, 64, 64), 8, bits=4))
    assert not v and "mlp.depth" in v.reason
    v = space.contains(ArchSpec(family="mlp", enc_hidden=(64,), dec_hidden=(128,), latent_dim=8, weight_bits=(4,) * 4))
    assert not v and "mirror" in v.reason
    with pytest.raises(SpecError, match="not in search space"):
        space.to_params(ok.replace(latent_dim=20))


def test_dimensions_cover_every_decision():
    space = SearchSpace.from_dict({**MIXED, "decoder": "free"})
    dims = space.dimensions()
    rng = random.Random(0)
    for _ in range(50):
        params = space.to_params(space.sample(rng))
        for k, v in params.items():
            assert k in dims and v in dims[k]


def test_ranges():
    s = SearchSpace.from_dict({"latent_dim": {"min": 8, "max": 32, "step": 8},
                               "mlp": {"depth": {"min": 1, "max": 2}, "width": {"min": 16, "max": 256, "log2": True}}})
    assert s.latent_dim == (8, 16, 24, 32)
    assert s.mlp["width"] == (16, 32, 64, 128, 256)
    assert s.size() == 4 * (5 + 25)


BASE = "latent_dim: [8]\nmlp: {depth: [1], width: [64]}\n"


@pytest.mark.parametrize("text, needle", [
    ("latent_dim: [8\n", "malformed YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("mlp: {depth: [1], width: [64]}\n", "latent_dim: required"),
    (BASE + "widht: [3]\n", "widht: unknown search-space key"),
    ("latent_dim: [0]\nmlp: {depth: [1], width: [64]}\n", "latent_dim: 0 is below the minimum 1"),
    ("latent_dim: []\nmlp: {depth: [1], width: [64]}\n", "latent_dim: the list of choices is empty"),
    ("latent_dim: {min: 32, max: 8}\nmlp: {depth: [1], width: [64]}\n", "min (32) is greater than max (8)"),
    (BASE + "weight_bits: [4, 7]\n", "weight_bits: 7 is not allowed"),
    (BASE + "act_bits: [16]\n", "act_bits: 16 is not allowed"),
    (BASE + "family: [gru]\n", "family: 'gru' is not a family"),
    (BASE + "activation: [swish9]\n", "activation: 'swish9' is not supported"),
    ("latent_dim: [8]\nmlp: {depth: [1]}\n", "mlp.width: required"),
    ("latent_dim: [8]\nmlp: {depth: [1], width: [64], heads: [2]}\n", "mlp.heads: unknown key"),
    ("latent_dim: [8]\nfamily: [conv]\n", "conv: family 'conv' needs a conv: block"),
    (BASE + "conv: {depth: [1], channels: [4], kernel: [3], stride: [2]}\n", "conv: block given"),
    ("latent_dim: [8]\nfamily: [conv]\nconv: {depth: [1], channels: [4], kernel: [2], stride: [3]}\n", "conv.stride"),
    ("latent_dim: [8]\nfamily: [conv]\nconv: {depth: [9], channels: [4], kernel: [4], stride: [2]}\n", "conv:"),
    (BASE + "decoder: sideways\n", "decoder: must be 'mirror' or 'free'"),
    (BASE + "bits_per_layer: maybe\n", "bits_per_layer: must be true or false"),
    (BASE + "latent_dim: [8, 8]\n", "duplicate"),
    (BASE + "input_shape: [28, 28]\n", "input_shape"),
])
def test_invalid_spaces_give_one_clear_line(text, needle):
    with pytest.raises(SpaceError) as e:
        SearchSpace.from_yaml(text)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg


def test_load_missing_file(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        SearchSpace.load(tmp_path / "nope.yaml")
    p = tmp_path / "s.yaml"
    p.write_text(BASE)
    assert SearchSpace.load(p).size() == 1
    assert SearchSpace.from_dict(SearchSpace.load(p).to_dict()) == SearchSpace.load(p)
