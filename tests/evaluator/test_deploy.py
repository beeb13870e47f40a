"""Deployable exports: ONNX (onnxruntime), the C library (compiled with -Werror) and ExecuTorch reproduce
the PyTorch model's outputs; the C arrays are the packed bytes; ram_bytes/flash_bytes match the build."""

import random
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
from conftest import check_onnx_export, close_to
import torch

from search_space import ArchSpec, build_vae, pack_model, packed_layout
from evaluator.deploy import export_model, flash_bytes, ram_bytes
from evaluator.deploy.c_lib import CFLAGS
from evaluator.deploy.memory import FLASH_MARGIN, FLASH_SLACK
from evaluator.deploy.onnx_graph import int_type
from search_space.spec import ACTIVATIONS

BITS = (2, 3, 4, 5, 6, 8, 32)
LIKELIHOODS = ("bernoulli", "gaussian", "discretized_logistic")


def _spec(rng: random.Random, family: str) -> ArchSpec:
    """A random valid spec: every activation, likelihood and input kind, bits from BITS, sometimes act_bits."""
    while True:
        act = rng.choice(ACTIVATIONS)
        lik = rng.choice(LIKELIHOODS)
        act_bits = rng.choice([None, None, None, 8, 4])
        latent = rng.randint(1, 6)
        try:
            if family == "mlp":
                shape = rng.choice([(1, 12, 10), (13,), (2, 5, 7), (40,)])
                enc = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                dec = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                n = len(enc) + len(dec) + 2
                return ArchSpec(family="mlp", enc_hidden=enc, dec_hidden=dec, latent_dim=latent, activation=act,
                                weight_bits=tuple(rng.choice(BITS) for _ in range(n)), input_shape=shape,
                                likelihood=lik, act_bits=act_bits)
            shape = rng.choice([(1, 12, 12), (3, 9, 7), (2, 10, 11)])
            nc = rng.randint(1, 2)
            ks = tuple(rng.choice([1, 2, 3, 4, 5]) for _ in range(nc))
            ss = tuple(rng.choice([1, 2, 3]) for _ in range(nc))
            enc = tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1)))
            dec = tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1)))
            n = 2 * nc + len(enc) + len(dec) + 2
            return ArchSpec(family="conv", enc_hidden=enc, dec_hidden=dec, latent_dim=latent,
                            enc_channels=tuple(rng.choice([2, 3, 5]) for _ in range(nc)), kernels=ks, strides=ss,
                            dec_channels=tuple(rng.choice([2, 4]) for _ in range(nc)), activation=act,
                            weight_bits=tuple(rng.choice(BITS) for _ in range(n)), input_shape=shape,
                            likelihood=lik, act_bits=act_bits)
        except Exception:
            continue


def _model(spec: ArchSpec, seed: int):
    """A model with learned-looking step sizes: 0.6-1.2 x the max-abs scale, so some weights clip."""
    torch.manual_seed(seed)
    m = build_vae(spec).eval()
    with torch.no_grad():
        for layer in m.weight_layers().values():
            if layer.bits < 32:
                layer.calibrate()
                layer.weight_scale.mul_(torch.empty_like(layer.weight_scale).uniform_(0.6, 1.2))
            layer.bias.normal_(0, 0.1)
    return m


SPECS = [(_spec(random.Random(1000 + i), "mlp" if i % 2 == 0 else "conv"), i) for i in range(20)]


def _c_arrays(src: str) -> list[bytes]:
    arrays = re.findall(r"const uint8_t (\w+)\[[^\]]*\] = \{([^}]*)\}", src)
    return [bytes(int(v, 16) for v in re.findall(r"0x([0-9a-f]{2})", body)) for _, body in arrays]


def test_specs_cover_families_bits_likelihoods_and_shapes():
    specs = [s for s, _ in SPECS]
    assert {s.family for s in specs} == {"mlp", "conv"} and len(specs) >= 20
    assert set(b for s in specs for b in s.weight_bits) == set(BITS)
    assert {s.likelihood for s in specs} == set(LIKELIHOODS)
    assert {len(s.input_shape) for s in specs} == {1, 3} and any(s.act_bits for s in specs)


