"""Integer inference (``arithmetic: int8``, issue 34): the training forward, the pure-integer reference, the C
library (x86 and Cortex-M), onnxruntime and ExecuTorch compute the same model."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluator.deploy.c_lib import write_c
from evaluator.deploy.int_program import integer_program, reference_decode, reference_encode
from search_space import ArchSpec, SearchSpace, build_vae, pack_model
from search_space.errors import SpecError

INT_SPACE = SearchSpace.from_dict({
    "family": ["mlp", "conv"], "latent_dim": [2, 5, 8], "activation": ["relu", "tanh", "silu", "leaky_relu"],
    "mlp": {"depth": [1, 2], "width": [7, 16, 40]},
    "conv": {"depth": [1, 2], "channels": [3, 8], "kernel": [3, 4], "stride": [1, 2], "fc_depth": [0, 1],
             "fc_width": [12, 32]},
    "decoder": "free", "weight_bits": [2, 3, 4, 5, 6, 8], "arithmetic": ["int8"],
    "rank": [None, 0.5], "sparsity": [0, 0.5, 0.9],
})


def random_specs(n: int, seed: int) -> list[ArchSpec]:
    """``n`` distinct int8 specs, both families (alternating), every bit-width, activation, rank and sparsity."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        fam = ("mlp", "conv")[len(out) % 2]
        s = INT_SPACE.define(lambda name, c: fam if name == "family" else rng.choice(c))
        if s.id not in {x.id for x in out}:
            out.append(s)
    return out


def calibrated(spec: ArchSpec, seed: int):
    """A model whose quantisers have seen data (two training-mode passes), weights perturbed as after training."""
    torch.manual_seed(seed)
    m = build_vae(spec)
    with torch.no_grad():
        for step in range(1, 11):
            m.after_step(step, 10)
        for layer in m.weight_layers().values():
            if layer.bits < 32:
                layer.step_size().mul_(torch.empty_like(layer.step_size()).uniform_(0.6, 1.2))
            if layer.bias is not None:
                layer.bias.normal_(0, 0.2)
        for _ in range(2):
            m(torch.rand(16, *spec.input_shape))
    return m.eval()


def run_c(folder: Path, mode: str, rows: np.ndarray) -> np.ndarray:
    text = "\n".join(" ".join(f"{v:.9g}" for v in r.reshape(-1)) for r in rows)
    r = subprocess.run(["./vae_demo", mode], cwd=folder, input=text, capture_output=True, text=True, check=True)
    return np.array([[float(v) for v in line.split()] for line in r.stdout.strip().splitlines()], np.float32)


def test_training_forward_is_the_integer_program():
    for i, spec in enumerate(random_specs(8, seed=1)):
        m = calibrated(spec, i)
        p = integer_program(spec, pack_model(m))
        x = torch.rand(6, *spec.input_shape)
        with torch.no_grad():
            mu, lv = m.encode(x)
            out = m.decode(mu)
        rmu, rlv = reference_encode(p, x.numpy())
        assert np.array_equal(mu.numpy(), rmu) and np.array_equal(lv.numpy(), rlv), spec.to_json()
        assert np.array_equal(out.numpy(), reference_decode(p, rmu)), spec.to_json()


def test_c_library_is_bit_exact_on_20_random_integer_specs(tmp_path):
    """Acceptance: the C output equals the pure-integer reference bit for bit (both families, every width)."""
    specs = random_specs(20, seed=0)
    assert Counter(s.family for s in specs) == {"mlp": 10, "conv": 10}
    assert set().union(*(set(s.weight_bits) for s in specs)) == {2, 3, 4, 5, 6, 8}
    for i, spec in enumerate(specs):
        m = calibrated(spec, 100 + i)
        packed = pack_model(m)
        p = integer_program(spec, packed)
        d = tmp_path / f"s{i}"
        d.mkdir()
        write_c(spec, packed, d)
        subprocess.run(["make", "-s"], cwd=d, check=True, capture_output=True)
        x = torch.rand(4, spec.n_inputs).numpy()
        rmu, rlv = reference_encode(p, x)
        assert np.array_equal(run_c(d, "encode", x), np.concatenate([rmu, rlv], 1)), spec.to_json()
        assert np.array_equal(run_c(d, "reconstruct", x), reference_decode(p, rmu).reshape(4, -1)), spec.to_json()
        _check_memory(spec, d)


