"""Bad input, table-driven: one line on stderr naming what is wrong, exit code 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from search_space import ArchSpec

REPO = Path(__file__).resolve().parents[2]
SPACE = {"latent_dim": [4], "mlp": {"depth": [1], "width": [16]}, "weight_bits": [4, 32]}


def good(data_root, **over) -> dict:
    cfg = {"name": "ok", "dataset": "mnist", "data_root": str(data_root), "n_train": 500, "space": SPACE,
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 1}, "train": {"epochs": 1, "batch_size": 100}, "latency": {"repeats": 3, "warmup": 1}}
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory, data_root):
    """A finished 1-trial study for the commands that read one."""
    from studies.cli import main

    d = tmp_path_factory.mktemp("study")
    p = d / "ok.yaml"
    p.write_text(yaml.safe_dump(good(data_root)))
    assert main(["search", str(p), "--runs-dir", str(d / "runs"), "--quiet"]) == 0
    return d / "runs"


# 9^8 (43 million) values from 72 aliases, in space.name (a billion-laughs document of about 600 bytes)
BOMB = "name: [" + ", ".join(
    f"&{c} [" + ", ".join(["l"] * 9 if c == "a" else [f"*{chr(ord(c) - 1)}"] * 9) + "]" for c in "abcdefgh") + "]"


HUGE = json.dumps({"type": "vaenas.ArchSpec", "version": 1, "family": "mlp", "enc_hidden": [1000000], "latent_dim": 8,
                   "weight_bits": [32, 32, 32, 32]})  # 1.6 billion parameters: refused before anything is built


def _space(**over):
    return {**SPACE, **over}


# (id, files to create {name: content or a callable(data_root, pg_url) -> content}, argv, needle)
CASES = [
    ("malformed-yaml", {"c.yaml": "name: x\nspace: [1\n"}, ["search", "c.yaml"], "malformed YAML"),
    ("unknown-key", {"c.yaml": lambda d, u: good(d, nmae="x")}, ["search", "c.yaml"], "nmae: unknown study key"),
    ("wrong-type", {"c.yaml": lambda d, u: good(d, budget={"trials": "many"})}, ["search", "c.yaml"],
     "budget.trials: expected int"),
    ("negative-lr-warmup", {"c.yaml": lambda d, u: good(d, train={"epochs": 1, "lr_warmup_steps": -5})},
     ["search", "c.yaml"], "lr_warmup_steps: must be >= 0"),
    ("qat-delay-not-a-fraction", {"c.yaml": lambda d, u: good(d, train={"epochs": 1, "qat_delay": 1.0})},
     ["search", "c.yaml"], "qat_delay: must be a fraction in [0, 1)"),
    ("empty-choices", {"c.yaml": lambda d, u: good(d, space=_space(latent_dim=[]))}, ["search", "c.yaml"],
     "latent_dim: the list of choices is empty"),
    ("min-gt-max", {"c.yaml": lambda d, u: good(d, space=_space(mlp={"depth": [1], "width": {"min": 64, "max": 8}}))},
     ["search", "c.yaml"], "min (64) is greater than max (8)"),
    ("bits-7", {"c.yaml": lambda d, u: good(d, space=_space(weight_bits=[7]))}, ["search", "c.yaml"],
     "weight_bits: 7 is not allowed"),
    ("latent-0", {"c.yaml": lambda d, u: good(d, space=_space(latent_dim=[0]))}, ["search", "c.yaml"],
     "latent_dim: 0 is below the minimum 1"),
    ("unknown-strategy", {"c.yaml": lambda d, u: good(d, strategy="hillclimb")}, ["search", "c.yaml"],
     "strategy.name: 'hillclimb' is unknown"),
    ("unknown-strategy-flag", {"c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--strategy", "magic"],
     "--strategy: 'magic' is unknown"),
    ("bad-strategy-option", {"c.yaml": lambda d, u: good(d, strategy={"name": "evolution", "options": {"size": 3}})},
     ["search", "c.yaml"], "strategy.options: invalid for 'evolution'"),
    ("unknown-objective", {"c.yaml": lambda d, u: good(d, objectives=["neg_elbo", "speed"])}, ["search", "c.yaml"],
     "objectives: 'speed' is unknown"),
    ("bounds-missing", {"c.yaml": lambda d, u: good(d, bounds={"neg_elbo": [50, 600]})}, ["search", "c.yaml"],
     "bounds.size_bytes: missing"),
    ("bad-constraint", {"c.yaml": lambda d, u: good(d, constraints={"size_bytes": "small"})}, ["search", "c.yaml"],
     "constraints.size_bytes: expected a positive number"),
    ("bad-heartbeat", {"c.yaml": lambda d, u: good(d, heartbeat={"interval_s": 10, "grace_s": 5})},
     ["search", "c.yaml"], "heartbeat: need interval_s >= 1 and grace_s > interval_s"),
    ("unreachable-storage", {"c.yaml": lambda d, u: good(d, storage="postgresql+psycopg2://u:secret@127.0.0.1:9/db")},
     ["search", "c.yaml"], "storage: cannot open postgresql+psycopg2://u:***@127.0.0.1:9/db"),
    ("wrong-password", {"c.yaml": lambda d, u: good(d, storage=u.replace(":vaenas-test@", ":nope@"))},
     ["worker", "c.yaml"], "password authentication failed"),
    ("dataset-missing-offline", {"c.yaml": lambda d, u: good("empty-data-root")}, ["search", "c.yaml"],
     "dataset 'mnist': not found under empty-data-root/MNIST/raw and could not be downloaded"),
    ("corrupt-arch-json", {"a.json": "{\"type\": \"vaenas.ArchSpec\", "}, ["retrain", "a.json", "--epochs", "1"],
     "a.json"),
    ("foreign-arch-json", {"a.json": json.dumps({"type": "keras.Model", "version": 1})},
     ["retrain", "a.json", "--epochs", "1"], "type: expected 'vaenas.ArchSpec'"),
    ("foreign-checkpoint", {"t.pt": "torch-dict"}, ["retrain", "ARCH", "--teacher", "t.pt", "--epochs", "1"],
     "t.pt"),
    ("missing-trial", {}, ["export", "ok", "--trial", "99", "--runs-dir", "RUNS"], "has no completed trial 99"),
    ("name-with-path", {}, ["show", "../etc", "--runs-dir", "RUNS"], "not a valid study name"),
    ("missing-study", {}, ["show", "nosuch", "--runs-dir", "RUNS"], "study 'nosuch'"),
    # values checked before the first write (issue 16.4)
    ("device-banana", {"c.yaml": lambda d, u: good(d, train={"epochs": 1, "device": "banana"})}, ["search", "c.yaml"],
     "train.device: 'banana' is not a device"),
    ("seed-2-to-70", {"c.yaml": lambda d, u: good(d, seed=2**70)}, ["search", "c.yaml"], "seed: must be a whole number"),
    ("latency-repeats-0", {"c.yaml": lambda d, u: good(d, latency={"repeats": 0})}, ["search", "c.yaml"],
     "latency.repeats: must be a whole number"),
    ("latency-threads-0", {"c.yaml": lambda d, u: good(d, latency={"threads": 0})}, ["search", "c.yaml"],
     "latency.threads: must be a whole number"),
    ("epochs-inf", {"c.yaml": lambda d, u: good(d, train={"epochs": float("inf")})}, ["search", "c.yaml"],
     "train.epochs: must be finite"),
    ("n-train-0", {"c.yaml": lambda d, u: good(d, n_train=0)}, ["search", "c.yaml"], "n_train: must be >= 1"),
    ("n-train-negative", {"c.yaml": lambda d, u: good(d, n_train=-5)}, ["search", "c.yaml"], "n_train: must be >= 1"),
    ("timeout-negative", {"c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--timeout", "-1"],
     "--timeout: must be a positive number"),
    ("timeout-nan", {"c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--timeout", "nan"],
     "--timeout: must be a positive number"),
    ("jobs-0", {"c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--jobs", "0"],
     "--jobs: must be a whole number from 1 to 64"),
    ("jobs-too-many", {"c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--jobs", "1000"],
     "--jobs: must be a whole number from 1 to 64"),
    ("outage-negative", {"c.yaml": lambda d, u: good(d, heartbeat={"outage_s": -1})}, ["search", "c.yaml"],
     "heartbeat.outage_s: expected a number of seconds >= 0"),
    ("name-trailing-newline", {"c.yaml": lambda d, u: good(d, name="ok\n")}, ["search", "c.yaml"],
     "not a valid study name"),
    ("retrain-iwae-k-0", {}, ["retrain", "ARCH", "--epochs", "1", "--iwae-k", "0"], "--iwae-k: must be"),
    ("binary-config", {"c.yaml": b"\xff\xfe\x00\x01\x89PNG"}, ["search", "c.yaml"], "not a readable text file"),
    # the rest of issue 16.8
    ("huge-arch-retrain", {"big.json": HUGE}, ["retrain", "big.json", "--epochs", "1"],
     "has 1,594,000,800 parameters, over the 100,000,000 vaenas builds"),
    ("huge-arch-train", {"big.json": HUGE}, ["train", "--arch", "big.json"], "over the 100,000,000 vaenas builds"),
    ("huge-enqueued-spec", {"c.yaml": lambda d, u: good(d, enqueue=[json.loads(HUGE)])}, ["search", "c.yaml"],
     "enqueue[0]: spec 7b896b78687e has 1,594,000,800 parameters"),
    ("storage-in-a-missing-folder", {"c.yaml": lambda d, u: good(d)},
     ["search", "c.yaml", "--storage", "sqlite:////nonexistent/dir/x.db"], "--storage: the folder '/nonexistent/dir'"),
    ("journal-in-a-missing-folder", {"c.yaml": lambda d, u: good(d)},
     ["worker", "c.yaml", "--storage", "journal:/nonexistent/dir/x.log"], "--storage: the folder '/nonexistent/dir'"),
    ("show-mistyped-storage", {}, ["show", "ok", "--storage", "sqlite:///typo.db"], "'typo.db' does not exist or is empty"),
    ("list-mistyped-storage", {}, ["list", "--storage", "sqlite:///typo.db"], "'typo.db' does not exist or is empty"),
    ("show-zero-byte-db", {"z.db": ""}, ["show", "ok", "--storage", "sqlite:///z.db"], "does not exist or is empty"),
    ("corrupt-sqlite", {"c.db": "garbage " * 500}, ["show", "ok", "--storage", "sqlite:///c.db"],
     "'c.db' is not an SQLite database (corrupt"),
    ("binary-arch", {"a.json": b"\x89PNG\x00\xff\xfe"}, ["retrain", "a.json", "--epochs", "1"], "not a readable text file"),
    ("runs-dir-is-a-file", {"rf": "x", "c.yaml": lambda d, u: good(d)}, ["search", "c.yaml", "--runs-dir", "rf"],
     "--runs-dir: 'rf' is a file, not a folder"),
    ("journal-empty-path", {"c.yaml": lambda d, u: good(d, storage="journal:")}, ["search", "c.yaml"],
     "needs a file path, e.g. journal:"),
    ("nsga2-population-1", {"c.yaml": lambda d, u: good(d, strategy={"name": "nsga2", "options": {"population_size": 1}})},
     ["search", "c.yaml"], "strategy.options: invalid for 'nsga2'"),
    ("rgb-spec-on-mnist", {"a.json": ArchSpec.mlp((8,), 2, input_shape=(3, 32, 32)).to_json()},
     ["retrain", "a.json", "--epochs", "1"], "takes input [3, 32, 32]"),
    # memory bombs refused before anything is built (issue 16.5)
    ("latent-1e9", {"c.yaml": lambda d, u: good(d, space=_space(latent_dim=[10**9]))}, ["search", "c.yaml"],
     "parameters, over the 100,000,000"),
    ("width-2e6", {"c.yaml": lambda d, u: good(d, space=_space(mlp={"depth": [1], "width": [2_000_000]}))},
     ["search", "c.yaml"], "parameters, over the 100,000,000"),
    ("width-range-1e9", {"c.yaml": lambda d, u: good(d, space=_space(mlp={"depth": [1], "width": {"min": 1, "max": 10**9}}))},
     ["search", "c.yaml"], "has 1,000,000,000 values, over 10,000"),
    ("yaml-alias-bomb", {"c.yaml": lambda d, u: yaml.safe_dump(good(d)).replace("space:\n", "space:\n  " + BOMB + "\n")},
     ["search", "c.yaml"], "expands to more than 100,000 values"),
    # an output flag never destroys a study (issue 16.1)
    ("export-over-study-db", {}, ["export", "ok", "--runs-dir", "RUNS", "--out", "RUNS/ok/study.db"],
     "is an SQLite database"),
    ("csv-over-study-db", {}, ["show", "ok", "--runs-dir", "RUNS", "--csv", "RUNS/ok/study.db"], "is an SQLite database"),
    ("json-over-checkpoint", {}, ["show", "ok", "--runs-dir", "RUNS", "--json", "RUNS/ok/trials/0/model.pt"],
     "is a PyTorch checkpoint"),
    ("train-into-a-trial", {}, ["train", "--epochs", "1", "--data-root", "nowhere", "--out", "RUNS/ok/trials/0"],
     "is inside study folder"),
    ("export-inside-study", {}, ["export", "ok", "--runs-dir", "RUNS", "--out", "RUNS/ok/trials/x.json"],
     "is inside study folder"),
    ("export-over-own-file", {"mine.json": "{}"}, ["export", "ok", "--runs-dir", "RUNS", "--out", "mine.json"],
     "already exists; pass --force"),
    ("retrain-over-earlier-run", {"report.json": "{}"},
     ["retrain", "ARCH", "--epochs", "1", "--data-root", "nowhere", "--out", "."], "report.json from an earlier run; pass --force"),
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, tmp_path, data_root, study_runs, request):
    cid, files, argv, needle = case
    url = request.getfixturevalue("pg_url") if cid == "wrong-password" else ""
    for name, content in files.items():
        if callable(content):
            content = content(data_root, url)
            content = content if isinstance(content, str) else yaml.safe_dump(content)
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        elif content == "torch-dict":
            torch.save({"weights": torch.zeros(3)}, tmp_path / name)  # a real torch file, not a vaenas checkpoint
        else:
            (tmp_path / name).write_text(content)
    arch = tmp_path / "arch.json"
    if "ARCH" in argv:
        from search_space import ArchSpec

        arch.write_text(ArchSpec.mlp((16,), 4, bits=4).to_json())
    argv = [str(arch) if a == "ARCH" else a.replace("RUNS", str(study_runs), 1) if a.startswith("RUNS") else a
            for a in argv]
    if argv[0] in ("retrain", "train") and "--data-root" not in argv:
        argv += ["--data-root", str(data_root), "--out", "out"]
    before = _tree(tmp_path)
    runs_before = _tree(study_runs)
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "studies.cli", *argv], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("vaenas: error: ") and needle in lines[0], r.stderr
    assert _tree(tmp_path) == before  # nothing written, nothing half-written
    assert _tree(study_runs) == runs_before
    assert "secret" not in r.stderr and "vaenas-test" not in r.stderr  # passwords never printed


def test_there_are_at_least_15_cases():
    assert len(CASES) >= 15
