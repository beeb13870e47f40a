"""Compression report: every seed method as a baseline (FP32; uniform QAT 8/4/2-bit; k-means 4/2-bit;
magnitude and L1 pruning 30/50/70 %; structured pruning; SVD low rank 1/4 and 1/2; a distilled
student; the combinations the seeds suggest) against the architectures a vaenas study over the
full compression space finds, every number measured by this script.

For one dataset it trains, with one recipe (same epochs, batch, learning rate, schedule, seed):

* the seeds' conv-VAE (2 conv + 2 FC encoder: conv 32/64 4x4 stride 2, FC 256, head; 2 FC + 2
  transposed-conv decoder; latent 20) and the MLP VAE 784-400-400-20, in FP32;
* both with every weight layer at 8, 4 and 2 bits, uniform (QAT from scratch), and at 4 and 2 bits
  with a k-means codebook per layer (``quantizer: kmeans``);
* both pruned by magnitude to 30/50/70 % of every layer's weights along the training loop's
  gradual schedule (``sparsity``), and the same with an L1 penalty on the weights (``--l1`` x sum |w|
  added to the loss: L1-induced sparsity), and 50 % of every hidden layer's units/channels removed
  (``pruning: structured``);
* SVD: the trained FP32 model's layers truncated to 1/4 and 1/2 of full rank (``rank``: factors
  initialised from the SVD), then ``--finetune-epochs`` of training;
* a smaller student of each (conv 16/32 + FC 128, MLP 784-200-200-20; FP32) distilled from its
  trained FP32 teacher (``studies/retrain.py``'s loss);
* combinations: 50 % magnitude pruning + k-means 4-bit (Deep Compression's pipeline), structured
  50 % + uniform 4-bit, rank 1/2 + uniform 4-bit, the distilled student at uniform 4-bit;
* the architectures a vaenas study finds (``--preset``; the study's short recipe ranks the
  candidates against the FP32 MLP, which the preset enqueues): its knee, its smallest within 2 % of
  the FP32 MLP, and its best under each size limit of the target (1/32 and 1/16 of the FP32 MLP's
  bytes), each retrained with the report's recipe (``pick_found``).
* the target study's best (``--target-preset``: conv VAEs only, constrained to <= 1/32 of the FP32
  MLP's measured bytes, ranked on a longer recipe), retrained the same way as ``vaenas-target-32x``
  (``pick_target``).

Every compressed model is packed by ``search_space.pack_model`` (exact bytes: sparse layers as a
bitmap or index list + their kept weights, codebooks, factors, the narrower model of structured
pruning) and scored on: test −ELBO (nats), IWAE NLL (k samples, first ``--iwae-n`` test images),
per-pixel reconstruction error at z = mu (BCE in nats/pixel and MSE of the Bernoulli mean),
parameters (non-zero weights + biases), packed bytes, compression vs the family's FP32 model, FLOPs
of what ships (unstructured sparsity runs dense), measured CPU latency of the ONNX export in
onnxruntime (``LATENCY``: batch 1, 1 thread).
Writes a markdown table, a JSON file and a Pareto PNG (test −ELBO vs packed bytes).

Target (issue 18): a found architecture at <= 1/32 of the FP32 MLP's packed bytes whose test −ELBO
is at or below the FP32 MLP's; minimum: <= 1/16 within +2 %. The report states where it lands.

    python benchmarks/compression_report.py --dataset mnist --data-root .data --epochs 30
    python benchmarks/compression_report.py --dataset fashion_mnist --data-root .data --epochs 30
    python benchmarks/compression_report.py --dataset mnist --data-root .data --epochs 0.05 --n-train 2000 \\
        --n-test 500 --iwae-n 50 --iwae-k 5 --finetune-epochs 0.05 --study-trials 3 \\
        --out-dir /tmp/cr --runs-dir /tmp/cr/runs   # smoke

Trained models are kept in ``<runs-dir>/compression_<dataset>/models``; a rerun with the same
recipe reuses them and the rows already in the JSON (``--fresh`` retrains everything). A kept row whose
model file is gone (a fresh checkout: ``runs/`` is not in git) is reused too; its model is retrained
(same recipe and seed) only when a later row needs it (a teacher, an SVD base). Each study's picks are
kept in the JSON (``meta.studies``: the rows it picked and a key of everything that decides them,
``study_key``); with its database gone and the same key, they are reused instead of rerunning it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluator import (  # noqa: E402
    LatencyConfig, TrainConfig, count_params, evaluate_neg_elbo, iwae_nll, load_data, measure_latency,
    reconstruction_error, seeded_model, static_costs, train,
)
from search_space import ArchSpec, VaenasInputError, build_vae, pack_model  # noqa: E402
from strategies.trial_record import trial_attrs  # noqa: E402

SEED_CONV = ArchSpec(family="conv", enc_channels=(32, 64), kernels=(4, 4), strides=(2, 2), enc_hidden=(256,),
                     latent_dim=20, weight_bits=(32,) * 8)
SEED_MLP = ArchSpec.mlp((400, 400), 20)
STUDENT_CONV = ArchSpec(family="conv", enc_channels=(16, 32), kernels=(4, 4), strides=(2, 2), enc_hidden=(128,),
                        latent_dim=20, weight_bits=(32,) * 8)
STUDENT_MLP = ArchSpec.mlp((200, 200), 20)
WITHIN = 0.02  # minimum: "within 2%" of the FP32 MLP's −ELBO ...
TARGET_RATIO = 16  # ... at "<= 1/16 of the FP32 MLP's bytes"
GOAL_RATIO = 32  # the target: <= 1/32 of the bytes at or below the FP32 MLP's −ELBO
LATENCY = LatencyConfig(repeats=100)  # the ONNX export (QDQ weights) in onnxruntime, batch 1, 1 thread


def with_bits(spec: ArchSpec, bits: int) -> ArchSpec:
    return spec.replace(weight_bits=(bits,) * len(spec.weight_bits))


def each_layer(spec: ArchSpec, **fields) -> ArchSpec:
    """``spec`` with a compression field set to one value on every layer (``sparsity``, ``rank``,
    ``quantizer``); structured sparsity only on the layers whose outputs are hidden units."""
    out = {}
    for k, v in fields.items():
        if k == "structured":
            units = spec.prunable_units()
            out.update(pruning="structured", sparsity=tuple(v if n in units else 0.0 for n in spec.layer_names()))
        else:
            out[k] = (v,) * len(spec.weight_bits)
    return spec.replace(**out)


def l1_loss(weight: float):
    """L1 penalty on every weight (the seeds' L1-induced sparsity), added to the −ELBO by the one loop."""
    def extra(model, x, eps):
        return weight * sum(m.weight.abs().sum() for m in model.weight_layers().values())
    return extra


@torch.no_grad()
def svd_init(model, teacher) -> None:
    """Initialise a factorised ``model`` from the trained ``teacher`` (same structure, unfactorised): each
    factorised layer's weight matrix truncated by SVD to the factor rank (``v = sqrt(S) V^T``,
    ``u = U sqrt(S)``), every other tensor copied."""
    from search_space.builder import LowRank

    for name in model.spec.layer_names():
        m, t = model.get_submodule(name), teacher.get_submodule(name)
        if not isinstance(m, LowRank):
            m.weight.copy_(t.weight)
            m.bias.copy_(t.bias)
            continue
        w = t.weight.detach()
        tconv = isinstance(t, torch.nn.ConvTranspose2d)
        mat = w.reshape(w.shape[0], -1)  # linear (O, I); conv (O, C*k*k); tconv (C, O*k*k)
        u, sv, vh = torch.linalg.svd(mat, full_matrices=False)
        r = m.v.weight.shape[0]
        left, right = u[:, :r] * sv[:r].sqrt(), sv[:r].sqrt()[:, None] * vh[:r]
        if tconv:  # 1x1 conv C -> r (left^T), then the transposed conv r -> O (right)
            m.v.weight.copy_(left.T.reshape(m.v.weight.shape))
            m.u.weight.copy_(right.reshape(m.u.weight.shape))
        else:  # first factor r x (inputs), then 1x1 / linear O x r
            m.v.weight.copy_(right.reshape(m.v.weight.shape))
            m.u.weight.copy_(left.reshape(m.u.weight.shape))
        m.u.bias.copy_(t.bias)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--epochs", type=float, default=5, help="training epochs of every model (the same for all)")
    ap.add_argument("--n-train", type=int, default=None, help="train on a leading subset (default: all 60,000)")
    ap.add_argument("--n-test", type=int, default=None, help="score on a leading subset of the test split (smoke runs)")
    ap.add_argument("--finetune-epochs", type=float, default=1, help="fine-tuning after SVD truncation")
    ap.add_argument("--l1", type=float, default=1e-4, help="weight of the L1 penalty of the L1-pruning rows")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--qat-delay", type=float, default=0.5,
                    help="fraction of every quantised model's steps trained in float before fake quantisation (and "
                         "its calibration) starts; from scratch (0) LSQ's step sizes drift under Adam (see README)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iwae-k", type=int, default=100)
    ap.add_argument("--iwae-n", type=int, default=1000, help="test images the IWAE bound is computed on")
    ap.add_argument("--preset", default=str(ROOT / "studies/presets/compression_mnist.yaml"),
                    help="the vaenas study whose found architectures (knee, smallest within 2%%, best under 1/32 and 1/16 of the FP32 MLP bytes) are retrained")
    ap.add_argument("--study-trials", type=int, default=None, help="override the preset's trial budget")
    ap.add_argument("--target-preset", default=str(ROOT / "studies/presets/compression_target.yaml"),
                    help="a second study, constrained to <= 1/32 of the FP32 MLP's bytes; its best trial is retrained "
                         "as the row vaenas-target-32x")
    ap.add_argument("--target-trials", type=int, default=None, help="override the target preset's trial budget")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    ap.add_argument("--fresh", action="store_true", help="retrain everything, ignoring kept models and rows")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    for flag, preset in (("--preset", args.preset), ("--target-preset", args.target_preset)):
        try:  # both studies' presets are checked before anything is trained or written
            study_config(preset, args, args.dataset)
        except (OSError, yaml.YAMLError, VaenasInputError) as e:
            print(f"compression_report: {flag} {preset}: {str(e).splitlines()[0]}", file=sys.stderr)
            return 2
    torch.set_num_threads(2)
    ds = args.dataset
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / f"compression_{ds}.{ext}" for ext in ("json", "md", "png"))
    model_dir = Path(args.runs_dir) / f"compression_{ds}" / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    recipe = {k: vars(args)[k] for k in ("dataset", "epochs", "n_train", "n_test", "finetune_epochs", "lr", "batch_size",
                                         "seed", "iwae_k", "iwae_n", "l1", "qat_delay")}
    kept: dict[str, dict] = {}
    kept_studies: dict[str, dict] = {}
    if json_path.exists() and not args.fresh:
        old = json.loads(json_path.read_text())
        if old["meta"]["recipe"] == recipe:
            kept = {r["name"]: r for r in old["rows"]}
            kept_studies = old["meta"].get("studies") or {}

    data = report_data(recipe, args.data_root)
    rows: list[dict] = []
    studies: dict[str, dict] = {}  # meta.studies: each study's key and the rows it picked
    rt = RowTrainer(args, data, train_config(recipe, args.device), kept, model_dir)
    trained = rt.trained

    # Report order = priority: the FP32 MLP (the target's reference), the study and its found architectures
    # (the target), then every family's baselines. The files are rewritten after each row, so a run cut
    # short (or resumed later: rows and models are kept) publishes what it has and names what is missing.
    families = (("mlp", SEED_MLP, STUDENT_MLP), ("conv", SEED_CONV, STUDENT_CONV))
    jobs = {g: baselines(rt, args, g, s, st) for g, s, st in families}
    planned = ["mlp-fp32", "vaenas (study)", "vaenas (target study)"] + [n for g, s, _ in families
                                                 for n in [f"{g}-fp32"] * (g != "mlp") + [j[0] for j in jobs[g]]]
    command = "python benchmarks/compression_report.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def add(row: dict) -> None:
        rows.append(row)
        publish(rows, planned, recipe, args, data, command, json_path, md_path, png_path, studies)

    print(f"--- mlp FP32 ({args.epochs:g} epochs on {len(data.train):,} {ds} images)", flush=True)
    add(trained("mlp-fp32", "mlp", "FP32", SEED_MLP)[0])
    main_cfg = study_config(args.preset, args, ds, trials=args.study_trials)
    found = kept_picks(kept_studies.get("study"), main_cfg, kept, args.runs_dir) or find_architectures(args, main_cfg)
    studies["study"] = {"name": main_cfg.name, "key": study_key(main_cfg), "picks": list(found)}
    planned[1:2] = list(found)
    for name, (spec, why) in found.items():
        add(trained(name, "vaenas", "found by vaenas", spec, note=why)[0])
    limit = row_named(rows, "mlp-fp32")["packed_bytes"] // GOAL_RATIO
    target_cfg = study_config(args.target_preset, args, ds, trials=args.target_trials,
                              constraints={"size_bytes": limit})
    target = (kept_picks(kept_studies.get("target study"), target_cfg, kept, args.runs_dir)
              or find_target(args, target_cfg, limit))
    studies["target study"] = {"name": target_cfg.name, "key": study_key(target_cfg), "picks": list(target)}
    at = planned.index("vaenas (target study)")
    planned[at:at + 1] = list(target)
    for name, (spec, why) in target.items():
        add(trained(name, "vaenas", "found by vaenas", spec, note=why)[0])
    for group, spec, _ in families:
        print(f"--- {group} baselines ({args.epochs:g} epochs on {len(data.train):,} {ds} images)", flush=True)
        if group != "mlp":
            add(trained(f"{group}-fp32", group, "FP32", spec)[0])
        for _, run in jobs[group]:
            add(run())

    print()
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}, {png_path}")
    return 0


