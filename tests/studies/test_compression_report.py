"""The compression report's own arithmetic: sparse packed size, global magnitude pruning, the verdict."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from search_space import ArchSpec, build_vae, pack_model

spec_ = importlib.util.spec_from_file_location(
    "compression_report", Path(__file__).resolve().parents[2] / "benchmarks" / "compression_report.py")
cr = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(cr)


def test_seed_architectures_are_the_ones_the_issue_describes():
    names = cr.SEED_CONV.layer_names()
    assert sum(n.startswith("enc.conv") for n in names) == 2 and names.count("enc.fc0") + names.count("head") == 2
    assert sum(n.startswith("dec.fc") or n == "dec.proj" for n in names) == 2
    assert sum(n.startswith("dec.tconv") for n in names) == 2 and cr.SEED_CONV.latent_dim == 20
    assert cr.SEED_MLP.enc_hidden == (400, 400) and cr.SEED_MLP.latent_dim == 20 and cr.SEED_MLP.mean_bits == 32


def test_baseline_specs_use_the_searched_dimensions():
    mlp = cr.each_layer(cr.with_bits(cr.SEED_MLP, 4), sparsity=0.5, quantizer="kmeans")
    assert mlp.sparsity == (0.5,) * 6 and mlp.quantizer == ("kmeans",) * 6 and mlp.weight_bits == (4,) * 6
    st = cr.each_layer(cr.SEED_CONV, structured=0.5)
    assert st.pruning == "structured" and st.deployed().enc_channels == (16, 32) and st.deployed().enc_hidden == (128,)
    assert cr.compression_label(mlp) == "k-means on 6 layers, sparse 0.5"


@pytest.mark.parametrize("spec", [ArchSpec.mlp((24, 12), 4), cr.SEED_CONV.replace(enc_channels=(4, 6), enc_hidden=(10,))],
                         ids=["mlp", "conv"])
def test_svd_init_is_exact_at_full_rank_and_truncates_below(spec):
    torch.manual_seed(0)
    teacher = build_vae(spec).eval()
    full = build_vae(cr.each_layer(spec, rank=1.0)).eval()
    cr.svd_init(full, teacher)
    x = torch.rand(3, *spec.input_shape)
    eps = torch.zeros(3, spec.latent_dim)
    with torch.no_grad():
        assert torch.allclose(full(x, eps)[0], teacher(x, eps)[0], atol=1e-4)
    half = build_vae(cr.each_layer(spec, rank=0.5)).eval()
    cr.svd_init(half, teacher)
    w = teacher.enc.fc0.weight.detach() if spec.family == "mlp" else teacher.enc.conv0.weight.detach().flatten(1)
    m = half.enc.fc0 if spec.family == "mlp" else half.enc.conv0
    approx = (m.u.weight.flatten(1) @ m.v.weight.flatten(1)).detach()
    sv = torch.linalg.svdvals(w)
    r = m.v.weight.shape[0]
    assert abs(float(torch.linalg.norm(w - approx)) - float(sv[r:].norm())) < 1e-4  # Eckart-Young optimum


def test_l1_loss_is_the_weighted_sum_of_absolute_weights():
    torch.manual_seed(0)
    model = build_vae(ArchSpec.mlp((8,), 2))
    total = sum(float(m.weight.detach().abs().sum()) for m in model.weight_layers().values())
    assert abs(float(cr.l1_loss(0.01)(model, None, None).detach()) - 0.01 * total) < 1e-5


def test_target_verdict_met_and_missed():
    mlp = {"packed_bytes": 1600, "test_neg_elbo": 100.0}

    def row(name, b, e):
        return {"name": name, "group": "vaenas", "packed_bytes": b, "ratio_vs_fp32_mlp": 1600 / b,
                "neg_elbo_vs_fp32_mlp": e / 100 - 1}

    v = cr.target_verdict([row("a", 100, 101.9), row("b", 90, 103)], mlp)
    assert v["minimum_met"] and v["minimum"]["name"] == "a" and "MINIMUM MET" in v["text"]
    assert not v["met"] and "TARGET MISSED" in v["text"]  # nothing <= 50 B
    v = cr.target_verdict([row("a", 101, 101.0), row("b", 90, 103)], mlp)  # a too big, b too poor
    assert not v["minimum_met"] and "misses the −ELBO limit by 1.00 points" in v["minimum"]["text"]
    v = cr.target_verdict([row("a", 50, 100.0), row("b", 40, 100.5)], mlp)  # 1/32 at the FP32 −ELBO
    assert v["met"] and v["target"]["name"] == "a" and v["minimum_met"]


def _row(name, group, kind, spec, nbytes, elbo):
    return {"name": name, "group": group, "kind": kind, "spec_id": spec.id, "spec": spec.to_dict(),
            "bits": sorted(set(spec.weight_bits)), "compression": "", "test_neg_elbo": elbo, "test_kl": 20.0,
            "iwae_nll": elbo - 2, "recon_bce_per_pixel": 0.1, "recon_mse_per_pixel": 0.05, "params": 10,
            "params_dense": 10, "packed_bytes": nbytes, "flops": 1e6, "bitops": 32e6, "latency_ms": 0.1,
            "train_seconds": 1.0, "epochs": 1, "note": "found"}


def test_publish_writes_after_each_row_and_names_what_is_missing(tmp_path):
    """A report cut short still publishes its rows, says it is incomplete and names the missing rows."""
    import argparse
    from types import SimpleNamespace

    args = argparse.Namespace(preset="studies/presets/compression_mnist.yaml", epochs=1)
    data = SimpleNamespace(train=range(50), test=range(10))
    recipe = {"dataset": "mnist", "epochs": 1, "batch_size": 100, "lr": 1e-3, "seed": 0, "finetune_epochs": 1,
              "iwae_k": 5, "iwae_n": 10}
    paths = [tmp_path / f"r.{e}" for e in ("json", "md", "png")]
    rows = [_row("mlp-fp32", "mlp", "FP32", cr.SEED_MLP, 3200, 100.0)]
    planned = ["mlp-fp32", "vaenas-knee", "conv-fp32"]
    cr.publish(rows, planned, recipe, args, data, "cmd", *paths)
    md = paths[1].read_text()
    assert "Incomplete report" in md and "vaenas-knee, conv-fp32" in md
    assert json.loads(paths[0].read_text())["meta"]["missing"] == ["vaenas-knee", "conv-fp32"]
    assert paths[2].stat().st_size > 0
    rows += [_row("vaenas-knee", "vaenas", "found by vaenas", ArchSpec.mlp((64,), 8, bits=2), 100, 100.0),
             _row("conv-fp32", "conv", "FP32", cr.SEED_CONV, 5000, 90.0)]
    cr.publish(rows, planned, recipe, args, data, "cmd", *paths)
    out = json.loads(paths[0].read_text())
    assert out["meta"]["missing"] == [] and "Incomplete" not in paths[1].read_text()
    assert out["target"]["met"] and out["rows"][1]["ratio_vs_fp32_mlp"] == 32.0


def test_found_rows_include_the_best_under_each_size_limit_and_merge_roles():
    """The short study recipe ranks an undertrained FP32 MLP: "smallest within 2 %" can be a far worse
    model than one a little larger, so the best study −ELBO under 1/32 and under 1/16 of the FP32
    MLP's bytes are retrained too; one trial in several roles is one row; infeasible trials never count."""
    import pandas as pd

    ref_bytes, ref_elbo = 3_200_000.0, 130.0
    df = pd.DataFrame([  # trial, study −ELBO, bytes, feasible
        (0, 130.0, ref_bytes, True),   # the FP32 MLP
        (1, 140.0, 20_000, True),      # the knee
        (2, 132.0, 90_000, True),      # smallest within 2 %
        (3, 131.0, 99_000, True),      # best under 1/32 (100,000 B)
        (4, 115.0, 150_000, True),     # best under 1/16 (200,000 B)
        (5, 100.0, 150_000, False),    # better, but infeasible
        (6, 110.0, 200_001, True),     # better, but over 1/16
    ], columns=["trial", "neg_elbo", "size_bytes", "feasible"])
    got = cr.pick_found(df, knee=1, ref_elbo=ref_elbo, ref_bytes=ref_bytes)
    assert {k: v[0] for k, v in got.items()} == {"vaenas-knee": 1, "vaenas-smallest-2pct": 2, "vaenas-best-32x": 3,
                                                 "vaenas-best-16x": 4}
    assert "150,000 B" in got["vaenas-best-16x"][1] and "1/16" in got["vaenas-best-16x"][1]
    merged = cr.pick_found(df[df["trial"] != 3], knee=1, ref_elbo=ref_elbo, ref_bytes=ref_bytes)
    assert {k: v[0] for k, v in merged.items()} == {"vaenas-knee": 1, "vaenas-smallest-2pct": 2, "vaenas-best-16x": 4}
    assert "smallest within 2%" in merged["vaenas-smallest-2pct"][1] and "1/32" in merged["vaenas-smallest-2pct"][1]


