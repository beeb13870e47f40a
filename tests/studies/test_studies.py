"""End-to-end: search -> show -> pareto -> export -> retrain, resume after kill -9, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from conftest import small_config

from evaluator import evaluate_neg_elbo, load_data
from search_space import ArchSpec, build_vae
from studies.cli import main
from studies.config import StudyConfig
from studies.trials import is_finished
from strategies.trial_record import trial_attrs

REPO = Path(__file__).resolve().parents[2]


def _png_ok(path: Path) -> None:
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # not a blank canvas


def test_end_to_end(tmp_path, data_root, capsys):
    cfgp = small_config(tmp_path, data_root)
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "exported winner" in out and "front size" in out
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{runs / 'e2e' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(is_finished(t) for t in study.trials) == 5 and done
    for t in done:
        for k in ("spec", "spec_id", "neg_elbo", "flops", "bitops", "params", "size_bytes", "latency_ms", "seed",
                  "train_seconds"):
            assert k in t.user_attrs, k
        assert list(t.values) == [t.user_attrs["neg_elbo"], t.user_attrs["size_bytes"]]

    # the knee, deployable: arch + ONNX + C (built) + an example input; the C program reproduces the model
    knee_dir = runs / "e2e" / "export" / "knee"
    man = json.loads((knee_dir / "manifest.json").read_text())
    assert set(man["formats"]) == {"arch", "onnx", "c"} and (knee_dir / "vae_demo").exists()
    assert "cd " in out and "make && ./vae_demo reconstruct < input.txt" in out
    kn = man["trial"]
    ck = torch.load(runs / "e2e" / "trials" / str(kn) / "model.pt", weights_only=True)
    km = build_vae(ArchSpec.from_json(ck["spec"]))
    km.load_state_dict(ck["state_dict"])
    xin = torch.tensor([float(v) for v in (knee_dir / "input.txt").read_text().split()]).view(1, 1, 28, 28)
    c_out = subprocess.run(["./vae_demo", "reconstruct", "input.txt"], cwd=knee_dir, capture_output=True, text=True,
                           check=True).stdout.split()
    with torch.no_grad():
        ref = km.decode(km.encode(xin)[0]).reshape(-1)
    assert torch.allclose(torch.tensor([float(v) for v in c_out]), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert man["c"]["size"]["bss"] == man["ram_bytes"]

    # show: the front is truly non-dominated and every dominated trial is dominated by a front member
    assert main(["show", "e2e", "--runs-dir", str(runs), "--csv", str(tmp_path / "t.csv"),
                 "--json", str(tmp_path / "t.json")]) == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "t.csv")
    pts = df[["neg_elbo", "size_bytes"]].to_numpy(float)
    front = pts[df["on_front"].to_numpy(bool)]
    assert len(front) >= 1
    for i, p in enumerate(pts):
        dominated = np.any(np.all(pts <= p, 1) & np.any(pts < p, 1))
        assert dominated != bool(df["on_front"].iloc[i])
    assert len(json.loads((tmp_path / "t.json").read_text())) == len(df)

    # pareto: PNGs that are real pictures
    capsys.readouterr()
    assert main(["pareto", "e2e", "--runs-dir", str(runs), "--x", "size_bytes", "--x", "latency_ms"]) == 0
    pngs = [Path(line) for line in capsys.readouterr().out.split()]
    assert {p.name for p in pngs} == {"front_size_bytes.png", "front_latency_ms.png", "hypervolume.png",
                                      "knee_reconstructions.png"}
    for p in pngs:
        _png_ok(p)

    # export: the JSON rebuilds the same model as the trial's checkpoint
    best = int(df.sort_values("neg_elbo")["trial"].iloc[0])
    exp = tmp_path / "best.json"
    assert main(["export", "e2e", "--runs-dir", str(runs), "--pick", "best:neg_elbo", "--out", str(exp)]) == 0
    doc = json.loads(exp.read_text())
    assert doc["provenance"]["trial"] == best and doc["retrain_command"].startswith("vaenas retrain")
    spec = ArchSpec.from_dict(doc["spec"])
    ck = torch.load(runs / "e2e" / "trials" / str(best) / "model.pt", weights_only=True)
    model = build_vae(spec)
    model.load_state_dict(ck["state_dict"])  # same architecture, same parameter shapes
    assert ArchSpec.from_json(ck["spec"]) == spec
    smallest = exp.with_name("small.json")
    limit = int(df["size_bytes"].min())
    assert main(["export", "e2e", "--runs-dir", str(runs), "--max", f"size_bytes={limit}", "--out", str(smallest)]) == 0
    assert json.loads(smallest.read_text())["objectives"]["size_bytes"] <= limit

    # retrain (with distillation from the best trial's checkpoint): report matches a re-evaluation
    rdir = tmp_path / "retrain"
    assert main(["retrain", str(exp), "--epochs", "1", "--data-root", str(data_root), "--n-train", "1000",
                 "--iwae-k", "4", "--out", str(rdir), "--device", "cpu", "--lr-warmup-steps", "5",
                 "--teacher", str(runs / "e2e" / "trials" / str(best) / "model.pt")]) == 0
    report = json.loads((rdir / "report.json").read_text())
    assert report["train"]["lr_warmup_steps"] == 5 and report["train"]["lr_schedule"] == "cosine"
    ck = torch.load(rdir / "model.pt", weights_only=True)
    m2 = build_vae(ArchSpec.from_json(ck["spec"]))
    m2.load_state_dict(ck["state_dict"])
    test = load_data("mnist", data_root).test
    assert evaluate_neg_elbo(m2, test)["neg_elbo"] == pytest.approx(report["test_neg_elbo"], abs=1e-3)
    assert report["size_bytes"] == (rdir / "weights.packed.bin").stat().st_size
    assert {"encoder.onnx", "decoder.onnx", "vae_model.c", "manifest.json"} <= set(report["files"])
    assert report["c_size"]["bss"] == report["ram_bytes"] and report["latency_path"].startswith("onnxruntime")
    c_src = (rdir / "vae_model.c").read_text()
    assert (rdir / "weights.packed.bin").read_bytes().hex()[:32] in c_src.replace("0x", "").replace(", ", "").replace(
        ",\n    ", "").replace("\n    ", "")
    assert report["params"] == m2.num_params() == sum(m.weight.numel() + m.bias.numel() for m in m2.weight_layers().values())
    _png_ok(rdir / "reconstructions.png")


def test_search_refuses_to_overwrite_and_resume_needs_a_study(tmp_path, data_root):
    cfgp = small_config(tmp_path, data_root, name="twice", trials=1)
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 2
    other = small_config(tmp_path, data_root, name="never", trials=1)
    assert main(["search", str(other), "--runs-dir", str(runs), "--quiet", "--resume"]) == 2
    assert not (runs / "never").exists()  # bad input writes nothing


def _finished(db: Path, name: str) -> int:
    if not db.exists():
        return 0
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
    except Exception:
        return 0
    return sum(is_finished(t) for t in study.trials)


def test_resume_after_kill(tmp_path, data_root):
    cfgp = small_config(tmp_path, data_root, name="killed", trials=6,
                        train={"epochs": 3, "batch_size": 100, "lr": 0.002}, n_train=2000)
    runs = tmp_path / "runs"
    db = runs / "killed" / "study.db"
    cmd = [sys.executable, "-m", "studies.cli", "search", str(cfgp), "--runs-dir", str(runs), "--quiet"]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 240
    while _finished(db, "killed") < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{db}")
    before = {t.number: t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert 2 <= len(before) < 6
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{db}")
    assert sum(is_finished(t) for t in study.trials) == 6
    after = {t.number: t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert all(after[n] == v for n, v in before.items())  # nothing finished was lost or redone
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)


BAD = [
    ("name: a/b\n", "not a valid study name"),
    ("{}", "name: required"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, size]\n",
     "objectives: 'size' is unknown"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n",
     "bounds.neg_elbo: missing"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\nstrategy: {name: magic}\n", "strategy.name: 'magic' is unknown"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\nbudget: {trials: many}\n", "budget.trials: expected int"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\ntrain: {epoch: 1}\n", "train.epoch: unknown key"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\ntrain: {lr_warmup_steps: some}\n", "train.lr_warmup_steps: expected int"),
    ("name: x\nspace: {latent_dim: [0], mlp: {depth: [1], width: [8]}}\n", "latent_dim: 0 is below"),
    ("name: x\nspace: [1\n", "malformed YAML"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\nconstraints: {size: 100}\n", "constraints.size: unknown"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\nconstraints: {size_bytes: -1}\n", "constraints.size_bytes: expected a positive"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}, decoder: free}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\ndarts: {lambdas: [0, 1]}\n", "darts: needs an MLP-only space"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\ndarts: {lambdas: []}\n", "darts.lambdas: expected a non-empty list"),
    ("name: x\nspace: {latent_dim: [4], mlp: {depth: [1], width: [8]}}\nobjectives: [neg_elbo, params]\n"
     "bounds: {neg_elbo: [1, 2], params: [1, 2]}\nsupernet: {epochs: 0}\n", "supernet.epochs: must be > 0"),
]


def test_train_warmups_reach_the_train_config():
    cfg = StudyConfig.from_dict({"name": "x", "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}},
                                 "objectives": ["neg_elbo", "params"], "bounds": {"neg_elbo": [1, 2], "params": [1, 2]},
                                 "train": {"lr_warmup_steps": 50, "kl_warmup_steps": 20, "qat_delay": 0.5}})
    assert (cfg.train.lr_warmup_steps, cfg.train.kl_warmup_steps, cfg.train.qat_delay) == (50, 20, 0.5)


@pytest.mark.parametrize("text, needle", BAD)
def test_bad_configs(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "studies.cli", "search", str(p), "--runs-dir", str(runs)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert not runs.exists()


def test_presets_are_valid():
    for p in sorted((REPO / "studies" / "presets").glob("*.yaml")):
        if p.name.startswith("space_"):
            continue
        cfg = StudyConfig.load(p)
        assert cfg.space.size() > 1 and 1 <= len(cfg.objectives) <= 4  # one: budget mode


@pytest.mark.parametrize("strategy", ["evolution", "nsga2"])
def test_constraints_keep_infeasible_specs_off_the_front(tmp_path, data_root, strategy):
    """Static limit (size) never trained; measured limit (−ELBO) marks trials infeasible, off the front."""
    from studies.report import load_view, pick_trial

    limit = 20_000
    cfgp = small_config(tmp_path, data_root, name=f"c-{strategy}", trials=6, strategy=strategy,
                        constraints={"size_bytes": limit, "neg_elbo": 400})
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) in (0, 1)
    study = optuna.load_study(study_name=f"c-{strategy}", storage=f"sqlite:///{runs / f'c-{strategy}' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(is_finished(t) for t in study.trials) == 6
    for t in done:
        assert t.user_attrs["size_bytes"] <= limit  # a spec over the static limit is never trained
        assert t.user_attrs["feasible"] == (t.user_attrs["neg_elbo"] <= 400)
        assert set(t.constraints) == {"size_bytes", "neg_elbo"}
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    if strategy == "evolution":
        assert not pruned  # whole-spec strategies never propose it
    for t in pruned:
        assert t.user_attrs["fail_reason"].startswith("infeasible: size_bytes") and not t.user_attrs["feasible"]
    view = load_view(f"c-{strategy}", runs)
    assert not (view.trials["on_front"] & ~view.trials["feasible"]).any()
    if view.trials["feasible"].any():
        assert view.trials.set_index("trial").loc[pick_trial(view), "feasible"]


def test_resume_restores_strategy_state(tmp_path, data_root):
    """The RL controller's policy is stored in the study and reloaded by --resume."""
    from strategies import create_sampler

    cfgp = small_config(tmp_path, data_root, name="rl", trials=3, strategy="rl")
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    study = optuna.load_study(study_name="rl", storage=f"sqlite:///{runs / 'rl' / 'study.db'}")
    state = study.user_attrs["strategy_state"]
    assert state["consumed"] == [0, 1]  # learned from the trials finished before its last proposal
    cfg = StudyConfig.load(cfgp)
    fresh = create_sampler("rl", cfg.space, 0)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet", "--resume", "--n-trials", "5"]) == 0
    study = optuna.load_study(study_name="rl", storage=f"sqlite:///{runs / 'rl' / 'study.db'}")
    assert study.user_attrs["strategy_state"]["consumed"] == [0, 1, 2, 3]
    assert sum(is_finished(t) for t in study.trials) == 5