class RowTrainer:
    """The report's rows: each trained with the one recipe and scored, or reused from the JSON (``kept``)
    with its model reloaded from ``model_dir``; a kept row whose model file is gone is reused as it is, and
    its model retrained (same recipe and seed) only when a later row needs it (:meth:`model_of`)."""

    def __init__(self, args, data, cfg: TrainConfig, kept: dict[str, dict], model_dir: Path):
        self.args, self.data, self.cfg, self.kept, self.model_dir = args, data, cfg, kept, Path(model_dir)
        self.models: dict[str, torch.nn.Module] = {}  # trained in this run or reloaded: teachers and SVD bases
        self.unkept: dict[str, object] = {}  # name -> thunk retraining a kept row's model whose file is gone
        self.seconds: dict[str, float] = {}  # name -> its row's training seconds

    def save(self, model, spec: ArchSpec, name: str) -> None:
        torch.save({"spec": spec.to_json(), "state_dict": model.state_dict()}, self.model_dir / f"{name}.pt")

    def load(self, spec: ArchSpec, name: str):
        p = self.model_dir / f"{name}.pt"
        if self.args.fresh or not p.exists() or name not in self.kept:
            return None
        ck = torch.load(p, map_location="cpu", weights_only=True)
        if ck["spec"] != spec.to_json():
            return None
        model = build_vae(spec)
        model.load_state_dict(ck["state_dict"])
        return model.to(self.args.device)

    def score(self, name: str, group: str, kind: str, spec: ArchSpec, model, train_s: float, epochs: float,
              note: str = "") -> dict:
        args, data = self.args, self.data
        t0 = time.perf_counter()
        test = evaluate_neg_elbo(model, data.test, seed=args.seed)
        iw = iwae_nll(model, data.test[: args.iwae_n], k=args.iwae_k, seed=args.seed)
        costs = static_costs(spec)
        ship = model.shipped()
        nz = sum(int((m.quantized_weight() != 0).sum()) + (m.bias.numel() if m.bias is not None else 0)
                 for m in ship.weight_layers().values())
        row = {
            "name": name, "group": group, "kind": kind, "spec_id": spec.id, "spec": spec.to_dict(),
            "bits": sorted(set(spec.weight_bits)), "compression": compression_label(spec),
            "test_neg_elbo": test["neg_elbo"], "test_kl": test["kl"],
            "iwae_nll": iw, "recon_bce_per_pixel": reconstruction_error(model, data.test, metric="bce"),
            "recon_mse_per_pixel": reconstruction_error(model, data.test, metric="mse"),
            "params": nz, "params_dense": count_params(spec), "packed_bytes": len(pack_model(model)),
            "flops": costs.flops, "bitops": costs.bitops,
            "latency_ms": measure_latency(model, LATENCY).median_ms, "train_seconds": train_s, "epochs": epochs,
            "note": note,
        }
        print(f"{name:>22}: −ELBO {row['test_neg_elbo']:.2f}  IWAE {iw:.2f}  BCE/px {row['recon_bce_per_pixel']:.4f}  "
              f"{row['packed_bytes']:>9,} B  {row['latency_ms']:.3f} ms  (train {train_s:.0f}s, eval "
              f"{time.perf_counter() - t0:.0f}s)", flush=True)
        return row

    def fit(self, name: str, spec: ArchSpec, extra=None, init=None, epochs: float | None = None):
        """Train ``name`` with the recipe (``extra``: a thunk giving an extra loss, called only here) and save
        it; returns (model, train result, seconds spent before, e.g. training the SVD base)."""
        model = seeded_model(spec, self.args.seed, self.args.device)
        before = 0.0
        if init is not None:  # e.g. SVD from a trained model: its training time and epochs count too
            before = init(model)
        cfg = self.cfg if epochs is None else TrainConfig(**{**self.cfg.to_dict(), "epochs": epochs,
                                                             "lr": self.args.lr * 0.3})
        res = train(model, self.data.train, cfg, extra_loss=extra() if extra else None)
        self.save(model, spec, name)
        self.models[name] = model
        return model, res, before

    def model_of(self, name: str):
        """A trained model a later row needs: this run's, reloaded, or retrained when only its row was kept."""
        if name not in self.models:
            print(f"{name:>22}: retraining its model (row kept, model file gone), needed by a later row", flush=True)
            self.unkept.pop(name)()
        return self.models[name].to(self.args.device)

    def trained(self, name: str, group: str, kind: str, spec: ArchSpec, extra=None, note: str = "", init=None,
                epochs: float | None = None) -> tuple[dict, object]:
        """The row ``name``: reused (model reloaded, or None when its file is gone) or trained and scored."""
        model = self.load(spec, name)
        row = self.kept.get(name) if not self.args.fresh else None
        if row is not None and row["spec_id"] == spec.id:
            row = {**row, "note": note}  # the same model and numbers; why it is in the report is this run's
            if model is None:
                print(f"{name:>22}: reused row (trained {row['train_seconds']:.0f}s; model file gone)", flush=True)
                self.unkept[name] = lambda: self.fit(name, spec, extra, init, epochs)
            else:
                print(f"{name:>22}: reused (trained {row['train_seconds']:.0f}s)", flush=True)
                self.models[name] = model
        else:
            model, res, before = self.fit(name, spec, extra, init, epochs)
            spent = res.epochs + (self.args.epochs if init is not None else 0)
            row = self.score(name, group, kind, spec, model, res.seconds + before, spent, note=note)
        self.seconds[name] = row["train_seconds"]
        return row, model

    def svd_from(self, teacher_name: str):
        """An ``init``: the SVD truncation of ``teacher_name``'s model (its training seconds count too)."""
        def init(model) -> float:
            svd_init(model, self.model_of(teacher_name))
            return self.seconds[teacher_name]
        return init