def test_target_row_is_the_best_feasible_trial_within_the_limit():
    """The target study's row: the best study −ELBO among feasible trials within 1/32 of the FP32 MLP's
    bytes (ties: the smaller); a trial over the limit or infeasible never counts; none left is one line."""
    import pandas as pd

    df = pd.DataFrame([  # trial, study −ELBO, bytes, feasible
        (0, 120.0, 100_000, True),
        (1, 118.0, 110_000, True),    # the best within the limit
        (2, 118.0, 112_000, True),    # as good, larger
        (3, 110.0, 121_704, True),    # better, 1 B over
        (4, float("nan"), 500_000, False),  # rejected untrained
        (5, 100.0, 90_000, False),    # better, infeasible
    ], columns=["trial", "neg_elbo", "size_bytes", "feasible"])
    n, why = cr.pick_target(df, 121_703)
    assert n == 1 and "110,000 B" in why and "121,703 B" in why and "of its 3 trials" in why
    with pytest.raises(SystemExit) as e:
        cr.pick_target(df[df["trial"].isin([3, 4, 5])], 121_703)
    assert "no completed trial within 121,703 B" in str(e.value.code)


def test_kept_picks_are_reused_only_with_the_database_gone_the_same_key_and_every_row_kept(tmp_path):
    """A fresh checkout has the JSON but not runs/: a study's picks are reused from the JSON instead of
    rerunning it - never when its database exists, the key (what decides its picks) differs, or a pick's
    row is missing."""
    import argparse

    from studies.files import study_dir

    args = argparse.Namespace(data_root=str(tmp_path), seed=0)
    preset = Path(cr.ROOT) / "studies/presets/compression_target.yaml"
    cfg = cr.study_config(str(preset), args, "mnist", constraints={"size_bytes": 121_703})
    spec = ArchSpec(family="conv", enc_channels=(32, 64), kernels=(3, 3), strides=(2, 2), enc_hidden=(),
                    latent_dim=16, weight_bits=(4,) * 6)
    kept = {"vaenas-target-32x": {"spec": spec.to_dict(), "note": "target study trial 7"}}
    info = {"name": cfg.name, "key": cr.study_key(cfg), "picks": ["vaenas-target-32x"]}
    runs = tmp_path / "runs"
    assert cr.kept_picks(info, cfg, kept, runs) == {"vaenas-target-32x": (spec, "target study trial 7")}
    other = cr.study_config(str(preset), args, "mnist", constraints={"size_bytes": 100_000})
    assert cr.study_key(other) != info["key"]
    assert cr.kept_picks(info, other, kept, runs) is None  # another limit: another study
    assert cr.study_key(cr.study_config(str(preset), args, "mnist", trials=5,
                                        constraints={"size_bytes": 121_703})) != info["key"]  # another budget
    assert cr.kept_picks(info, cfg, {}, runs) is None  # a pick's row is not kept
    assert cr.kept_picks(None, cfg, kept, runs) is None  # an old JSON without meta.studies
    db = study_dir(runs, cfg.name) / "study.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    assert cr.kept_picks(info, cfg, kept, runs) is None  # the study is here: resume it (it re-picks)


