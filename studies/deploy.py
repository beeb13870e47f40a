"""Deployable exports of a study's trial or a retrained model: where the weights come from, writing
the formats (``evaluator.deploy``), building the C one, and saying how to run each.

A trial's weights are its checkpoint ``runs/<study>/trials/<n>/model.pt`` (or, for a trial another
machine trained, its ``model.pt`` artifact). A supernet-estimated trial has no weights of its own:
exporting it for a device is refused with what to do instead.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from search_space import VaenasInputError, pack_model
from evaluator.deploy import FORMATS, MANIFEST, export_model, parse_formats
from strategies.trial_record import trial_attrs

__all__ = ["FORMATS", "build_and_size", "export_weights", "how_to_run", "parse_formats", "trial_checkpoint"]


class NotBuilt(VaenasInputError):
    """The C export was written, but could not be built here (e.g. no compiler)."""


def trial_checkpoint(view, number: int, runs_dir, tmp: Path) -> Path:
    """The checkpoint of trial ``number``: its local ``model.pt``, else its ``model.pt`` artifact
    (downloaded into ``tmp``); one line if it has none."""
    from .files import study_dir

    t = view.study.trials[number]
    local = study_dir(runs_dir, view.name) / "trials" / str(number) / "model.pt"
    if local.is_file():
        return local
    if trial_attrs(t).get("neg_elbo_is_estimate"):
        raise VaenasInputError(
            f"trial {number}: its −ELBO is a supernet estimate and it has no weights of its own to export; "
            f"retrain it (`vaenas export {view.name} --trial {number}`, then `vaenas retrain` the arch file and "
            f"`vaenas export --model RETRAIN_DIR/model.pt`) or re-measure it (supernet: {{remeasure: N}}); "
            "--format arch exports its spec alone")
    from optuna.artifacts.exceptions import ArtifactNotFound

    try:
        from optuna.artifacts import download_artifact

        from .artifacts import open_store, resolve, trial_artifacts

        store = open_store(resolve(view.study.user_attrs["artifact_store"], study_dir(runs_dir, view.name)),
                           create=False)
        ids = [a["artifact_id"] for a in trial_artifacts(view.study, number) if a["filename"] == "model.pt"]
        if ids:
            dest = tmp / "model.pt"
            download_artifact(artifact_store=store, file_path=str(dest), artifact_id=ids[-1])
            return dest
    except (KeyError, VaenasInputError, OSError, ArtifactNotFound):
        pass
    raise VaenasInputError(f"trial {number}: no weights found ({local} is missing and the trial has no model.pt "
                           f"artifact); retrain it (`vaenas export {view.name} --trial {number}`, then `vaenas retrain`)")


def anomaly_meta(model, meta: dict, data=None, data_root: str | None = None) -> dict:
    """``meta`` with the shipped score (``anomaly``: kind, threshold, validation FPR/TPR) when it records an
    anomaly task: chosen on the validation split for *these* weights (``data``, else loaded)."""
    if not meta.get("task") or "anomaly" in meta:
        return meta
    from evaluator import load_data
    from evaluator.anomaly import AnomalyTask, anomaly_figures, export_section

    task = AnomalyTask.parse(meta["task"])
    if data is None or data.task is None:
        data = load_data(meta["dataset"], data_root, n_train=1, task=task)
    return {**meta, "anomaly": export_section(anomaly_figures(model, data.score_val, data.val_labels, task), task)}


def export_weights(model, out: Path, formats: tuple[str, ...], meta: dict | None = None,
                   arch_doc: dict | None = None, data=None, data_root: str | None = None) -> dict:
    """Write ``formats`` of a trained model into ``out`` (all or nothing); returns the manifest. A model of an
    anomaly task also ships its score and threshold (:func:`anomaly_meta`)."""
    meta = anomaly_meta(model, meta or {}, data, data_root)
    doc = export_model(model.spec, pack_model(model), out, formats, meta)
    if arch_doc is not None and "arch" in formats:  # the richer export document (provenance, retrain command)
        from .files import atomic_write

        atomic_write(out / "arch.json", json.dumps(arch_doc, indent=2).encode())
        doc["files"]["arch.json"] = (out / "arch.json").stat().st_size  # the manifest lists the file written
        atomic_write(out / MANIFEST, json.dumps(doc, indent=2, allow_nan=False).encode())
    return doc


def build_and_size(out: Path) -> dict:
    """Build the C export in ``out`` (``vae_demo`` and ``vae_model.o``) and read ``size`` of the model
    object: its text+data is the flash the model takes, its bss the activation RAM. Records it in the
    manifest. Raises :class:`NotBuilt` (one line) when there is no compiler."""
    from evaluator import LatencyError, build_c
    from evaluator.deploy.c_lib import CFLAGS

    try:
        build_c(out)
    except LatencyError as e:
        raise NotBuilt(f"the C export is written to {out}, but not built: {e}") from None
    from evaluator.latency import c_compiler

    subprocess.run([c_compiler(), *CFLAGS.split(), "-c", "-o", "vae_model.o", "vae_model.c"], cwd=out, check=True)
    r = subprocess.run(["size", "vae_model.o"], cwd=out, capture_output=True, text=True)
    if r.returncode:
        return {}
    text, data, bss = (int(v) for v in r.stdout.splitlines()[1].split()[:3])
    sizes = {"text": text, "data": data, "bss": bss, "flash_bytes_measured": text + data, "tool": "size vae_model.o"}
    m = json.loads((out / MANIFEST).read_text())
    m.setdefault("c", {})["size"] = sizes
    from .files import atomic_write

    atomic_write(out / MANIFEST, json.dumps(m, indent=2).encode())
    return sizes


def how_to_run(out: Path, formats: tuple[str, ...], spec) -> list[str]:
    """Lines telling how to run each written format."""
    from evaluator.deploy.formats import FORMATS as REGISTRY
    from evaluator.deploy.formats import hint_order

    lines = [REGISTRY[f].run_hint(out, spec) for f in hint_order() if f in formats]
    return lines


def temp_dir():
    return tempfile.TemporaryDirectory(prefix="vaenas-export-")