def baselines(rt: RowTrainer, args, group: str, spec: ArchSpec, student: ArchSpec) -> list[tuple[str, object]]:
    """The seed methods' rows of one family after its FP32 model, each a (name, thunk) in report order."""
    from studies.retrain import distillation_loss

    teacher = lambda: rt.model_of(f"{group}-fp32").eval()  # noqa: E731 - trained, reloaded or retrained first
    jobs: list[tuple[str, object]] = []

    def job(name: str, kind: str, s: ArchSpec, extra=None, **kw) -> None:
        jobs.append((name, lambda: rt.trained(name, group, kind, s, extra=extra, **kw)[0]))

    for b in (8, 4, 2):
        job(f"{group}-qat{b}", f"uniform {b}-bit", with_bits(spec, b))
    for b in (4, 2):
        job(f"{group}-kmeans{b}", f"k-means {b}-bit", each_layer(with_bits(spec, b), quantizer="kmeans"))
    for amount in (0.3, 0.5, 0.7):
        pct = int(amount * 100)
        job(f"{group}-prune{pct}", f"magnitude {pct}%", each_layer(spec, sparsity=amount),
            note="gradual magnitude pruning in the training loop")
        job(f"{group}-l1prune{pct}", f"L1 + magnitude {pct}%", each_layer(spec, sparsity=amount),
            extra=lambda: l1_loss(args.l1), note=f"L1 penalty {args.l1:g} x sum|w| + gradual magnitude pruning")
    job(f"{group}-struct50", "structured 50%", each_layer(spec, structured=0.5),
        note="50% of every hidden layer's units/channels removed (narrower model ships)")
    for frac, label in ((0.25, "1/4"), (0.5, "1/2")):
        job(f"{group}-svd{int(frac * 100)}", f"SVD rank {label}", each_layer(spec, rank=frac),
            init=rt.svd_from(f"{group}-fp32"), epochs=args.finetune_epochs,
            note=f"FP32 model truncated by SVD + {args.finetune_epochs:g} fine-tune epoch(s)")
    job(f"{group}-student", "distilled student", student, extra=lambda: distillation_loss(teacher(), 1.0),
        note=f"distilled from {group}-fp32 (weight 1.0)")
    job(f"{group}-prune50-kmeans4", "magnitude 50% + k-means 4-bit",
        each_layer(with_bits(spec, 4), sparsity=0.5, quantizer="kmeans"),
        note="Deep Compression's pipeline: prune, then cluster")
    job(f"{group}-struct50-qat4", "structured 50% + uniform 4-bit", each_layer(with_bits(spec, 4), structured=0.5))
    job(f"{group}-rank50-qat4", "rank 1/2 + uniform 4-bit", each_layer(with_bits(spec, 4), rank=0.5),
        note="factorised, trained from scratch")
    job(f"{group}-student-qat4", "distilled student, uniform 4-bit", with_bits(student, 4),
        extra=lambda: distillation_loss(teacher(), 1.0), note=f"distilled from {group}-fp32")
    return jobs


