"""Sparsity, low-rank factorisation and k-means quantisation as per-layer dimensions: exact packed bytes,
pack/unpack, FLOPs by hand, the codebook's weight error, the pruning schedule in the training loop, the
spec's JSON versions, the space's decisions, the refusals, and the exports (ONNX, C, ExecuTorch)."""

import json
import math
import random
import shutil
import subprocess

import numpy as np
import pytest
from conftest import check_onnx_export, close_to, trained_like
import torch

from search_space import ArchSpec, SearchSpace, SpaceError, SpecError, build_vae, pack_model, packed_layout
from search_space import packed_size_bytes, unpack_model
from search_space.compression import (factor_rank, index_bits, kept_count, sparse_format, sparse_index_bytes,
                                      sparsity_at)
from evaluator.deploy import export_model
from evaluator.deploy.c_lib import CFLAGS
from evaluator.deploy.memory import c_table_bytes
from search_space.quant import QuantLinear, kmeans_fake_quant, quantize_weight, dequantize_weight

BITS = (2, 3, 4, 8, 32)


def _compressed_spec(rng: random.Random, family: str) -> ArchSpec:
    """A random valid spec using the three new dimensions (each layer: maybe k-means, factorised or sparse)."""
    while True:
        try:
            if family == "mlp":
                shape = rng.choice([(1, 12, 10), (13,), (40,)])
                enc = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                dec = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                kw = dict(family="mlp", enc_hidden=enc, dec_hidden=dec, input_shape=shape,
                          likelihood="gaussian" if len(shape) == 1 else "bernoulli")
                n = len(enc) + len(dec) + 2
            else:
                nc = rng.randint(1, 2)
                kw = dict(family="conv", enc_hidden=tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1))),
                          enc_channels=tuple(rng.choice([2, 3, 5]) for _ in range(nc)),
                          kernels=tuple(rng.choice([1, 3, 4]) for _ in range(nc)),
                          strides=tuple(rng.choice([1, 2]) for _ in range(nc)), input_shape=(2, 10, 11))
                kw["dec_hidden"] = kw["enc_hidden"]
                n = 2 * nc + 2 * len(kw["enc_hidden"]) + 2
            bits = tuple(rng.choice(BITS) for _ in range(n))
            rank = tuple(rng.choice([None, None, 0.25, 0.5, 1.0]) for _ in range(n))
            sparsity = tuple(0.0 if r is not None else rng.choice([0.0, 0.3, 0.5, 0.9]) for r in rank)
            quant = tuple("uniform" if b == 32 else rng.choice(["uniform", "kmeans"]) for b in bits)
            return ArchSpec(latent_dim=rng.randint(1, 5), weight_bits=bits, rank=rank, sparsity=sparsity,
                            quantizer=quant, act_bits=rng.choice([None, None, 8]), **kw)
        except SpecError:
            continue


SPECS = [(_compressed_spec(random.Random(500 + i), "mlp" if i % 2 == 0 else "conv"), i) for i in range(16)]


def test_specs_cover_every_new_dimension():
    specs = [s for s, _ in SPECS[:6]]  # the ones the export round trip runs
    layouts = [lay for s in specs for lay in packed_layout(s)]
    assert {lay.index_format for lay in layouts} >= {"", "bitmap", "indices"}
    assert any(lay.is_kmeans for lay in layouts) and any(lay.name.endswith(".u") for lay in layouts)
    assert any(lay.name.endswith(".u") and len(lay.weight_shape) == 4 and lay.ch_axis == 1 for lay in layouts)  # tconv