def _check_memory(spec: ArchSpec, folder: Path) -> None:
    """bss is ram_bytes (plus the compiler's alignment of each of the <= 7 static arrays: <= 32 bytes each on
    x86-64); flash_bytes (the integer tables exact, the code estimated) within the fitted margin of text+data."""
    from evaluator.deploy.memory import FLASH_MARGIN, FLASH_SLACK, flash_bytes, ram_bytes

    subprocess.run(["cc", "-std=c99", "-O2", "-c", "-o", "vae_model.o", "vae_model.c"], cwd=folder, check=True)
    t, d, bss = (int(v) for v in subprocess.run(["size", "vae_model.o"], cwd=folder, capture_output=True, text=True,
                                                check=True).stdout.splitlines()[1].split()[:3])
    assert ram_bytes(spec) <= bss <= ram_bytes(spec) + 7 * 32, (bss, ram_bytes(spec))
    assert abs(flash_bytes(spec) - (t + d)) <= FLASH_MARGIN * (t + d) + FLASH_SLACK, (flash_bytes(spec), t + d)


def test_integer_c_reads_whole_bytes_and_packs_the_weights(tmp_path):
    """No per-weight generic extraction on the layers' main path, and the packed bytes are the weights."""
    spec = ArchSpec.mlp((64, 32), 8, bits=4, arithmetic="int8")
    m = calibrated(spec, 0)
    packed = pack_model(m)
    write_c(spec, packed, tmp_path)
    src = (tmp_path / "vae_model.c").read_text()
    assert "dot_p4" in src and "qlinear(" in src and "float acc" not in src and "malloc(" not in src
    assert "static float weight(" not in src and "field(" not in src  # the float export's per-weight extraction
    assert f"vae_packed[VAE_PACKED_BYTES]" in src and str(len(packed)) in (tmp_path / "vae_model.h").read_text()


def _ort_sessions(folder: Path):
    import onnx
    import onnxruntime as ort

    ops, sess = Counter(), {}
    for part in ("encoder", "decoder"):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(folder / f"{part}.opt.onnx")
        so.intra_op_num_threads = 1
        sess[part] = ort.InferenceSession(str(folder / f"{part}.onnx"), so, providers=["CPUExecutionProvider"])
        ops.update(n.op_type for n in onnx.load(str(folder / f"{part}.opt.onnx")).graph.node)
    return sess, ops


def _input_step_bound(p, part: str, out_shape) -> float:
    """The largest change of an exit's output that one step of every input code can cause: the tolerance for a
    runtime that requantises in float (its int8 activations may differ from the reference's by one step)."""
    s = (p.encoder if part == "encoder" else p.decoder)[-1]
    q = np.moveaxis(np.abs(s.q.astype(np.float64)), s.step.ch_axis, 0)
    per_out = q.reshape(q.shape[0], -1)
    return float((per_out.sum(1).max() * s.s_in * s.w_scale.max()))


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_onnxruntime_fuses_integer_kernels(tmp_path, family):
    """Acceptance: the optimised graph runs QGemm / QLinearConv (no float Gemm, MatMul or Conv on dequantised
    weights); outputs within one input step of the integer reference at the exits."""
    from evaluator.deploy.onnx_graph import write_onnx

    spec = next(s for s in random_specs(12, seed=3) if s.family == family and s.activation == "relu")
    m = calibrated(spec, 7)
    packed = pack_model(m)
    p = integer_program(spec, packed)
    write_onnx(spec, packed, tmp_path)
    sess, ops = _ort_sessions(tmp_path)
    assert ops["QGemm"] + ops["QLinearConv"] + ops["QLinearMatMul"] + ops["MatMulIntegerToFloat"] >= 2, ops
    assert not {"Gemm", "MatMul", "Conv", "FusedGemm", "FusedConv"} & set(ops), ops
    x = torch.rand(16, *spec.input_shape).numpy()
    mu, lv = sess["encoder"].run(None, {"x": x})
    rmu, rlv = reference_encode(p, x)
    tol = _input_step_bound(p, "encoder", None) * 1.01
    assert np.abs(mu - rmu).max() <= tol and np.abs(lv - rlv).max() <= tol
    out = sess["decoder"].run(None, {"z": rmu})[0]
    assert np.abs(out - reference_decode(p, rmu)).max() <= _input_step_bound(p, "decoder", None) * 1.01