def publish(rows: list[dict], planned: list[str], recipe: dict, args, data, command: str, json_path: Path,
            md_path: Path, png_path: Path, studies: dict | None = None) -> None:
    """Write the JSON, the markdown table and the Pareto PNG of the rows measured so far; ``missing`` names
    the planned rows not measured yet (a report cut short says so)."""
    meta = {"recipe": recipe, "preset": str(Path(args.preset).relative_to(ROOT)) if Path(args.preset).is_absolute()
            and Path(args.preset).is_relative_to(ROOT) else args.preset,
            "torch": torch.__version__, "machine": platform.machine(), "python": platform.python_version(),
            "n_train": len(data.train), "n_test": len(data.test),
            "latency": {"backend": LATENCY.backend, "batch_size": LATENCY.batch_size, "threads": LATENCY.threads},
            "command": command, "missing": [n for n in planned if n not in {r["name"] for r in rows}],
            "studies": studies or {}}
    fp32 = {r["group"]: r for r in rows if r["kind"] == "FP32"}
    for r in rows:
        ref = fp32["mlp" if r["group"] == "vaenas" else r["group"]]
        r["ratio_vs_fp32"] = ref["packed_bytes"] / r["packed_bytes"]
        r["ratio_vs_fp32_mlp"] = fp32["mlp"]["packed_bytes"] / r["packed_bytes"]
        r["neg_elbo_vs_fp32_mlp"] = r["test_neg_elbo"] / fp32["mlp"]["test_neg_elbo"] - 1
    verdict = target_verdict(rows, fp32["mlp"])
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows, "target": verdict}, indent=2))
    tmp.replace(json_path)
    md_path.write_text(markdown(rows, meta, verdict, args))
    plot(rows, fp32["mlp"], png_path, recipe["dataset"], args)