@pytest.mark.parametrize("spec,seed", SPECS, ids=[f"{s.family}-{i}" for s, i in SPECS])
def test_pack_unpack_exact(spec, seed):
    model = trained_like(spec, seed)
    data = pack_model(model)
    assert len(data) == packed_size_bytes(spec) == sum(lay.nbytes for lay in packed_layout(spec))
    back = unpack_model(spec, data).eval()
    assert pack_model(back) == data
    x = torch.rand(4, *spec.input_shape, generator=torch.Generator().manual_seed(seed))
    eps = torch.randn(4, spec.latent_dim, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        a, b = model(x, eps)[0], back(x, eps)[0]
    assert torch.equal(a, b)
    for lay, m in zip(packed_layout(spec), model.weight_layers().values()):
        w = m.quantized_weight().detach()
        if lay.sparsity:
            assert int((m.weight_mask != 0).sum()) == lay.kept and bool((w[m.weight_mask == 0] == 0).all())
        if lay.is_kmeans:
            assert len(torch.unique(w[w != 0] if lay.sparsity else w)) <= 2 ** lay.bits


def test_packed_bytes_by_hand():
    # enc.fc0: 784 -> 32 at 4 bits k-means, 70 % sparse -> bitmap vs index list; head rank 0.5; dec.fc0 float sparse
    spec = ArchSpec(family="mlp", enc_hidden=(32,), latent_dim=4, weight_bits=(4, 8, 32, 2),
                    quantizer=("kmeans", "uniform", "uniform", "uniform"), sparsity=(0.7, 0, 0.98, 0),
                    rank=(None, 0.5, None, None))
    lay = {x.name: x for x in packed_layout(spec)}
    n = 784 * 32
    kept = n - math.floor(0.7 * n)
    assert lay["enc.fc0"].kept == kept and lay["enc.fc0"].index_format == "bitmap"  # 15 bits x kept > n bits
    assert lay["enc.fc0"].nbytes == n // 8 + (kept * 4 + 7) // 8 + 4 * 16 + 4 * 32
    r = factor_rank(8, 32, 0.5)
    assert r == 4 and lay["head.v"].weight_shape == (4, 32) and lay["head.u"].weight_shape == (8, 4)
    assert lay["head.v"].nbytes == 4 * 32 + 4 * 4 and lay["head.u"].nbytes == 8 * 4 + 4 * 8 + 4 * 8
    k2 = 4 * 32 - math.floor(0.98 * 128)
    assert lay["dec.fc0"].index_format == "indices" and index_bits(128) == 7
    assert lay["dec.fc0"].nbytes == (k2 * 7 + 7) // 8 + 4 * k2 + 4 * 32
    assert lay["dec.out"].nbytes == (32 * 784 * 2 + 7) // 8 + 4 * 784 + 4 * 784
    assert packed_size_bytes(spec) == sum(x.nbytes for x in lay.values())
    assert c_table_bytes(spec) == 4 * math.ceil(n / 64)  # the bitmap layer's C prefix table


@pytest.mark.parametrize("n,s", [(10, 0.0), (10, 0.5), (1000, 0.3), (1000, 0.99), (7, 0.99), (128, 0.9)])
def test_sparse_format_is_the_smaller(n, s):
    k = kept_count(n, s)
    assert k == max(1, n - math.floor(s * n + 1e-9))
    bitmap, indices = (n + 7) // 8, (k * index_bits(n) + 7) // 8
    assert sparse_index_bytes(n, k) == min(bitmap, indices)
    assert sparse_format(n, k) == ("indices" if indices < bitmap else "bitmap")


def test_flops_of_low_rank_layers_by_hand():
    from evaluator.costs import count_bitops, count_flops

    mlp = ArchSpec(family="mlp", enc_hidden=(64,), latent_dim=4, weight_bits=(4, 2, 8, 32), rank=(0.25, None, 0.5, None),
                   sparsity=(0, 0.5, 0, 0.3), quantizer=("kmeans", "uniform", "uniform", "uniform"))
    f = count_flops(mlp).per_layer
    r0, r2 = factor_rank(64, 784, 0.25), factor_rank(64, 4, 0.5)
    assert (r0, r2) == (16, 2)
    assert f["enc.fc0"] == 2 * (784 * r0 + r0 * 64)
    assert f["head"] == 2 * 64 * 8  # sparse: still executed dense
    assert f["dec.fc0"] == 2 * (4 * r2 + r2 * 64)
    assert f["dec.out"] == 2 * 64 * 784
    # a k-means layer multiplies float32 codebook entries: 32 weight bits in BitOps
    assert count_bitops(mlp) == 32 * (f["enc.fc0"] // 2 * 32 + f["head"] // 2 * 2 + f["dec.fc0"] // 2 * 8
                                      + f["dec.out"] // 2 * 32)
    conv = ArchSpec(family="conv", enc_hidden=(), latent_dim=4, weight_bits=(4,) * 4, enc_channels=(8,), kernels=(3,),
                    strides=(2,), rank=(0.5, None, None, 0.5))
    f = count_flops(conv).per_layer
    rc = factor_rank(8, 1 * 9, 0.5)  # conv weight (8, 1, 3, 3) as an 8 x 9 matrix
    assert f["enc.conv0"] == 2 * (rc * 9 * 14 * 14 + 8 * rc * 14 * 14)
    rt = factor_rank(8, 1 * 9, 0.5)  # tconv weight (8, 1, 3, 3) as an 8 x 9 matrix: 1x1 conv 8 -> r, tconv r -> 1
    assert f["dec.tconv0"] == 2 * (rt * 8 * 14 * 14 + rt * 1 * 9 * 14 * 14)


def test_kmeans_codebook_training_beats_uniform_on_a_fixed_layer():
    torch.manual_seed(0)
    for bits in (2, 3, 4):
        layer = QuantLinear(256, 64, bits=bits, quantizer="kmeans")
        w = torch.randn(64, 256) * torch.linspace(0.2, 1.5, 64)[:, None]  # channels of different spread
        with torch.no_grad():
            layer.weight.copy_(w)
        layer.weight.requires_grad_(False)
        with torch.no_grad():
            err0 = float(((layer.quantized_weight() - w) ** 2).mean())  # Lloyd initialisation
        opt = torch.optim.Adam([layer.codebook], lr=1e-3)
        for _ in range(200):
            loss = ((layer.quantized_weight() - w) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            err = float(((layer.quantized_weight() - w) ** 2).mean())
        q, s = quantize_weight(w, bits, 0)
        uniform = float(((dequantize_weight(q, s, 0) - w) ** 2).mean())  # per-channel max-abs grid
        assert err <= err0 * 1.0001 and err < uniform, (bits, err0, err, uniform)
        assert len(torch.unique(layer.quantized_weight())) <= 2 ** bits


def test_kmeans_gradients_reach_codebook_and_weights():
    cb = torch.tensor([-1.0, 0.0, 1.0], requires_grad=True)
    w = torch.tensor([-0.9, 0.2, 0.6, 0.4], requires_grad=True)
    out = kmeans_fake_quant(w, cb)
    assert out.tolist() == [-1.0, 0.0, 1.0, 0.0]
    (out * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert cb.grad.tolist() == [1.0, 6.0, 3.0] and w.grad.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_pruning_schedule_in_the_training_loop():
    from evaluator.train import TrainConfig, train

    assert [sparsity_at(0.8, s, 100) for s in (5, 10, 80, 100)] == [0.0, 0.0, 0.8, 0.8]
    vals = [sparsity_at(0.5, s, 100) for s in range(1, 101)]
    assert all(b >= a for a, b in zip(vals, vals[1:])) and 0 < vals[40] < 0.5
    spec = ArchSpec(family="mlp", enc_hidden=(16,), latent_dim=2, weight_bits=(4, 32, 8, 2), input_shape=(12,),
                    likelihood="gaussian", sparsity=(0.5, 0.0, 0.3, 0.7))
    torch.manual_seed(0)
    model = build_vae(spec)
    seen = []
    orig = model.after_step

    def spy(step, total):
        orig(step, total)
        seen.append(int((model.enc.fc0.weight_mask == 0).sum()))

    model.after_step = spy
    data = torch.randn(200, 12)
    res = train(model, data, TrainConfig(epochs=2, batch_size=20, lr=1e-3))
    assert res.steps == 20 and len(seen) == 20
    assert seen[0] == 0 and seen[-1] == 192 - kept_count(192, 0.5) and all(b >= a for a, b in zip(seen, seen[1:]))
    for lay, m in zip(packed_layout(spec), model.weight_layers().values()):
        if lay.sparsity:
            assert int(m.weight_mask.sum()) == lay.kept
            assert bool((m.weight[m.weight_mask == 0] == 0).all())
    assert len(pack_model(model)) == packed_size_bytes(spec)


def test_spec_json_versions_and_old_specs():
    old = ArchSpec.mlp((32,), 4, bits=4)
    assert old.to_dict()["version"] == 1 and "sparsity" not in old.to_json()
    # the same bytes as before these fields existed, so ids recorded in studies are unchanged
    assert old.to_json() == ('{"act_bits":null,"activation":"relu","dec_channels":null,"dec_hidden":null,'
                             '"enc_channels":[],"enc_hidden":[32],"family":"mlp","input_shape":[1,28,28],'
                             '"kernels":[],"latent_dim":4,"strides":[],"type":"vaenas.ArchSpec","version":1,'
                             '"weight_bits":[4,4,4,4]}')
    new = old.replace(sparsity=(0.5, 0, 0, 0), rank=(None, None, 0.25, None), quantizer=("kmeans",) + ("uniform",) * 3)
    d = new.to_dict()
    assert d["version"] == 3 and d["sparsity"] == [0.5, 0.0, 0.0, 0.0] and d["rank"][2] == 0.25
    assert ArchSpec.from_json(new.to_json()) == new and ArchSpec.from_json(new.to_json()).id == new.id
    # all-default values are the same spec as none
    assert old.replace(sparsity=(0,) * 4, rank=(None,) * 4, quantizer=("uniform",) * 4) == old
    assert ArchSpec.from_dict(json.loads(old.to_json())) == old


@pytest.mark.parametrize("change,msg", [
    (dict(sparsity=(0.5, 0, 0)), "sparsity: need one entry per weight layer"),
    (dict(sparsity=(1.0, 0, 0, 0)), "sparsity: 1.0 is not allowed"),
    (dict(rank=(0, None, None, None)), "rank: 0 is not allowed"),
    (dict(quantizer=("lloyd",) * 4), "quantizer: 'lloyd' is not allowed"),
    (dict(weight_bits=(32, 4, 4, 4), quantizer=("kmeans",) + ("uniform",) * 3), "k-means needs weight_bits below 32"),
    (dict(sparsity=(0.5, 0, 0, 0), rank=(0.5, None, None, None)), "both pruned and factorised"),
    (dict(sparsity=(0, 0.5, 0, 0), pruning="structured"), "layer head's outputs are not hidden units"),
    (dict(sparsity=(0.5, 0, 0, 0), rank=(None, 0.5, None, None), pruning="structured"), "cannot be combined with rank"),
    (dict(sparsity=(0.5, 0, 0, 0), act_bits=8, pruning="structured"), "structured pruning with act_bits"),
    (dict(pruning="blocks"), "pruning: 'blocks' is not allowed"),
])
def test_spec_refuses_bad_compression(change, msg):
    with pytest.raises(SpecError, match=msg.replace("(", r"\(")):
        ArchSpec.mlp((32,), 4, bits=4).replace(**change)


def _tiny_space(**extra) -> SearchSpace:
    return SearchSpace.from_dict({**{"latent_dim": [2], "mlp": {"depth": [1], "width": [4, 8]}, "input_shape": [6],
                                     "likelihood": "gaussian", "weight_bits": [2, 32]}, **extra})


def _enumerate(space: SearchSpace) -> set:
    """Every spec of the space, by walking every branch of the define-by-run program."""
    out, stack = set(), [[]]
    while stack:
        prefix = stack.pop()
        it = iter(prefix)
        forks = []

        def choose(name, choices):
            try:
                return next(it)
            except StopIteration:
                forks.append(choices)
                return choices[0]

        spec = space.define(choose)
        if forks:
            stack += [prefix + [c] for c in forks[0]]
        else:
            out.add(spec)
    return out


@pytest.mark.parametrize("extra", [
    {"quantizer": ["uniform", "kmeans"], "rank": [None, 0.5], "sparsity": [0, 0.5]},
    {"quantizer": ["uniform", "kmeans"], "sparsity": [0, 0.3, 0.6], "bits_per_layer": False},
    {"rank": [0.25, 0.5]},
    {"rank": [None, 1.0], "sparsity": [0.5]},
    {"pruning": ["unstructured", "structured"], "sparsity": [0, 0.5], "rank": [None, 0.5], "act_bits": [None, 8]},
    {"pruning": ["structured"], "sparsity": [0.25, 0.5], "quantizer": ["uniform", "kmeans"], "bits_per_layer": False},
    {"pruning": ["structured", "unstructured"], "mlp": {"depth": [1, 2], "width": [4]}, "decoder": "free"},
    {"pruning": ["structured", "unstructured"], "rank": [0.5, None], "act_bits": [8, None], "sparsity": [0.5, 0]},
])
def test_space_decisions_size_and_round_trip(extra):
    space = _tiny_space(**extra)
    specs = _enumerate(space)
    assert space.size() == len(specs)
    for spec in list(specs)[:300]:
        assert space.contains(spec) and space.from_params(space.to_params(spec)) == spec
    dims = space.dimensions()
    rng = random.Random(0)
    for _ in range(50):
        a, b = space.sample(rng), space.sample(rng)
        assert space.contains(space.mutate(a, rng)) and space.contains(space.crossover(a, b, rng))
        assert set(space.to_params(a)) <= set(dims)
    assert SearchSpace.from_dict(space.to_dict()) == space


def test_space_without_compression_is_unchanged():
    space = _tiny_space()
    assert space.compression_keys == () and "sparsity" not in space.to_dict()
    assert not any(k.split(".")[0] in ("quantizer", "rank", "sparsity") for k in space.dimensions())
    assert all(s.sparsity is None and s.rank is None and s.quantizer is None for s in _enumerate(space))


@pytest.mark.parametrize("extra,msg", [
    ({"sparsity": 0.5}, "sparsity: expected a non-empty list"),
    ({"sparsity": [0, 1.5]}, "sparsity: 1.5 is not allowed"),
    ({"rank": [None, 0]}, "rank: 0 is not allowed"),
    ({"quantizer": ["uniform", "log"]}, "quantizer: 'log' is not a quantizer"),
    ({"rank": [0.5, 0.5]}, "rank: duplicate choices"),
    ({"pruning": ["channels"]}, "pruning: 'channels' is not a pruning kind"),
])
def test_space_refuses_bad_compression(extra, msg):
    with pytest.raises(SpaceError, match=msg):
        _tiny_space(**extra)


def test_supernet_and_darts_refuse_compression(tmp_path):
    from studies.config import ConfigError, StudyConfig

    base = {"name": "x", "objectives": ["neg_elbo", "size_bytes"],
            "bounds": {"neg_elbo": [0, 100], "size_bytes": [1, 1e6]},
            "space": {"latent_dim": [2], "mlp": {"depth": [1], "width": [4, 8]}, "sparsity": [0, 0.5]}}
    for block, word in (({"supernet": {"epochs": 1}}, "supernet: the weight-sharing supernet cannot carry "
                                                       "space.sparsity"),
                        ({"darts": {"steps": 1}}, "darts: cannot relax space.sparsity")):
        with pytest.raises(ConfigError, match=word):
            StudyConfig.from_dict({**base, **block}, base_dir=tmp_path)


@pytest.mark.parametrize("spec,seed", SPECS[:6], ids=[f"{s.family}-{i}" for s, i in SPECS[:6]])
def test_exports_carry_the_new_dimensions(spec, seed, tmp_path):
    from executorch.runtime import Runtime

    model = trained_like(spec, seed)
    packed = pack_model(model)
    doc = export_model(spec, packed, tmp_path, ("arch", "onnx", "c", "executorch"))
    assert ArchSpec.from_json((tmp_path / "arch.json").read_text()) == spec and doc["weights"]["packed_bytes"] == len(packed)
    x = torch.rand(2, *spec.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        out = model.decode(mu)

    check_onnx_export(tmp_path, x, mu, logvar, out)

    cc = shutil.which("cc")
    assert cc, "a C compiler (cc) is needed for this test"
    subprocess.run(f"{cc} {CFLAGS} -o vae_demo main.c vae_model.c -lm", shell=True, cwd=tmp_path, check=True)
    text = "\n".join(" ".join(f"{v:.9g}" for v in row.reshape(-1).tolist()) for row in x)
    res = subprocess.run(["./vae_demo", "reconstruct"], input=text, cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    close_to(np.array([[float(v) for v in line.split()] for line in res]), out, "C reconstruct")

    prog = Runtime.get().load_program(str(tmp_path / "model.pte"))
    e_mu, _ = prog.load_method("encode").execute([x[:1]])
    close_to(e_mu, mu[:1], "executorch mu")
    close_to(prog.load_method("decode").execute([mu[:1]])[0], out[:1], "executorch out")


STRUCTURED = [
    ArchSpec(family="mlp", enc_hidden=(32, 16), latent_dim=4, weight_bits=(4, 8, 32, 2, 4, 8), activation="sigmoid",
             sparsity=(0.5, 0.25, 0, 0.5, 0.3, 0), pruning="structured",
             quantizer=("kmeans", "uniform", "uniform", "uniform", "uniform", "kmeans")),
    ArchSpec(family="conv", enc_hidden=(12,), latent_dim=4, weight_bits=(4, 4, 4, 8, 4, 32, 4, 2), enc_channels=(8, 6),
             kernels=(3, 3), strides=(2, 2), sparsity=(0.5, 0.5, 0.5, 0, 0.25, 0.5, 0.5, 0), pruning="structured",
             activation="elu"),
    ArchSpec(family="conv", enc_hidden=(), latent_dim=3, weight_bits=(3, 32, 4, 4), enc_channels=(5,), kernels=(4,),
             strides=(2,), sparsity=(0.4, 0, 0.5, 0), pruning="structured", input_shape=(2, 12, 10)),
]


def test_structured_deployed_spec_by_hand():
    mlp, conv, _ = STRUCTURED
    d = mlp.deployed()
    assert d.enc_hidden == (16, 12) and d.decoder_hidden == (8, 32 - math.floor(0.3 * 32)) and d.pruning is None
    assert d.weight_bits == mlp.weight_bits and d.quantizer == mlp.quantizer and d.sparsity is None
    c = conv.deployed()
    assert (c.enc_channels, c.enc_hidden, c.decoder_hidden, c.decoder_channels) == ((4, 3), (6,), (9,), (3, 4))
    assert ArchSpec.from_json(mlp.to_json()) == mlp and mlp.to_dict()["pruning"] == "structured"


def test_flops_of_a_structured_pruned_layer_by_hand():
    from evaluator.costs import count_flops, static_costs

    mlp = STRUCTURED[0]
    f = count_flops(mlp).per_layer
    # enc.fc0 784 -> 32 loses 16 units; enc.fc1 (its consumer) 16 of 32 inputs and 4 of its 16 units
    assert f["enc.fc0"] == 2 * 784 * 16 and f["enc.fc1"] == 2 * 16 * 12 and f["head"] == 2 * 12 * 8
    assert f["dec.fc0"] == 2 * 4 * 8 and f["dec.fc1"] == 2 * 8 * 23 and f["dec.out"] == 2 * 23 * 784
    c = static_costs(mlp)
    assert c.params == (784 * 16 + 16) + (16 * 12 + 12) + (12 * 8 + 8) + (4 * 8 + 8) + (8 * 23 + 23) + (23 * 784 + 784)
    conv = STRUCTURED[1]
    f = count_flops(conv).per_layer
    assert f["enc.conv0"] == 2 * 4 * 1 * 9 * 14 * 14 and f["enc.conv1"] == 2 * 3 * 4 * 9 * 7 * 7
    assert f["enc.fc0"] == 2 * 3 * 49 * 6 and f["dec.proj"] == 2 * 9 * 3 * 49


@pytest.mark.parametrize("spec", STRUCTURED, ids=["mlp", "conv", "conv1"])
def test_structured_pruning_trains_packs_and_exports(spec, tmp_path):
    import onnxruntime as ort
    from evaluator.train import TrainConfig, train

    torch.manual_seed(0)
    model = build_vae(spec)
    data = (torch.rand(60, *spec.input_shape) * 255).to(torch.uint8)
    train(model, data, TrainConfig(epochs=2, batch_size=20, lr=1e-3))  # on the GPU where there is one
    model = model.cpu().eval()  # compared below with the shipped (unpacked, CPU) model on CPU inputs
    ship = spec.deployed()
    for g in __import__("search_space.structured", fromlist=["x"]).unit_groups(spec):
        layers = model.weight_layers()
        alive = layers[g.consumer].weight_mask.movedim(g.in_axis, 0).reshape(g.units, -1).abs().sum(1) > 0
        assert int(alive.sum()) == kept_count(g.units, g.target)
    packed = pack_model(model)
    assert len(packed) == packed_size_bytes(spec) == packed_size_bytes(ship)
    shipped = unpack_model(spec, packed).eval()
    assert shipped.spec == ship
    x = torch.rand(3, *spec.input_shape, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(3, spec.latent_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        wide, narrow = model(x, eps)[0], shipped(x, eps)[0]
    assert torch.allclose(wide, narrow, atol=1e-5, rtol=1e-5)  # the same function (summation order aside)
    doc = export_model(spec, packed, tmp_path, ("arch", "onnx"))
    assert doc["spec_id"] == ship.id and ArchSpec.from_dict(doc["trained_as"]) == spec
    assert ArchSpec.from_json((tmp_path / "arch.json").read_text()) == ship
    mu = ort.InferenceSession(str(tmp_path / "encoder.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = shipped.encode(x)[0]
    assert np.abs(mu - ref.numpy()).max() <= 1e-4 * max(1.0, float(ref.abs().max()))
