"""Full retraining of an exported architecture: QAT at the spec's bit-widths, optional distillation.

Distillation from a teacher VAE (as the seed documents describe) adds to the student's −ELBO:
``distill_weight x (KL(q_teacher(z|x) || q_student(z|x)) + D(student recon, teacher recon))`` -
the first term only when both latent dimensions agree; ``D`` is the likelihood's ``distill`` term
between the decoders' outputs at ``z = mu`` (Bernoulli: the BCE of the student's logits against the
teacher's pixel probabilities).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from evaluator import (
    LatencyConfig, TrainConfig, bits_per_dim, evaluate_neg_elbo, iwae_nll, load_data, measure_latency, reconstruction_error,
    resolve_device, seeded_model, static_costs, train,
)
from evaluator.elbo import kl_gaussians
from search_space import ArchSpec, VaenasInputError, build_vae, pack_model
from search_space.plan import check_param_cap

from .files import atomic_write, data_meta, save_checkpoint


def load_checkpoint(path: str | Path, what: str = "checkpoint", with_meta: bool = False):
    """The model of a vaenas checkpoint (and, with ``with_meta``, what it records of its data)."""
    p = Path(path)
    if not p.is_file():
        raise VaenasInputError(f"{what}: file {str(p)!r} does not exist")
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, or one holding arbitrary pickled objects
        raise VaenasInputError(f"{what}: {str(p)!r} is not a vaenas checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != "vaenas.checkpoint" or "spec" not in ck:
        raise VaenasInputError(f"{what}: {str(p)!r} is not a vaenas checkpoint (no 'format: vaenas.checkpoint')")
    spec = ArchSpec.from_json(ck["spec"])
    check_param_cap(spec, what)  # a checkpoint's spec is counted before its model is built
    model = build_vae(spec)
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise VaenasInputError(f"{what}: weights in {str(p)!r} do not match its spec ({str(e).splitlines()[0]})") from None
    if with_meta:
        return model, {k: ck[k] for k in ("dataset", "likelihood", "input_shape", "normalization", "task") if k in ck}
    return model


def distillation_loss(teacher, weight: float):
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(student, x, eps):
        with torch.no_grad():
            mu_t, lv_t = teacher.encode(x)
            out_t = teacher.decode(mu_t)
        mu_s, lv_s = student.encode(x)
        total = student.likelihood.distill(student.decode(mu_s), out_t)
        if mu_s.shape == mu_t.shape:  # KL(q_t || q_s), closed form for diagonal Gaussians
            total = total + kl_gaussians(mu_t, lv_t, mu_s, lv_s)
        return weight * total.mean()

    return loss


def check_spec_fits(spec: ArchSpec, data, what: str = "arch") -> None:
    """One line if ``spec`` was not made for ``data`` (input shape or likelihood differ)."""
    if tuple(spec.input_shape) != tuple(data.input_shape) or spec.likelihood != data.likelihood:
        raise VaenasInputError(
            f"{what}: spec {spec.id} takes input {list(spec.input_shape)} under {spec.likelihood!r}, but dataset "
            f"{data.name} has {list(data.input_shape)} under {data.likelihood!r}; pass the dataset the spec was "
            "searched on (--dataset)")


@contextlib.contextmanager
def _step(what: str):
    """Say what is being computed (these steps take seconds to minutes), then how long it took."""
    print(f"{what} ...", end="", flush=True)
    t0 = time.perf_counter()
    yield
    print(f" {time.perf_counter() - t0:.1f} s", flush=True)


def fit(spec: ArchSpec, data, cfg: TrainConfig, out: Path, extra=None, what: str = "arch", announce: str = ""):
    """The one training pipeline of ``train`` and ``retrain``: train a seeded model of ``spec`` on ``data``,
    save ``out/model.pt`` (first: whatever follows, the trained model is kept), and the test −ELBO.
    Returns ``(model, train result, test figures, data meta)``."""
    check_spec_fits(spec, data, what)
    model = seeded_model(spec, cfg.seed, cfg.device)
    print(data.describe(), flush=True)
    if announce:
        print(announce, flush=True)
    res = train(model, data.train, cfg, extra_loss=extra, progress=sys.stderr.isatty())
    meta = data_meta(data)
    save_checkpoint(out / "model.pt", model, spec, meta)
    with _step(f"trained in {res.seconds:.0f} s, saved {out / 'model.pt'}; test −ELBO on {len(data.test):,} examples"):
        test = evaluate_neg_elbo(model, data.test)
    return model, res, test, meta


def write_weights(out: Path, spec: ArchSpec, packed: bytes) -> list[str]:
    """``weights.packed.bin`` and ``arch.json`` beside the checkpoint."""
    atomic_write(out / "weights.packed.bin", packed)
    atomic_write(out / "arch.json", spec.to_json(indent=2).encode())
    return ["model.pt", "weights.packed.bin", "arch.json"]


def _teacher_loss(teacher: str | None, spec: ArchSpec, weight: float, device: str):
    if not teacher:
        return None
    t = load_checkpoint(teacher, "--teacher")
    if tuple(t.spec.input_shape) != tuple(spec.input_shape) or t.spec.likelihood != spec.likelihood:
        raise VaenasInputError(f"--teacher: input {list(t.spec.input_shape)} under {t.spec.likelihood!r} differs "
                               f"from the student's {list(spec.input_shape)} under {spec.likelihood!r}")
    return distillation_loss(t.to(resolve_device(device)), weight)


def retrain(spec: ArchSpec, *, epochs: float, out: Path, dataset="mnist", data_root: str | None = None,
            teacher: str | None = None, distill_weight: float = 1.0, seed: int = 0, lr: float = 1e-3,
            batch_size: int = 100, iwae_k: int = 100, device: str = "auto", n_train: int | None = None,
            lr_warmup_steps: int = 100, formats: tuple[str, ...] = ("onnx", "c"), task: dict | None = None) -> dict:
    """Train ``spec`` from scratch (QAT, cosine schedule, optionally distilled from ``teacher``), then
    measure it on the test split (−ELBO, IWAE-k NLL, latency) and write the checkpoint, packed
    weights, reconstructions, the deployable ``formats`` and ``report.json`` into ``out``."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, lr_schedule="cosine",
                      lr_warmup_steps=lr_warmup_steps)
    if isinstance(iwae_k, bool) or not isinstance(iwae_k, int) or iwae_k < 1:
        raise VaenasInputError(f"--iwae-k: must be a whole number >= 1, got {iwae_k!r}")
    extra = _teacher_loss(teacher, spec, distill_weight, device)
    if out.exists() and not out.is_dir():
        raise VaenasInputError(f"--out: {str(out)!r} exists and is not a directory")
    data = load_data(dataset, data_root, n_train=n_train, task=task)
    model, res, test, meta = fit(spec, data, cfg, out, extra)
    report = _measure(model, spec, data, iwae_k)
    if data.task is not None:
        report["anomaly"] = anomaly_report(model, data)
    report.update({"spec": spec.to_dict(), "spec_id": spec.id, **meta, "train": cfg.to_dict(), "teacher": teacher,
                   "distill_weight": distill_weight if teacher else None, "train_seconds": res.seconds,
                   "test_neg_elbo": test["neg_elbo"], "test_kl": test["kl"], "out_dir": str(out)})
    report = {k: report[k] for k in _REPORT_ORDER if k in report} | report
    if spec.is_image:  # the unit published image results use
        report["test_bits_per_dim"] = bits_per_dim(test["neg_elbo"], spec.n_inputs)
        report["test_iwae_bits_per_dim"] = bits_per_dim(report["test_iwae_nll"], spec.n_inputs)
    _write_outputs(model, spec, data, out, formats, meta, test, report)
    return report