def compression_label(spec: ArchSpec) -> str:
    """A short description of a spec's compression beyond bit-widths ("" when none)."""
    parts = []
    if spec.quantizer and "kmeans" in spec.quantizer:
        parts.append(f"k-means on {spec.quantizer.count('kmeans')} layers")
    if spec.sparsity:
        kind = "structured" if spec.pruning == "structured" else "sparse"
        parts.append(f"{kind} {'/'.join(f'{v:g}' for v in sorted(set(spec.sparsity)))}")
    if spec.rank:
        parts.append(f"rank {'/'.join(f'{v:g}' for v in sorted({v for v in spec.rank if v is not None}))}")
    return ", ".join(parts)


def _fail(msg: str):
    raise SystemExit(f"compression_report: {msg}")  # one line, exit status 1


def report_data(recipe: dict, data_root) -> object:
    """The report's data: its training split (``n_train``) and test split (first ``n_test`` images)."""
    data = load_data(recipe["dataset"], data_root, n_train=recipe["n_train"])
    if recipe["n_test"]:
        import dataclasses

        data = dataclasses.replace(data, test=data.test[: recipe["n_test"]])
    return data


def train_config(recipe: dict, device: str, seed: int | None = None) -> TrainConfig:
    """The report's one training recipe (its JSON's ``meta.recipe``), with another seed if given."""
    return TrainConfig(epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                       seed=recipe["seed"] if seed is None else seed, lr_schedule="cosine",
                       qat_delay=recipe["qat_delay"], device=device)


def row_named(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["name"] == name)