@pytest.mark.parametrize("spec,seed", SPECS, ids=[f"{s.family}-{i}" for s, i in SPECS])
def test_round_trip_onnx_c_executorch(spec, seed, tmp_path):
    import onnx
    from executorch.exir._serialize._program import deserialize_pte_binary
    from executorch.runtime import Runtime

    model = _model(spec, seed)
    packed = pack_model(model)
    doc = export_model(spec, packed, tmp_path, ("arch", "onnx", "c", "executorch"))
    assert ArchSpec.from_json((tmp_path / "arch.json").read_text()) == spec
    x = torch.randn(3, *spec.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        out = model.decode(mu)
    layout = packed_layout(spec)
    quant = [lay for lay in layout if lay.bits < 32]

    # ONNX in onnxruntime, weights as integer initializers
    check_onnx_export(tmp_path, x, mu, logvar, out)
    ints, floats_2d = Counter(), Counter()
    for f in ("encoder.onnx", "decoder.onnx"):
        for init in onnx.load(str(tmp_path / f)).graph.initializer:
            n = int(np.prod(init.dims))
            if init.data_type == onnx.TensorProto.INT4:
                ints[("INT4", n)] += 1
            elif init.data_type == onnx.TensorProto.INT8:
                ints[("INT8", n)] += 1
            elif init.data_type == onnx.TensorProto.FLOAT and len(init.dims) > 1:
                floats_2d[tuple(init.dims)] += 1
    assert ints == Counter((int_type(lay.bits), lay.n_weights) for lay in quant), "ONNX fell back to float weights"
    assert floats_2d == Counter(lay.weight_shape for lay in layout if lay.bits == 32)  # only the 32-bit layers

    # C: the packed bytes, compiled with warnings as errors, same outputs, RAM = bss
    src = (tmp_path / "vae_model.c").read_text()
    assert _c_arrays(src) == [packed], "the C array is not pack_model's bytes"
    assert not re.search(r"float\s+\w+\s*\[\s*\d+\s*\]\s*=", src)  # no dequantised copy of the weights
    cc = shutil.which("cc")
    assert cc, "a C compiler (cc) is needed for this test"
    subprocess.run(f"{cc} {CFLAGS} -o vae_demo main.c vae_model.c -lm && {cc} {CFLAGS} -c vae_model.c", shell=True,
                   cwd=tmp_path, check=True)
    text = "\n".join(" ".join(f"{v:.9g}" for v in row.reshape(-1).tolist()) for row in x)
    run = lambda mode, inp: np.array([[float(v) for v in line.split()] for line in subprocess.run(  # noqa: E731
        ["./vae_demo", mode], input=inp, cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()])
    c_enc = run("encode", text)
    close_to(c_enc[:, :spec.latent_dim], mu, "C mu")
    close_to(c_enc[:, spec.latent_dim:], logvar, "C logvar")
    close_to(run("reconstruct", text), out, "C reconstruct")
    ztext = "\n".join(" ".join(f"{v:.9g}" for v in row.tolist()) for row in mu)
    close_to(run("decode", ztext), out, "C decode")
    t, d, bss = (int(v) for v in subprocess.run(["size", "vae_model.o"], cwd=tmp_path, capture_output=True, text=True,
                                                check=True).stdout.splitlines()[1].split()[:3])
    assert bss == ram_bytes(spec) == doc["ram_bytes"]
    assert abs(flash_bytes(spec) - (t + d)) <= FLASH_MARGIN * (t + d) + FLASH_SLACK, (flash_bytes(spec), t + d)

    # ExecuTorch: int8 codes in the program, same outputs
    prog = Runtime.get().load_program(str(tmp_path / "model.pte"))
    e_mu, e_lv = prog.load_method("encode").execute([x[:1]])
    close_to(e_mu, mu[:1], "executorch mu")
    close_to(e_lv, logvar[:1], "executorch logvar")
    close_to(prog.load_method("decode").execute([mu[:1]])[0], out[:1], "executorch out")
    pte = deserialize_pte_binary((tmp_path / "model.pte").read_bytes())
    pte = getattr(pte, "program", pte)
    consts = Counter()
    seen = set()
    for plan in pte.execution_plan:
        for v in plan.values:
            tt = v.val
            if type(tt).__name__ == "Tensor" and tt.data_buffer_idx > 0 and tt.data_buffer_idx not in seen:
                seen.add(tt.data_buffer_idx)
                consts[int(tt.scalar_type)] += int(np.prod(tt.sizes)) if len(tt.sizes) else 1
    assert consts[1] == sum(lay.n_weights for lay in quant), "ExecuTorch fell back to float weights"  # 1: int8
    floats = sum(lay.n_scales + lay.n_bias + (lay.n_weights if lay.bits == 32 else 0) for lay in layout)
    assert consts[6] == floats  # 6: float32 - scales, biases and the 32-bit layers only


def test_manifest_says_what_inputs_and_outputs_mean(tmp_path):
    spec = ArchSpec(family="mlp", enc_hidden=(8,), latent_dim=3, weight_bits=(4, 8, 4, 2), input_shape=(5,),
                    likelihood="gaussian")
    model = _model(spec, 0)
    doc = export_model(spec, pack_model(model), tmp_path, ("onnx", "c"), {"normalization": {"mean": [0] * 5, "std": [1] * 5}})
    import json

    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m == json.loads(json.dumps(doc))
    assert m["spec_id"] == spec.id and set(m["formats"]) == {"onnx", "c"}
    assert m["files"]["vae_model.c"] == (tmp_path / "vae_model.c").stat().st_size
    assert m["input"]["normalization"]["std"] == [1] * 5
    assert "mean" in m["outputs"]["out"]["parameters"][0] and "log-std" in m["outputs"]["out"]["parameters"][1]
    assert m["flash_bytes_is_estimate"] is True and m["ram_bytes"] == ram_bytes(spec)
    assert not list(tmp_path.glob(".vaenas-export-*"))  # the staging folder is gone


def test_run_hints_say_what_a_user_must_pass(tmp_path):
    """ExecuTorch's runtime misreads non-contiguous inputs (upstream): its hint says to pass contiguous
    tensors; the C hint names input.txt only where one was written."""
    from evaluator.deploy.formats import FORMATS as REGISTRY

    spec = ArchSpec.mlp((8,), 2, input_shape=(6,), likelihood="gaussian")
    assert "x.contiguous()" in REGISTRY["executorch"].run_hint(tmp_path, spec)
    assert "< FILE" in REGISTRY["c"].run_hint(tmp_path, spec)
    (tmp_path / "input.txt").write_text("0 0 0 0 0 0\n")
    assert "< input.txt" in REGISTRY["c"].run_hint(tmp_path, spec)
