import json
import subprocess
import sys

import pytest
import torch

from search_space import ArchSpec, build_vae, unpack_model
from studies.cli import main


def test_train_writes_checkpoint_packed_weights_and_report(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    spec = ArchSpec.mlp((32,), 4, bits=4)
    arch = tmp_path / "arch.json"
    arch.write_text(spec.to_json())
    rc = main(["train", "--arch", str(arch), "--data-root", str(data_root), "--n-train", "500", "--epochs", "1",
               "--iwae-k", "5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test -ELBO" in printed and "IWAE-5" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["spec_id"] == spec.id and report["packed_bytes"] == (out / "weights.packed.bin").stat().st_size
    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ArchSpec.from_json(ckpt["spec"]) == spec
    model = build_vae(spec)
    model.load_state_dict(ckpt["state_dict"])
    packed = unpack_model(spec, (out / "weights.packed.bin").read_bytes())
    from evaluator import evaluate_neg_elbo, load_data
    test = load_data("mnist", data_root).test
    assert abs(evaluate_neg_elbo(model, test)["neg_elbo"] - report["test_neg_elbo"]) < 1e-3
    assert abs(evaluate_neg_elbo(packed, test)["neg_elbo"] - report["test_neg_elbo"]) < 1e-2
    assert ArchSpec.from_json((out / "arch.json").read_text()) == spec


@pytest.mark.parametrize("argv, needle", [
    (["train", "--arch", "/nonexistent.json"], "does not exist"),
    (["train", "--bits", "7"], "weight_bits: 7 is not allowed"),
    (["train", "--dataset", "cifar"], "dataset: 'cifar' is unknown"),
    (["train", "--epochs", "0"], "epochs: must be > 0"),
    (["space", "/nonexistent.yaml"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(argv, needle, tmp_path, data_root):
    out = tmp_path / "out"
    argv = argv + (["--out", str(out), "--data-root", str(data_root)] if argv[0] == "train" else [])
    r = subprocess.run([sys.executable, "-m", "studies.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not out.exists()


def test_foreign_arch_json(tmp_path, data_root):
    p = tmp_path / "a.json"
    p.write_text(json.dumps({"type": "something.else", "version": 1}))
    r = subprocess.run([sys.executable, "-m", "studies.cli", "train", "--arch", str(p), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "type: expected 'vaenas.ArchSpec'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_space_command(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("latent_dim: [8, 16]\nmlp: {depth: [1], width: [64, 128]}\nweight_bits: [4, 32]\n")
    assert main(["space", str(p), "--sample", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("space 'space': 64 distinct specs")
    assert len(out) == 4 and all(ArchSpec.from_json(line.split(" ", 1)[1]) for line in out[1:])