def study_config(preset: str, args, ds: str, trials: int | None = None, constraints: dict | None = None):
    """A preset's study config on ``ds`` with the report's seed and data root (bad input: VaenasInputError)."""
    from studies.config import StudyConfig

    d = yaml.safe_load(Path(preset).read_text())
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise VaenasInputError(f"{preset}: not a study preset (a YAML mapping with a name); see studies/presets/")
    d["name"] = f"{d['name']}_{ds}" if not d["name"].endswith(ds) else d["name"]
    d["dataset"] = ds
    d["data_root"] = args.data_root
    d["seed"] = args.seed
    if trials is not None:
        d.setdefault("budget", {})["trials"] = trials
    if constraints:
        d["constraints"] = {**(d.get("constraints") or {}), **constraints}
    return StudyConfig.from_dict(d, base_dir=Path(preset).parent)


def run_study(cfg, args):
    """Run (or resume) a study (its config from :func:`study_config`) under ``--runs-dir``; return its view."""
    from studies.report import load_view
    from studies.run import run_search

    from studies.files import study_dir

    exists = (study_dir(args.runs_dir, cfg.name) / "study.db").exists()
    print(f"--- vaenas study {cfg.name} ({cfg.trials} trials, {cfg.strategy}"
          f"{f', constraints {cfg.constraints}' if cfg.constraints else ''}; {'resuming' if exists else 'new'})",
          flush=True)
    t0 = time.perf_counter()
    run_search(cfg, runs_dir=args.runs_dir, resume=exists, progress=False)
    print(f"study done in {time.perf_counter() - t0:.0f}s", flush=True)
    return load_view(cfg.name, args.runs_dir)


def _specs(view, trials) -> dict[int, ArchSpec]:
    wanted = set(trials)
    return {t.number: ArchSpec.from_json(trial_attrs(t)["spec"]) for t in view.study.get_trials(deepcopy=False)
            if t.number in wanted}


def find_architectures(args, cfg) -> dict[str, tuple[ArchSpec, str]]:
    """Run (or resume) the main study (``cfg``: ``--preset``'s); return the specs :func:`pick_found` picks, by row name."""
    from studies.report import pick_trial

    view = run_study(cfg, args)
    df = view.trials
    ref_id = SEED_MLP.id
    ref = df[df["spec_id"] == ref_id]
    if ref.empty:
        _fail(f"the study has no completed trial of the FP32 MLP {ref_id}; the preset must enqueue it")
    ref_elbo, ref_bytes = float(ref["neg_elbo"].min()), float(ref["size_bytes"].iloc[0])
    picked = pick_found(df, pick_trial(view), ref_elbo, ref_bytes)
    spec_of = _specs(view, (n for n, _ in picked.values()))
    return {name: (spec_of[n], why) for name, (n, why) in picked.items()}