def test_int8_spec_refuses_layers_that_cannot_be_integer():
    with pytest.raises(SpecError, match="32-bit .* cannot run in integers"):
        ArchSpec.mlp((16,), 4, bits=32, arithmetic="int8")
    with pytest.raises(SpecError, match="k-means"):
        ArchSpec.mlp((16,), 4, bits=4, arithmetic="int8", quantizer=("kmeans",) * 4)
    with pytest.raises(SpecError, match="act_bits must be null"):
        ArchSpec.mlp((16,), 4, bits=4, arithmetic="int8", act_bits=8)
    with pytest.raises(SpecError, match="arithmetic: 'int4' is not allowed"):
        ArchSpec.mlp((16,), 4, bits=4, arithmetic="int4")
    s = ArchSpec.mlp((16,), 4, bits=4, arithmetic="int8")
    assert s.to_dict()["version"] == 4 and ArchSpec.from_json(s.to_json()) == s
    assert ArchSpec.mlp((16,), 4, bits=4, arithmetic="float") == ArchSpec.mlp((16,), 4, bits=4)


def test_space_arithmetic_dimension_counts_and_round_trips():
    base = {"latent_dim": [2, 4], "mlp": {"depth": [1], "width": [8, 16]}, "weight_bits": [2, 8, 32],
            "act_bits": [None, 8], "rank": [None, 0.5]}
    sizes = {}
    for arith in (["float"], ["int8"], ["float", "int8"]):
        sp = SearchSpace.from_dict({**base, "arithmetic": arith})
        seen = _enumerate(sp)
        assert len(seen) == sp.size(), arith
        sizes[tuple(arith)] = sp.size()
        rng = random.Random(0)
        for _ in range(20):
            s = sp.sample(rng)
            assert sp.contains(s) and sp.from_params(sp.to_params(s)) == s
            assert s.is_integer == (sp.to_params(s).get("arithmetic") == "int8")
    assert sizes[("float", "int8")] == sizes[("float",)] + sizes[("int8",)]
    assert "arithmetic" not in SearchSpace.from_dict(base).to_dict()  # older spaces keep their fingerprints


def _enumerate(sp: SearchSpace) -> set[str]:
    seen: set[str] = set()

    class Need(Exception):
        pass

    def walk(prefix: list[int]) -> None:
        path: list[int] = []

        def choose(name, choices):
            if len(path) < len(prefix):
                path.append(prefix[len(path)])
                return choices[path[-1]]
            raise Need(len(choices))

        try:
            seen.add(sp.define(choose).id)
        except Need as e:
            for i in range(e.args[0]):
                walk(prefix + [i])

    walk([])
    return seen


def test_space_refuses_int8_without_integer_widths():
    from search_space.errors import SpaceError

    with pytest.raises(SpaceError, match="int8 needs integer weights"):
        SearchSpace.from_dict({"latent_dim": [2], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [32],
                               "arithmetic": ["int8"]})
    with pytest.raises(SpaceError, match="arithmetic: 'fixed' is not allowed"):
        SearchSpace.from_dict({"latent_dim": [2], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [8],
                               "arithmetic": ["fixed"]})


def test_reported_neg_elbo_is_the_c_librarys(mnist_small, tmp_path):
    """Acceptance: the test-split −ELBO of the exported integer model, computed by running the C library, is
    within 0.1 % of what evaluation reports for the trained spec."""
    from evaluator import TrainConfig, evaluate_neg_elbo
    from evaluator.elbo import kl_std_normal
    from evaluator.train import seeded_model, train
    from search_space.likelihood import get_likelihood

    spec = ArchSpec.mlp((64,), 8, bits=4, arithmetic="int8")
    model = seeded_model(spec, 0)
    train(model, mnist_small.train, TrainConfig(epochs=1, batch_size=100, lr=0.002, device="cpu"))
    model.eval()
    test = mnist_small.test[:200]
    reported = evaluate_neg_elbo(model, test)["neg_elbo"]
    write_c(spec, pack_model(model), tmp_path)
    subprocess.run(["make", "-s"], cwd=tmp_path, check=True, capture_output=True)
    x = test.to(torch.float32)
    enc = run_c(tmp_path, "encode", x.reshape(len(x), -1).numpy())
    mu, lv = torch.from_numpy(enc[:, :8]), torch.from_numpy(enc[:, 8:])
    eps = torch.randn((len(x), 8), generator=torch.Generator().manual_seed(0))
    z = mu + torch.exp(0.5 * lv) * eps
    out = torch.from_numpy(run_c(tmp_path, "decode", z.numpy())).reshape(len(x), *spec.output_shape)
    lik = get_likelihood(spec.likelihood)
    rec = -lik.log_prob(out, x.reshape(len(x), *spec.input_shape)).reshape(len(x), -1).sum(1)
    kl = kl_std_normal(mu, lv)
    c_neg_elbo = float((rec + kl).mean())
    assert abs(c_neg_elbo - reported) <= 1e-3 * reported, (c_neg_elbo, reported)