_REPORT_ORDER = ("spec", "spec_id", "dataset", "likelihood", "input_shape", "normalization", "train", "teacher",
                 "distill_weight", "train_seconds", "test_neg_elbo", "test_kl", "iwae_k", "test_iwae_nll",
                 "test_recon_mse_per_pixel", "params", "size_bytes", "flops", "bitops", "latency_ms", "latency_iqr_ms",
                 "latency_path", "uncounted_ops", "out_dir")


def anomaly_report(model, data) -> dict:
    """An anomaly task's final figures: the score and threshold chosen on validation, then AUROC / AUPRC and
    the threshold's FPR / TPR on the test split."""
    from evaluator.anomaly import anomaly_figures, test_figures

    fig = anomaly_figures(model, data.score_val, data.val_labels, data.task)
    out = {**fig, **test_figures(model, data.score_test, data.test_labels, fig)}
    print(f"anomaly score {fig['score']}: validation AUROC {fig['auroc']:.4f}, threshold {fig['threshold']:.6g} "
          f"({fig['rule']}); TEST AUROC {out['test_auroc']:.4f}, AUPRC {out['test_auprc']:.4f}, FPR {out['test_fpr']:.4f}, "
          f"TPR {out['test_tpr']:.4f}", flush=True)
    return out


def _measure(model, spec: ArchSpec, data, iwae_k: int) -> dict:
    """The retrained model's costs, latency and IWAE-k NLL."""
    costs = static_costs(spec)
    with _step("latency (batch 1, median)"):
        lat = measure_latency(model, LatencyConfig())
    with _step(f"IWAE-{iwae_k} NLL on {len(data.test):,} test examples ({iwae_k} importance samples each)"):
        iwae = iwae_nll(model, data.test, k=iwae_k)
    return {"iwae_k": iwae_k, "test_iwae_nll": iwae, "test_recon_mse_per_pixel": reconstruction_error(model, data.test),
            "params": costs.params, "size_bytes": len(pack_model(model)), "flops": costs.flops,
            "bitops": costs.bitops, "latency_ms": lat.median_ms, "latency_iqr_ms": lat.iqr_ms, "latency_path": lat.path,
            "uncounted_ops": list(costs.uncounted_ops)}


def _write_outputs(model, spec: ArchSpec, data, out: Path, formats, meta: dict, test: dict, report: dict) -> None:
    print(f"writing the packed weights, reconstructions, {', '.join(formats) or 'no'} export(s) and report", flush=True)
    packed = pack_model(model)
    files = write_weights(out, spec, packed)
    from .plots import recon_plot

    recon_plot(out / "model.pt", data.test[:16], out / "reconstructions.png",
               f"retrained {spec.id}: test −ELBO {test['neg_elbo']:.1f} nats, {len(packed):,} bytes")
    files.append("reconstructions.png")
    report["formats"] = list(formats)
    if formats:
        from .deploy import NotBuilt, build_and_size, export_weights, how_to_run

        manifest = export_weights(model.cpu(), out, formats, meta, data=data)
        files += [f for f in manifest["files"]] + ["manifest.json"]
        report["ram_bytes"], report["flash_bytes_estimate"] = manifest["ram_bytes"], manifest["flash_bytes"]
        if "c" in formats:
            try:
                report["c_size"] = build_and_size(out)
            except NotBuilt as e:
                report["c_size"] = f"not built: {e}"
        report["how_to_run"] = how_to_run(out, formats, spec)
    files.append("report.json")
    report["files"] = files
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