def study_key(cfg) -> str:
    """A key of everything that decides which trials a study picks: what its trials measure
    (``StudyConfig.fingerprint``), its name, strategy and budget, and the specs it enqueues."""
    strategy = [cfg.strategy, cfg.strategy_options] + ([vars(cfg.screen)] if cfg.screen else [])  # old keys unchanged
    parts = {**cfg.fingerprint(), "name": cfg.name, "strategy": strategy,
             "trials": cfg.trials, "enqueue": [s.id for s in cfg.enqueue or []]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def kept_picks(info: dict | None, cfg, kept: dict[str, dict], runs_dir) -> dict[str, tuple[ArchSpec, str]] | None:
    """The rows a study picked in an earlier run of the report (``info``: its ``meta.studies`` entry), when its
    database is gone, its key is unchanged and every picked row is kept; else None (run the study)."""
    from studies.files import study_dir

    if (not info or info.get("key") != study_key(cfg) or not info.get("picks")
            or (study_dir(runs_dir, cfg.name) / "study.db").exists()
            or not all(n in kept for n in info["picks"])):
        return None
    print(f"--- vaenas study {cfg.name}: database gone, reusing its {len(info['picks'])} picks kept in the JSON "
          "(same key)", flush=True)
    return {n: (ArchSpec.from_dict(kept[n]["spec"]), kept[n]["note"]) for n in info["picks"]}


def find_target(args, cfg, limit: int) -> dict[str, tuple[ArchSpec, str]]:
    """Run (or resume) the target study (``cfg``: ``--target-preset``'s, constrained to ``limit`` bytes, 1/32 of
    the measured FP32 MLP's); return its best feasible trial by study −ELBO as the row ``vaenas-target-32x``."""
    view = run_study(cfg, args)
    n, why = pick_target(view.trials, limit)
    return {"vaenas-target-32x": (_specs(view, [n])[n], why)}


def pick_target(df, limit: int) -> tuple[int, str]:
    """The target study's trial the report retrains: the best study −ELBO (then the smaller) among its
    feasible trials within ``limit`` bytes."""
    d = df[df["feasible"].astype(bool) & (df["size_bytes"] <= limit)]
    if d.empty:
        _fail(f"the target study has no completed trial within {limit:,} B; rerun it with more trials "
              "(--target-trials)")
    n = best_within(d, limit)
    best = d.set_index("trial").loc[n]
    return n, (f"target study trial {n} (study −ELBO {best['neg_elbo']:.2f}, {int(best['size_bytes']):,} B): best "
               f"study −ELBO of its {len(d)} trials within 1/{GOAL_RATIO} of the FP32 MLP's bytes ({limit:,} B)")


def best_within(d, limit: float) -> int | None:
    """The trial with the best study −ELBO (then the fewer bytes) among ``d``'s rows of at most ``limit``
    bytes, or None; ``d`` holds feasible trials only."""
    under = d[d["size_bytes"] <= limit]
    if under.empty:
        return None
    return int(under.sort_values(["neg_elbo", "size_bytes"])["trial"].iloc[0])


def pick_found(df, knee: int, ref_elbo: float, ref_bytes: float) -> dict[str, tuple[int, str]]:
    """The study's trials the report retrains with its own recipe, by role: the knee of the front; the
    smallest whose study −ELBO is within 2 % of the FP32 MLP's in the same study; and, for each size
    limit of the verdict (1/32, 1/16 of the FP32 MLP's bytes), the best study −ELBO under it - the
    short recipe ranks an undertrained MLP, so "within 2 %" alone can pick a far worse model than
    one a few KB larger. A trial picked for several roles is one row whose note names them all."""
    d = df[df["feasible"]].set_index("trial")

    def said(n: int) -> str:
        return f"study trial {n} (study −ELBO {d.loc[n, 'neg_elbo']:.2f}, {int(d.loc[n, 'size_bytes']):,} B)"

    roles: dict[int, list[tuple[str, str]]] = {}
    roles.setdefault(knee, []).append(("vaenas-knee", "knee of the front"))
    ok = d[d["neg_elbo"] <= ref_elbo * (1 + WITHIN)]
    if not ok.empty:
        n = int(ok.reset_index().sort_values(["size_bytes", "neg_elbo"])["trial"].iloc[0])
        roles.setdefault(n, []).append(("vaenas-smallest-2pct", f"smallest within 2% of the FP32 MLP's "
                                                                f"{ref_elbo:.2f} in the same study"))
    for ratio in (GOAL_RATIO, TARGET_RATIO):
        n = best_within(d.reset_index(), ref_bytes / ratio)
        if n is not None:
            roles.setdefault(n, []).append((f"vaenas-best-{ratio}x", f"best study −ELBO at <= 1/{ratio} of the "
                                                                     "FP32 MLP's bytes"))
    return {r[0][0]: (n, said(n) + ": " + "; ".join(w for _, w in r)) for n, r in roles.items()}


def _verdict(found: list[dict], mlp: dict, ratio: int, within: float, label: str) -> dict:
    limit = mlp["packed_bytes"] / ratio
    hits = [r for r in found if r["packed_bytes"] <= limit and r["neg_elbo_vs_fp32_mlp"] <= within]
    if hits:
        best = min(hits, key=lambda r: r["packed_bytes"])
        return {"met": True, "name": best["name"], "ratio": best["ratio_vs_fp32_mlp"],
                "neg_elbo_gap": best["neg_elbo_vs_fp32_mlp"],
                "text": f"{label} MET: {best['name']} is {best['ratio_vs_fp32_mlp']:.1f}x smaller than the FP32 MLP "
                        f"({best['packed_bytes']:,} B <= {limit:,.0f} B) at {100 * best['neg_elbo_vs_fp32_mlp']:+.2f}% "
                        f"test −ELBO (limit {100 * within:+g}%)"}
    small = [r for r in found if r["packed_bytes"] <= limit]
    parts = [f"{r['name']}: {r['ratio_vs_fp32_mlp']:.1f}x smaller, {100 * r['neg_elbo_vs_fp32_mlp']:+.2f}% −ELBO"
             for r in found]
    gap = min((r["neg_elbo_vs_fp32_mlp"] for r in small), default=None)
    text = (f"{label} MISSED: no found architecture is both <= 1/{ratio} of the FP32 MLP's bytes and within "
            f"{100 * within:+g}% of its −ELBO (" + "; ".join(parts) + ")")
    if gap is not None:
        text += f"; the best one under 1/{ratio} misses the −ELBO limit by {100 * (gap - within):.2f} points"
    return {"met": False, "text": text}


def target_verdict(rows: list[dict], mlp: dict) -> dict:
    """The issue's target (<= 1/32 of the FP32 MLP's bytes at or below its −ELBO) and its minimum
    (<= 1/16 within +2 %), each met or missed by how much."""
    found = [r for r in rows if r["group"] == "vaenas"]
    goal = _verdict(found, mlp, GOAL_RATIO, 0.0, "TARGET")
    minimum = _verdict(found, mlp, TARGET_RATIO, WITHIN, "MINIMUM")
    return {"met": goal["met"], "minimum_met": minimum["met"], "target": goal, "minimum": minimum,
            "text": goal["text"] + ". " + minimum["text"]}


def markdown(rows: list[dict], meta: dict, verdict: dict, args) -> str:
    r0 = meta["recipe"]
    lines = [
        f"# Compression report: {r0['dataset']}",
        "",
        f"Generated by `{meta['command']}` "
        f"(torch {meta['torch']}, {meta['machine']}, CPU). Every model trained {r0['epochs']:g} epochs on "
        f"{meta['n_train']:,} training images (the 60,000 minus 10,000 held out for validation; batch {r0['batch_size']}, Adam lr {r0['lr']:g}, cosine, seed "
        f"{r0['seed']}; quantised models: the first {100 * r0.get('qat_delay', 0):g}% of the steps in float, then "
        f"calibrated and trained with fake quantisation); SVD rows: the FP32 model truncated + {r0['finetune_epochs']:g} fine-tune epoch(s). "
        f"Test split: {meta['n_test']:,} images (dynamically binarised with a fixed seed).",
        "",
        f"Columns: test −ELBO and IWAE NLL in nats per image (IWAE: k={r0['iwae_k']}, first {r0['iwae_n']:,} test "
        "images); recon BCE / MSE: per-pixel binary cross-entropy (nats) and squared error of the decoder's "
        "Bernoulli mean at z = mu, averaged over all test pixels; params: non-zero weights + biases of what ships; "
        "packed bytes: `search_space.pack_model`'s exact bytes (bits, scales or codebooks, sparse positions, "
        "factors, biases); ratio: FP32 bytes of the same family (found architectures: the FP32 MLP) / bytes; "
        "FLOPs: of what ships, per image (unstructured sparsity runs dense); latency: median CPU ms of the ONNX "
        f"export (QDQ weights) in {meta['latency']['backend']}, batch {meta['latency']['batch_size']}, "
        f"{meta['latency']['threads']} thread(s).",
        "",
        "| model | kind | bits | compression | test −ELBO | IWAE NLL | recon BCE/px | recon MSE/px | params | "
        "packed bytes | ratio vs FP32 | FLOPs | latency ms |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        bits = "/".join(str(b) for b in r["bits"])
        lines.append(
            f"| {r['name']} | {r['kind']} | {bits} | {r.get('compression', '')} | {r['test_neg_elbo']:.2f} | "
            f"{r['iwae_nll']:.2f} | "
            f"{r['recon_bce_per_pixel']:.4f} | {r['recon_mse_per_pixel']:.4f} | {r['params']:,} | "
            f"{r['packed_bytes']:,} | {r['ratio_vs_fp32']:.1f}x | {r['flops'] / 1e6:.2f}M | {r['latency_ms']:.3f} |")
    lines += ["", "Found architectures:", ""]
    for r in rows:
        if r["group"] == "vaenas":
            s = ArchSpec.from_dict(r["spec"])
            shape = (f"conv {list(s.enc_channels)} k{list(s.kernels)} s{list(s.strides)} + FC {list(s.enc_hidden)}"
                     if s.family == "conv" else f"MLP {list(s.enc_hidden)}")
            comp = f", {r['compression']}" if r.get("compression") else ""
            lines.append(f"- **{r['name']}** (`{r['spec_id']}`): {shape}, latent {s.latent_dim}, bits per layer "
                         f"{list(s.weight_bits)}{comp} - {r['note']}; {r['ratio_vs_fp32_mlp']:.1f}x smaller than the FP32 "
                         f"MLP at {100 * r['neg_elbo_vs_fp32_mlp']:+.2f}% test −ELBO.")
    if meta["missing"]:
        lines += ["", f"**Incomplete report**: {len(meta['missing'])} planned row(s) not measured yet (the run was "
                  f"stopped; rerunning the same command resumes): {', '.join(meta['missing'])}. The verdict below "
                  "covers the found architectures measured so far."]
    lines += ["", f"**Target** (a found architecture <= 1/{GOAL_RATIO} of the FP32 MLP's bytes at or below its test "
              f"−ELBO): {verdict['target']['text']}.", "",
              f"**Minimum** (<= 1/{TARGET_RATIO} within +2%): {verdict['minimum']['text']}.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], mlp: dict, path: Path, ds: str, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from strategies.pareto import non_dominated_mask

    fig, ax = plt.subplots(figsize=(8, 5.5))
    style = {"conv": ("tab:blue", "s"), "mlp": ("tab:orange", "o"), "vaenas": ("tab:green", "*")}
    for group, (color, marker) in style.items():
        rs = [r for r in rows if r["group"] == group]
        ax.scatter([r["packed_bytes"] for r in rs], [r["test_neg_elbo"] for r in rs], c=color, marker=marker,
                   s=160 if marker == "*" else 60, edgecolors="black", zorder=3,
                   label={"conv": "conv-VAE baselines", "mlp": "MLP-VAE baselines", "vaenas": "found by vaenas"}[group])
        for r in rs:
            ax.annotate(r["name"].split("-", 1)[1], (r["packed_bytes"], r["test_neg_elbo"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    pts = np.array([[r["test_neg_elbo"], r["packed_bytes"]] for r in rows])
    mask = non_dominated_mask(pts)
    front = sorted(pts[mask].tolist(), key=lambda p: p[1])
    ax.step([p[1] for p in front], [p[0] for p in front], where="post", color="grey", lw=1, ls="-", zorder=1,
            label="Pareto front of all rows")
    limit = mlp["packed_bytes"] / TARGET_RATIO
    ax.axvline(limit, color="red", ls="--", lw=1, label="1/16 of FP32 MLP bytes")
    ax.axvline(mlp["packed_bytes"] / GOAL_RATIO, color="darkred", ls="-.", lw=1, label="1/32 of FP32 MLP bytes")
    ax.axhline(mlp["test_neg_elbo"], color="darkred", ls="-", lw=0.8, label="FP32 MLP −ELBO")
    ax.axhline(mlp["test_neg_elbo"] * (1 + WITHIN), color="red", ls=":", lw=1, label="FP32 MLP −ELBO + 2%")
    ax.set_xscale("log")
    ax.set_xlabel("packed bytes (log)")
    ax.set_ylabel("test −ELBO (nats, measured)")
    ax.set_title(f"{ds}: compression baselines vs vaenas ({args.epochs:g} epochs each)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