@pytest.mark.parametrize("family", ["mlp", "conv"])
def test_executorch_delegates_the_integer_layers_to_xnnpack(family):
    """Acceptance: every linear and convolution of the integer program is inside an XNNPACK delegate (counted in
    the lowered graph); a transposed convolution runs there on float weights (XNNPACK's int8 one was wrong)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    from evaluator.deploy.pte import pte_bytes
    from evaluator.deploy.pte_int import IntegerVAE

    spec = next(s for s in random_specs(12, seed=5) if s.family == family)
    m = calibrated(spec, 3)
    packed = pack_model(m)
    p = integer_program(spec, packed)
    vae = IntegerVAE(p).eval()

    class Enc(torch.nn.Module):
        def forward(self, x):
            return vae.encode(x)

    ep = torch.export.export(Enc(), (torch.zeros(1, *spec.input_shape),))
    graph = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).exported_program().graph_module.graph
    calls = [str(n.target) for n in graph.nodes if n.op == "call_function"]
    delegated = sum("call_delegate" in c for c in calls)
    portable_compute = [c for c in calls if any(k in c for k in ("mm.", "addmm", "convolution", "linear"))]
    assert delegated >= 1 and not portable_compute, calls
    prog = Runtime.get().load_program(pte_bytes(spec, packed))
    x = torch.rand(1, *spec.input_shape)
    mu, lv = prog.load_method("encode").execute([x.contiguous()])
    rmu, rlv = reference_encode(p, x.numpy())
    tol = _input_step_bound(p, "encoder", None) * 1.01
    assert np.abs(mu.numpy() - rmu).max() <= tol and np.abs(lv.numpy() - rlv).max() <= tol


@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m0plus"])
def test_cortex_m_build_is_bit_exact_and_measured(tmp_path, cpu):
    """The integer C library cross-compiled for the core and emulated computes the reference bit for bit;
    flash = text + data, RAM = data + bss + the stack; fewer instructions than the float twin."""
    from evaluator import mcu

    for i, spec in enumerate(s for s in random_specs(6, seed=9)[:2]):
        m = calibrated(spec, i)
        packed = pack_model(m)
        p = integer_program(spec, packed)
        x = torch.rand(spec.n_inputs).numpy()
        r = mcu.measure(spec, packed, tmp_path / f"{cpu}-{i}", cpu, x)
        rmu, _ = reference_encode(p, x[None])
        assert np.array_equal(r["out"], reference_decode(p, rmu).reshape(-1)), spec.to_json()
        assert r["flash_bytes"] == r["text"] + r["data"] and r["ram_bytes"] == r["data"] + r["bss"] + r["stack_bytes"]
        assert r["instructions"] > 0 and 0 < r["stack_bytes"] <= 4096
    spec = ArchSpec.mlp((32,), 4, bits=4, arithmetic="int8")
    twin = ArchSpec.mlp((32,), 4, bits=32)
    n = {s.arithmetic: mcu.measure(s, pack_model(calibrated(s, 0)), tmp_path / f"twin-{s.id}", cpu)["instructions"]
         for s in (spec, twin)}
    assert n["int8"] < n[None], n


@pytest.mark.slow
@pytest.mark.parametrize("cpu", ["cortex-m4", "cortex-m7"])
def test_cortex_m_dsp_kernels_are_bit_exact_on_20_random_specs(tmp_path, cpu):
    from evaluator import mcu

    for i, spec in enumerate(random_specs(20, seed=0)):
        m = calibrated(spec, 100 + i)
        packed = pack_model(m)
        p = integer_program(spec, packed)
        x = torch.rand(spec.n_inputs).numpy()
        r = mcu.measure(spec, packed, tmp_path / f"{i}", cpu, x)
        rmu, _ = reference_encode(p, x[None])
        assert np.array_equal(r["out"], reference_decode(p, rmu).reshape(-1)), spec.to_json()


def test_cortex_m_bad_input_is_one_line(tmp_path, monkeypatch):
    from evaluator import LatencyConfig, LatencyError
    from evaluator.latency import measure_mcu
    from search_space import VaenasInputError

    with pytest.raises(VaenasInputError, match="latency.cpu: 'cortex-m99' is not a core vaenas measures; use one of "
                                               "cortex-m4, cortex-m7, cortex-m0plus"):
        LatencyConfig(backend="cortex_m", cpu="cortex-m99")
    with pytest.raises(VaenasInputError, match="latency.cpu: only backend 'cortex_m'"):
        LatencyConfig(backend="c", cpu="cortex-m4")
    monkeypatch.setenv("PATH", str(tmp_path))  # no cross-compiler on PATH
    spec = ArchSpec.mlp((8,), 2, bits=4, arithmetic="int8")
    with pytest.raises(LatencyError, match="cross-compiler is not installed .*gcc-arm-none-eabi"):
        measure_mcu(calibrated(spec, 0), LatencyConfig(backend="cortex_m"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _cli(argv, cwd: Path, env: dict | None = None):
    import os
    import sys

    return subprocess.run([sys.executable, "-m", "studies.cli", *argv], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("case", ["cpu", "tools", "space", "arch"])
def test_integer_and_cortex_m_bad_input_from_the_cli(case, tmp_path, data_root):
    """One line, exit 2, nothing written: a cpu that is not one, no cross-compiler on PATH, a space whose int8
    specs have no integer widths, an arch file whose int8 spec has a 32-bit layer."""
    import sys

    import yaml

    cfg = {"name": "mcu", "dataset": "mnist", "data_root": str(data_root), "n_train": 200,
           "space": {"latent_dim": [2], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [4],
                     "arithmetic": ["int8"]},
           "strategy": {"name": "random"}, "objectives": ["neg_elbo", "mcu_instructions"],
           "bounds": {"neg_elbo": [100, 600], "mcu_instructions": {"lo": 1000, "hi": 10000000, "log": True}},
           "budget": {"trials": 1}, "train": {"epochs": 1}, "latency": {"backend": "cortex_m"}, "seed": 0}
    env = None
    if case == "cpu":
        cfg["latency"]["cpu"] = "cortex-m99"
        needle = "latency.cpu: 'cortex-m99' is not a core"
    elif case == "tools":
        bin_ = tmp_path / "bin"
        bin_.mkdir()
        (bin_ / "python").symlink_to(sys.executable)
        env = {"PATH": str(bin_)}
        needle = "cross-compiler is not installed"
    elif case == "space":
        cfg["space"]["weight_bits"] = [32]
        needle = "arithmetic: int8 needs integer weights"
    if case == "arch":
        arch = tmp_path / "arch.json"
        arch.write_text('{"type": "vaenas.ArchSpec", "version": 4, "family": "mlp", "enc_hidden": [8], "latent_dim": 2, '
                        '"weight_bits": [4, 32, 4, 4], "arithmetic": "int8"}')
        argv, needle = ["train", "--arch", str(arch), "--out", str(tmp_path / "o"), "--data-root", str(data_root)], \
            "arithmetic int8: layer head has 32-bit (float) weights"
    else:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        argv = ["search", "c.yaml", "--runs-dir", str(tmp_path / "runs")]
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _cli(argv, tmp_path, env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before



def test_supernet_and_darts_refuse_int8_spaces():
    from evaluator.darts import DartsSearch
    from evaluator.supernet import SupernetConfig
    from search_space import VaenasInputError
    from search_space.errors import SpaceError

    space = SearchSpace.from_dict({"latent_dim": [2], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [4, 8],
                                   "arithmetic": ["float", "int8"]})
    with pytest.raises(VaenasInputError, match="supernet: the weight-sharing supernet runs float activations"):
        SupernetConfig.from_config({}, space)
    with pytest.raises(SpaceError, match="darts: needs .*arithmetic float"):
        DartsSearch.check_space(space)
