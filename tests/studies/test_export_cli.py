"""`vaenas export --format/--model`: deployable folders from a checkpoint, and bad input in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from search_space import ArchSpec, build_vae
from evaluator.deploy import ram_bytes
from studies.files import save_checkpoint

SPEC = ArchSpec(family="mlp", enc_hidden=(16,), latent_dim=3, weight_bits=(3, 8, 32, 2), input_shape=(7,),
                likelihood="gaussian")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    model = build_vae(SPEC)
    ck = tmp_path / "run" / "model.pt"
    save_checkpoint(ck, model, SPEC, {"likelihood": "gaussian", "input_shape": [7],
                                      "normalization": {"mean": [0.5] * 7, "std": [2.0] * 7}})
    return ck


def _cli(*argv, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "studies.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_model_export_writes_formats_manifest_and_builds_c(checkpoint, tmp_path):
    out = tmp_path / "dep"
    r = _cli("export", "--model", checkpoint, "--format", "c,onnx", "--format", "arch", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["formats"]) == {"arch", "onnx", "c"} and m["input"]["normalization"]["std"] == [2.0] * 7
    assert m["c"]["size"]["bss"] == ram_bytes(SPEC) and "make" in r.stdout and "vae_demo" in r.stdout
    assert (out / "vae_demo").exists() and not (out / "input.txt").exists()
    assert "input.txt" not in r.stdout and "./vae_demo reconstruct < FILE" in r.stdout  # no hint at a missing file
    y = subprocess.run(["./vae_demo", "reconstruct"], input="0 1 2 3 4 5 6\n", cwd=out, capture_output=True, text=True,
                       check=True).stdout.split()
    assert len(y) == 14  # gaussian: mean and raw log-std per feature
    # the default folder: deploy/ beside the checkpoint; a second export there needs --force
    assert _cli("export", "--model", checkpoint, "--format", "onnx", cwd=tmp_path).returncode == 0
    assert (checkpoint.parent / "deploy" / "encoder.onnx").exists()
    r = _cli("export", "--model", checkpoint, "--format", "onnx", cwd=tmp_path)
    assert r.returncode == 2 and "--force" in r.stderr


@pytest.mark.parametrize("argv,needle", [
    (["--format", "tflite"], "'tflite' is not a format"),
    (["--format", ""], "name at least one format"),
    (["--format", "c", "--trial", "3"], "--model exports that checkpoint itself"),
])
def test_bad_export_is_one_line_exit_2_nothing_written(checkpoint, tmp_path, argv, needle):
    out = tmp_path / "never"
    r = _cli("export", "--model", checkpoint, *argv, "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr
    assert not out.exists()


def test_c_export_never_builds_over_a_users_binary(checkpoint, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "vae_demo").write_text("my own program")
    r = _cli("export", "--model", checkpoint, "--format", "c", "--out", out, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "vae_demo" in r.stderr, r.stderr
    assert (out / "vae_demo").read_text() == "my own program" and not (out / "vae_model.c").exists()


def test_export_needs_a_study_or_a_model(tmp_path):
    r = _cli("export", "--format", "c", cwd=tmp_path)
    assert r.returncode == 2 and "name a STUDY or --model" in r.stderr


def test_missing_compiler_writes_the_c_files_and_says_only_the_build_failed(checkpoint, tmp_path):
    out = tmp_path / "nocc"
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    env.pop("CC", None)
    r = _cli("export", "--model", checkpoint, "--format", "c", "--out", out, cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not built" in lines[0] and "no C compiler" in lines[0]
    assert (out / "vae_model.c").exists() and (out / "Makefile").exists() and not (out / "vae_demo").exists()
    assert json.loads((out / "manifest.json").read_text())["formats"] == {"c": ["vae_model.h", "vae_model.c", "main.c",
                                                                               "Makefile"]}


def test_search_with_a_failing_latency_command_is_one_line_and_writes_nothing(tmp_path, data_root):
    bad = tmp_path / "board.sh"
    bad.write_text("#!/bin/sh\necho 'board not connected' >&2\nexit 7\n")
    bad.chmod(0o755)
    cfg = {"name": "cmd", "dataset": "mnist", "data_root": str(data_root), "n_train": 200,
           "space": {"family": ["mlp"], "latent_dim": [4], "mlp": {"depth": [1], "width": [16]}, "weight_bits": [4]},
           "objectives": ["neg_elbo", "latency_ms"], "bounds": {"neg_elbo": [100, 550], "latency_ms": [0, 10]},
           "budget": {"trials": 1}, "latency": {"backend": "command", "command": f"{bad} {{artifact}}"}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = _cli("search", p, "--runs-dir", tmp_path / "runs", "--quiet", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "exited with status 7: board not connected" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_flash_and_ram_are_objectives_and_static_constraints(tmp_path, data_root):
    from studies.config import STATIC_CONSTRAINTS, StudyConfig

    from evaluator import OBJECTIVES

    assert {"ram_bytes", "flash_bytes"} <= set(OBJECTIVES) and {"ram_bytes", "flash_bytes"} <= set(STATIC_CONSTRAINTS)
    cfg = {"name": "mcu", "dataset": "mnist", "data_root": str(data_root), "n_train": 300,
           "space": {"family": ["mlp"], "latent_dim": [4, 8], "mlp": {"depth": [1, 2], "width": [16, 256]},
                     "weight_bits": [4, 32]},
           "objectives": ["neg_elbo", "flash_bytes", "ram_bytes"],
           "bounds": {"neg_elbo": [100, 550], "flash_bytes": [1000, 4000000], "ram_bytes": [100, 100000]},
           "constraints": {"flash_bytes": 60000, "ram_bytes": 4000}, "budget": {"trials": 3},
           "train": {"epochs": 1, "batch_size": 100}, "latency": {"repeats": 2, "warmup": 0}}
    p = tmp_path / "mcu.yaml"
    p.write_text(yaml.safe_dump(cfg))
    StudyConfig.load(p)
    r = _cli("search", p, "--runs-dir", tmp_path / "runs", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import optuna

    from evaluator.deploy import flash_bytes

    study = optuna.load_study(study_name="mcu", storage=f"sqlite:///{tmp_path / 'runs' / 'mcu' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done
    for t in done:
        spec = ArchSpec.from_json(t.user_attrs["spec"])
        assert t.user_attrs["ram_bytes"] == ram_bytes(spec) <= 4000
        assert t.user_attrs["flash_bytes"] == flash_bytes(spec) <= 60000


def test_manifest_records_the_size_of_the_arch_file_written(tmp_path):
    """With other formats, arch.json is the export document (provenance, retrain command), not the bare spec:
    manifest.json gives that file's size."""
    from search_space import ArchSpec, build_vae
    from studies.deploy import export_weights

    spec = ArchSpec.mlp((8,), 2, bits=4, input_shape=(6,), likelihood="gaussian")
    doc = {"type": "vaenas.Export", "spec": spec.to_dict(), "provenance": {"study": "s", "trial": 3},
           "retrain_command": "vaenas retrain arch.json --epochs 30"}
    export_weights(build_vae(spec), tmp_path, ("arch", "onnx"), {"study": "s", "trial": 3}, doc)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["files"]["arch.json"] == (tmp_path / "arch.json").stat().st_size
    assert json.loads((tmp_path / "arch.json").read_text())["provenance"] == {"study": "s", "trial": 3}
