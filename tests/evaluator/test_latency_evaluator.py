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


def test_deployable_model_is_the_float_reconstruction_pass(trained_4bit, mnist_small):
    x = mnist_small.val[:20]
    with torch.no_grad():
        mu, _ = trained_4bit.encode(x)
        assert torch.allclose(deployable_model(trained_4bit)(x), trained_4bit.decode(mu), atol=1e-5)


@pytest.mark.parametrize("backend,label", [("onnxruntime", "onnxruntime"), ("c", "C99"), ("executorch", "executorch"),
                                           ("torch", "torch")])
def test_every_backend_times_its_own_artifact(trained_4bit, backend, label):
    r = measure_latency(trained_4bit, LatencyConfig(backend=backend, repeats=5, warmup=1))
    assert r.path.startswith(label) and 0 < r.p10_ms <= r.median_ms <= r.p90_ms and r.repeats == 5


def test_command_backend_takes_the_last_number_and_fails_in_one_line(trained_4bit, tmp_path):
    from evaluator import LatencyError

    ok = tmp_path / "board.sh"
    ok.write_text('#!/bin/sh\ntest -f "$1/vae_model.c" || exit 3\necho "copied $1"\necho "median: 1.25 ms"\n')
    ok.chmod(0o755)
    r = measure_latency(trained_4bit, LatencyConfig(backend="command", command=f"{ok} {{artifact}}"))
    assert r.median_ms == 1.25 and r.path.startswith("command")
    onnx_cmd = tmp_path / "onnx.sh"
    onnx_cmd.write_text('#!/bin/sh\ntest -f "$1/encoder.onnx" && echo 0.5\n')
    onnx_cmd.chmod(0o755)
    assert measure_latency(trained_4bit, LatencyConfig(backend="command", command=str(onnx_cmd), format="onnx")).median_ms == 0.5
    for body, needle in (("exit 4", "exited with status 4"), ("echo no timing here", "printed no number")):
        bad = tmp_path / "bad.sh"
        bad.write_text(f"#!/bin/sh\n{body}\n")
        bad.chmod(0o755)
        with pytest.raises(LatencyError, match=needle):
            measure_latency(trained_4bit, LatencyConfig(backend="command", command=str(bad)))
    with pytest.raises(LatencyError, match="not found"):
        measure_latency(trained_4bit, LatencyConfig(backend="command", command="no-such-program-xyz"))


def test_a_hostile_tmpdir_cannot_make_a_shell_command_run_anything(trained_4bit, tmp_path, monkeypatch):
    """A latency command that hands {artifact} to `sh -c` gets a path with no shell syntax even when $TMPDIR
    holds a $(...) payload; the path is also in $VAENAS_ARTIFACT."""
    import tempfile

    evil = tmp_path / "t$(touch PWNED)x"
    evil.mkdir()
    monkeypatch.setenv("TMPDIR", str(evil))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read $TMPDIR
    monkeypatch.chdir(tmp_path)
    cmd = "sh -c 'test -f {artifact}/vae_model.c && test -f \"$VAENAS_ARTIFACT\"/main.c && echo 2.5'"
    assert measure_latency(trained_4bit, LatencyConfig(backend="command", command=cmd)).median_ms == 2.5
    assert not (tmp_path / "PWNED").exists() and not (evil / "PWNED").exists()


def test_c_backend_without_a_compiler_says_so(trained_4bit, monkeypatch, tmp_path):
    from evaluator import LatencyError

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(LatencyError, match="no C compiler"):
        measure_latency(trained_4bit, LatencyConfig(backend="c", repeats=2))


@pytest.mark.parametrize("kw,needle", [({"backend": "tflite"}, "latency.backend"), ({"backend": "command"}, "latency.command"),
                                       ({"command": "x.sh"}, "only backend 'command'"),
                                       ({"backend": "command", "command": "x", "format": "tflite"}, "latency.format"),
                                       ({"device": "cuda"}, "latency.device")])
def test_latency_config_is_validated(kw, needle):
    with pytest.raises(VaenasInputError, match=needle):
        LatencyConfig(**kw)


def test_no_deprecated_torch_ao_quantization_anywhere():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    hits = [str(p) for d in ("search_space", "evaluator", "strategies", "studies", "benchmarks")
            for p in (root / d).rglob("*.py") if "torch.ao.quantization" in p.read_text()]
    assert hits == []


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


@pytest.mark.parametrize("names", [[], ["neg_elbo", "speed"], ["neg_elbo"] * 2, ["neg_elbo", "flops", "bitops",
                                                                                 "params", "size_bytes"]])
def test_objective_choice_is_validated(names):
    with pytest.raises(VaenasInputError):
        check_objectives(names)