def test_supernet_mode_estimates_then_remeasures_the_front(tmp_path, data_root, capsys):
    """Trials scored on one supernet carry the estimate label; the front is re-measured standalone
    (extra trials, not budget), the report/export use the measured trials, resume reuses the supernet."""
    from studies.report import load_view, pick_trial

    cfgp = small_config(tmp_path, data_root, name="sn", trials=8,
                        supernet={"epochs": 1, "n_val": 500, "remeasure": 3})
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "front specs re-measured standalone" in out and "search trials' −ELBO were supernet ESTIMATES" in out
    study = optuna.load_study(study_name="sn", storage=f"sqlite:///{runs / 'sn' / 'study.db'}")
    search = [t for t in study.trials if trial_attrs(t).get("phase", "search") == "search"]
    again = [t for t in study.trials if trial_attrs(t).get("phase") == "remeasure"]
    assert sum(is_finished(t) for t in study.trials) == 8 == len(search)  # re-measurements are not budget
    for t in search:  # each estimate was stored with one write: one JSON attribute, no parameters
        assert set(t.user_attrs) == {"record"} and not t.params
    assert study.user_attrs["latency_table"]["validation"]["n_check"] > 0
    assert all(trial_attrs(t)["latency_is_estimate"] for t in search if t.state == optuna.trial.TrialState.COMPLETE)
    assert not any(trial_attrs(t)["latency_is_estimate"] for t in again)  # the re-measured front: measured
    assert all(trial_attrs(t)["neg_elbo_is_estimate"] for t in search if t.state == optuna.trial.TrialState.COMPLETE)
    # depth calibration: anchors of both depths, each estimate = raw supernet figure + that depth's offset
    from evaluator.supernet import DepthCalibration

    cal = DepthCalibration.from_dict(study.user_attrs["supernet_calibration"])
    assert sorted(cal.anchors) == [1, 2] and all(len(a) == 2 for a in cal.anchors.values())
    for t in search:
        if t.state == optuna.trial.TrialState.COMPLETE:
            spec = ArchSpec.from_json(trial_attrs(t)["spec"])
            assert trial_attrs(t)["neg_elbo"] == pytest.approx(trial_attrs(t)["neg_elbo_uncalibrated"] + cal.offset(spec))
    assert not any((runs / "sn" / "trials" / str(t.number)).exists() for t in search)  # no per-estimate checkpoint
    assert 1 <= len(again) <= 3
    by_number = {t.number: t for t in study.trials}
    for t in again:
        assert t.state == optuna.trial.TrialState.COMPLETE and not trial_attrs(t)["neg_elbo_is_estimate"]
        src = by_number[trial_attrs(t)["remeasure_of"]]
        assert trial_attrs(src)["spec_id"] == trial_attrs(t)["spec_id"]
        assert trial_attrs(t)["estimate_neg_elbo"] == trial_attrs(src)["neg_elbo"]
        assert trial_attrs(t)["size_bytes"] == trial_attrs(src)["size_bytes"]  # costs are exact either way
        assert trial_attrs(t)["train_seconds"] > 0 and (runs / "sn" / "trials" / str(t.number) / "model.pt").exists()
        # the standalone model's −ELBO really is a measurement of that spec
        ck = torch.load(runs / "sn" / "trials" / str(t.number) / "model.pt", weights_only=True)
        model = build_vae(ArchSpec.from_json(ck["spec"]))
        model.load_state_dict(ck["state_dict"])
        data = load_data("mnist", data_root, n_train=1000)
        from evaluator import resolve_device

        model.to(resolve_device("auto"))  # where the study ran: its noise comes from that device's generator
        assert abs(evaluate_neg_elbo(model, data.val)["neg_elbo"] - trial_attrs(t)["neg_elbo"]) < 1e-3
    view = load_view("sn", runs)
    front = view.front
    assert len(front) and not front["neg_elbo_is_estimate"].any()  # the reported front is measured
    knee = pick_trial(view)
    assert view.trials.set_index("trial").loc[knee, "phase"] == "remeasure"
    doc = json.loads((runs / "sn" / "export" / "knee.json").read_text())
    assert doc["neg_elbo_is_estimate"] is False
    # an estimated trial has no weights of its own: a deployable export of it is refused, nothing written
    est = next(t.number for t in search if t.state == optuna.trial.TrialState.COMPLETE)
    r = subprocess.run([sys.executable, "-m", "studies.cli", "export", "sn", "--runs-dir", str(runs), "--trial",
                        str(est), "--format", "c", "--out", str(tmp_path / "est")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "supernet estimate" in r.stderr and "retrain it" in r.stderr and "re-measure" in r.stderr
    assert not (tmp_path / "est").exists()
    for name in ("front_size_bytes.png", "estimate_vs_measured.png", "hypervolume.png"):
        _png_ok(runs / "sn" / "plots" / name)
    # resume with the budget met: supernet file reused, nothing re-measured twice
    mtime = (runs / "sn" / "supernet.pt").stat().st_mtime_ns
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet", "--resume"]) == 0
    study = optuna.load_study(study_name="sn", storage=f"sqlite:///{runs / 'sn' / 'study.db'}")
    assert len([t for t in study.trials if trial_attrs(t).get("phase") == "remeasure"]) == len(again)
    assert (runs / "sn" / "supernet.pt").stat().st_mtime_ns == mtime


def test_supernet_mode_needs_one_family(tmp_path, data_root):
    cfgp = small_config(tmp_path, data_root, name="snc", supernet={"epochs": 1},
                        space={"family": ["mlp", "conv"], "latent_dim": [4], "mlp": {"depth": [1], "width": [8]},
                               "conv": {"depth": [1], "channels": [4], "kernel": [3], "stride": [2],
                                        "fc_depth": [0], "fc_width": [8]}})
    r = subprocess.run([sys.executable, "-m", "studies.cli", "search", str(cfgp), "--runs-dir", str(tmp_path / "r")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "supernet: needs a one-family space" in r.stderr and not (tmp_path / "r").exists()


def test_supernet_mode_on_a_conv_space(tmp_path, data_root):
    """A conv space in supernet mode: estimates labelled, calibration per (conv depth, FC depth)
    group, the front re-measured by standalone training."""
    cfgp = small_config(tmp_path, data_root, name="snconv", trials=5, supernet={"epochs": 1, "n_val": 300, "remeasure": 2},
                        space={"family": ["conv"], "latent_dim": [4, 8],
                               "conv": {"depth": [1, 2], "channels": [4, 8], "kernel": [3, 4], "stride": [2],
                                        "fc_depth": [0, 1], "fc_width": [16, 32]},
                               "weight_bits": [4, 8, 32]})
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    study = optuna.load_study(study_name="snconv", storage=f"sqlite:///{runs / 'snconv' / 'study.db'}")
    from evaluator.supernet import DepthCalibration

    cal = DepthCalibration.from_dict(study.user_attrs["supernet_calibration"])
    assert sorted(cal.anchors) == ["conv1.fc0", "conv1.fc1", "conv2.fc0", "conv2.fc1"]
    search = [t for t in study.trials if trial_attrs(t).get("phase", "search") == "search"]
    again = [t for t in study.trials if trial_attrs(t).get("phase") == "remeasure"]
    assert len(search) == 5 and all(trial_attrs(t)["neg_elbo_is_estimate"] for t in search)
    assert all(ArchSpec.from_json(trial_attrs(t)["spec"]).family == "conv" for t in search)
    assert 1 <= len(again) <= 2 and not any(trial_attrs(t)["neg_elbo_is_estimate"] for t in again)


def test_darts_sweep_specs_are_enqueued_as_normal_trials(tmp_path, data_root):
    """The lambda sweep runs once, each distinct derived spec is a trial trained by the study's evaluator."""
    lambdas = [0, 300, 30000]
    cfgp = small_config(tmp_path, data_root, name="dq", trials=4,
                        space={"family": ["mlp"], "latent_dim": [4, 8], "mlp": {"depth": [1, 2], "width": [16, 64]},
                               "weight_bits": [2, 4, 8, 32], "bits_per_layer": True},
                        darts={"lambdas": lambdas, "steps": 40, "warmup_steps": 5, "batch_size": 64})
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    study = optuna.load_study(study_name="dq", storage=f"sqlite:///{runs / 'dq' / 'study.db'}")
    sweep = study.user_attrs["darts_sweep"]
    assert [s["lambda"] for s in sweep] == lambdas
    distinct = [s["spec_id"] for s in sweep if not s["duplicate"]]
    by_darts = [t for t in sorted(study.trials, key=lambda t: t.number) if t.user_attrs.get("proposed_by") == "darts"]
    assert [t.user_attrs["spec_id"] for t in by_darts] == distinct  # in lambda order, first trials of the study
    assert [t.number for t in by_darts] == list(range(len(distinct)))
    for t in by_darts:
        assert t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["train_seconds"] > 0
        assert not t.user_attrs["neg_elbo_is_estimate"]
    costs = [s["expected_size_bytes"] for s in sweep]
    assert costs[0] > costs[-1]
    assert sum(is_finished(t) for t in study.trials) == 4  # the strategy filled the rest of the budget
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet", "--resume", "--n-trials", "5"]) == 0
    study = optuna.load_study(study_name="dq", storage=f"sqlite:///{runs / 'dq' / 'study.db'}")
    assert len([t for t in study.trials if t.user_attrs.get("proposed_by") == "darts"]) == len(distinct)
    assert study.user_attrs["darts_sweep"] == sweep  # not re-run


def test_greedy_hv_subset_picks_the_points_that_cover_the_most():
    from strategies.pareto import Bound, hypervolume
    from studies.supernet_mode import greedy_hv_subset

    bounds = [Bound(0, 1), Bound(0, 1)]
    pts = [(0.1, 0.9), (0.2, 0.8), (0.5, 0.5), (0.8, 0.2), (0.9, 0.1), (0.45, 0.55)]
    got = greedy_hv_subset(pts, bounds, 3)
    assert got == [1, 2, 3]
    best = max(hypervolume([pts[i] for i in c], bounds)
               for c in __import__("itertools").combinations(range(len(pts)), 3))
    assert hypervolume([pts[i] for i in got], bounds) == pytest.approx(best)
    assert greedy_hv_subset(pts, bounds, 10) == list(range(len(pts)))


def test_enqueued_specs_are_evaluated_first_once(tmp_path, data_root):
    base = ArchSpec.mlp((64, 64), 8, bits=32)
    cfgp = small_config(tmp_path, data_root, name="enq", trials=2, enqueue=[base.to_dict()])
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0
    study = optuna.load_study(study_name="enq", storage=f"sqlite:///{runs / 'enq' / 'study.db'}")
    first = study.trials[0]
    assert first.user_attrs["spec_id"] == base.id and first.user_attrs["proposed_by"] == "config"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet", "--resume", "--n-trials", "3"]) == 0
    study = optuna.load_study(study_name="enq", storage=f"sqlite:///{runs / 'enq' / 'study.db'}")
    assert [t.user_attrs.get("proposed_by") for t in study.trials].count("config") == 1  # not re-enqueued
    # a spec outside the space: one line naming it and how to fix it, nothing written
    bad = small_config(tmp_path, data_root, name="enq2", enqueue=[ArchSpec.mlp((100,), 8).to_dict()])
    r = subprocess.run([sys.executable, "-m", "studies.cli", "search", str(bad), "--runs-dir", str(tmp_path / "r2")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "enqueue[0]: spec" in r.stderr and "not in the study's space" in r.stderr and not (tmp_path / "r2").exists()