def test_bad_presets_are_one_line_exit_2_before_anything_is_written(tmp_path, capsys):
    """A missing or malformed preset (either study) is refused before training, data or output folders."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nspace: {family: [nope]}\n")
    out, runs = tmp_path / "out", tmp_path / "runs"
    for flag, path in (("--preset", tmp_path / "missing.yaml"), ("--target-preset", bad),
                       ("--target-preset", tmp_path / "missing.yaml")):
        capsys.readouterr()
        assert cr.main([flag, str(path), "--out-dir", str(out), "--runs-dir", str(runs)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("compression_report: "), err
    assert not out.exists() and not runs.exists()


def test_seed_check_gaps_are_per_seed_and_refuses_rows_it_cannot_rebuild(tmp_path, capsys):
    spec_s = importlib.util.spec_from_file_location(
        "compression_seeds", Path(__file__).resolve().parents[2] / "benchmarks" / "compression_seeds.py")
    cs = importlib.util.module_from_spec(spec_s)
    spec_s.loader.exec_module(cs)
    out = {"recipe": {"epochs": 30, "dataset": "mnist", "qat_delay": 0.5},
           "seeds": {"1": {"mlp-fp32": 100.0, "x": 101.0}, "0": {"mlp-fp32": 95.0, "x": 97.85}}}
    md = cs.table(out, ["mlp-fp32", "x"])
    assert "| x | 97.85 | 101.00 | +3.00% / +1.00% | +2.00% |" in md  # seeds in order, gap vs the same seed's MLP
    rep = tmp_path / "r.json"
    rep.write_text(json.dumps({"meta": {"recipe": {}}, "rows": [
        {"name": "mlp-fp32", "kind": "FP32", "spec": {}}, {"name": "mlp-svd50", "kind": "SVD rank 1/2", "spec": {}}]}))
    assert cs.main(["--report", str(rep), "--rows", "mlp-svd50", "--seeds", "1"]) == 2
    assert cs.main(["--report", str(rep), "--rows", "nope", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "SVD" in err[0] and "'nope'" in err[1]
    assert not list(tmp_path.glob("r_seeds*"))  # nothing written


def test_a_kept_row_without_its_model_is_reused_and_its_model_retrained_only_when_needed(tmp_path):
    """A fresh checkout keeps the JSON's rows but not runs/: the row is reused without training (its extra
    loss - a teacher - is not even built); its model is retrained once, with the recipe, when a later row
    needs it, saved, and reloaded by the next run."""
    import argparse
    import types

    from evaluator import TrainConfig

    args = argparse.Namespace(fresh=False, device="cpu", seed=0, lr=1e-3, epochs=1)
    data = types.SimpleNamespace(train=torch.randint(0, 256, (120, 1, 28, 28), dtype=torch.uint8))
    spec = ArchSpec.mlp((16,), 4)
    kept = {"base": {"name": "base", "spec_id": spec.id, "train_seconds": 12.0, "test_neg_elbo": 99.0}}
    cfg = TrainConfig(epochs=1, batch_size=40, seed=0)
    built = []

    def extra():
        built.append(1)
        return None

    rt = cr.RowTrainer(args, data, cfg, kept, tmp_path)
    row, model = rt.trained("base", "mlp", "FP32", spec, extra=extra, note="picked again")
    assert row == {**kept["base"], "note": "picked again"} and model is None and built == [] and not list(tmp_path.iterdir())
    assert rt.svd_from("base") and rt.seconds["base"] == 12.0  # an SVD row would count the kept row's seconds
    m = rt.model_of("base")  # a later row needs it: retrained now, with the recipe and its extra loss
    assert built == [1] and (tmp_path / "base.pt").is_file() and isinstance(m, torch.nn.Module)
    assert rt.model_of("base") is m and built == [1]  # once
    rt2 = cr.RowTrainer(args, data, cfg, kept, tmp_path)  # the next run reloads it
    row2, m2 = rt2.trained("base", "mlp", "FP32", spec, extra=extra)
    assert row2 == {**kept["base"], "note": ""} and m2 is not None and built == [1]
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
