"""Deployable exports of a packed VAE: ONNX (QDQ), a C99 library, an ExecuTorch program.

Every format is written from the same two things - the spec and :func:`search_space.pack_model`'s
bytes - and runs the one inference program of :mod:`.program` (encode -> mu, logvar; decode ->
the likelihood's parameters). :func:`export_model` writes the chosen formats and a
``manifest.json`` into a folder, all or nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from search_space.errors import VaenasInputError
from search_space.likelihood import get_likelihood
from search_space.packing import packed_layout
from search_space.spec import ArchSpec
from search_space.plan import decoder_steps, encoder_steps, tensor_sizes

from .c_lib import c_sources, write_c
from .formats import FORMATS as REGISTRY
from .formats import ExportFormat, register_format
from .memory import code_bytes_estimate, flash_bytes, ram_bytes
from .onnx_graph import write_onnx
from .pte import PackedVAE, executorch_available, write_pte

FORMATS = tuple(REGISTRY)  # canonical order
FILES = {name: f.files for name, f in REGISTRY.items()}
MANIFEST = "manifest.json"

__all__ = ["FORMATS", "FILES", "MANIFEST", "REGISTRY", "ExportFormat", "register_format", "PackedVAE", "c_sources", "code_bytes_estimate", "decoder_steps",
           "encoder_steps", "executorch_available", "export_model", "files_for", "flash_bytes", "parse_formats",
           "ram_bytes", "tensor_sizes", "write_c", "write_onnx", "write_pte"]


def parse_formats(values: str | list[str] | tuple[str, ...], flag: str = "--format") -> tuple[str, ...]:
    """``"c,onnx"``, ``["c", "onnx"]`` or ``"all"`` -> the formats in canonical order; one line if unknown."""
    items = [values] if isinstance(values, str) else list(values)
    names = [n.strip() for v in items for n in str(v).split(",") if n.strip()]
    if not names:
        raise VaenasInputError(f"{flag}: name at least one format of {', '.join(FORMATS)} or all")
    out: set[str] = set()
    for n in names:
        if n == "all":
            out.update(FORMATS)
        elif n in FORMATS:
            out.add(n)
        else:
            raise VaenasInputError(f"{flag}: {n!r} is not a format; choose from {', '.join(FORMATS)} or all "
                                   "(comma-separated for several)")
    return tuple(f for f in FORMATS if f in out)


def files_for(formats: tuple[str, ...]) -> list[str]:
    """Every file writing ``formats`` may put in the folder (the C build's products too), so a command can
    refuse to write over files it does not own."""
    return [f for fmt in formats for f in FILES[fmt] + REGISTRY[fmt].score_files] + [MANIFEST] + [
        f for fmt in formats for f in REGISTRY[fmt].build_files]


def check_formats_available(formats: tuple[str, ...]) -> None:
    """One line if a format's package is missing (before anything is written)."""
    for fmt in formats:
        missing = REGISTRY[fmt].missing()
        if missing:
            raise VaenasInputError(f"--format {fmt}: {missing}")


def _outputs_doc(spec: ArchSpec) -> dict:
    lik = get_likelihood(spec.likelihood)
    c0 = spec.input_shape[0]
    axis = "channels" if spec.is_image else "features"
    params = [f"{axis} [{p * c0}, {(p + 1) * c0}): {doc}" for p, doc in enumerate(lik.param_docs)]
    return {
        "mu": f"(N, {spec.latent_dim}) mean of q(z|x)",
        "logvar": f"(N, {spec.latent_dim}) log-variance of q(z|x)",
        "out": {"shape": ["N", *spec.output_shape], "likelihood": spec.likelihood, "parameters": params,
                "note": "a reconstruction pass is decode(mu)"},
    }


def manifest(spec: ArchSpec, packed: bytes, formats: tuple[str, ...], sizes: dict[str, int],
             meta: dict | None = None) -> dict:
    meta = meta or {}
    lik = get_likelihood(spec.likelihood)
    doc = {
        "format": "vaenas.export", "version": 1, "spec_id": spec.id, "spec": spec.to_dict(),
        "formats": {f: list(FILES[f]) for f in formats}, "files": sizes,
        "weights": {"packed_bytes": len(packed), "sha256": hashlib.sha256(packed).hexdigest(),
                    "bits": dict(zip(spec.layer_names(), spec.weight_bits)),
                    "layers": [{"name": lay.name, "shape": list(lay.weight_shape), "bits": lay.bits,
                                "quantizer": "kmeans" if lay.is_kmeans else ("float" if lay.bits >= 32 else "uniform"),
                                "kept": lay.kept, "positions": lay.index_format or "dense", "bytes": lay.nbytes}
                               for lay in packed_layout(spec)]},
        "input": {"name": "x", "shape": ["N", *spec.input_shape], "dtype": "float32", "model_space": lik.input_doc,
                  "normalization": meta.get("normalization")},
        "outputs": _outputs_doc(spec),
        "ram_bytes": ram_bytes(spec),
        "flash_bytes": flash_bytes(spec), "flash_bytes_is_estimate": True,
        "code_bytes_estimate": code_bytes_estimate(spec),
    }
    for k in ("dataset", "trial", "study", "source", "trained_as", "anomaly"):
        if k in meta:
            doc[k] = meta[k]
    for fmt in formats:
        section = REGISTRY[fmt].manifest
        if section is not None:
            doc[fmt] = section(spec)
    return doc


def _noise(spec: ArchSpec, anomaly: dict):
    """The score's fixed noise table (None for a score without sampling)."""
    from ..anomaly import score_noise

    k = anomaly.get("samples", 0)
    return score_noise(spec.latent_dim, k).numpy() if k else None


def export_model(spec: ArchSpec, packed: bytes, out: str | Path, formats: tuple[str, ...],
                 meta: dict | None = None) -> dict:
    """Write ``formats`` and ``manifest.json`` into ``out``; all or nothing (built in a temporary
    folder beside ``out``, then moved in). Returns the manifest. ``meta['anomaly']`` (an anomaly task's
    :func:`evaluator.anomaly.export_section`): the C library and ONNX also ship the score and threshold."""
    out = Path(out)
    check_formats_available(formats)
    trained_as = spec
    spec = spec.deployed()  # structured pruning ships the narrower dense model
    if trained_as is not spec:
        meta = {**(meta or {}), "trained_as": trained_as.to_dict()}
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".vaenas-export-", dir=out))
    try:
        written: list[str] = []
        anomaly = (meta or {}).get("anomaly")
        for fmt in formats:
            written += REGISTRY[fmt].write(spec, packed, tmp)
            if anomaly and REGISTRY[fmt].write_score is not None:
                written += REGISTRY[fmt].write_score(spec, packed, anomaly, _noise(spec, anomaly), tmp)
        sizes = {f: (tmp / f).stat().st_size for f in written}
        doc = manifest(spec, packed, formats, sizes, meta)
        (tmp / MANIFEST).write_text(json.dumps(doc, indent=2, allow_nan=False))  # strict JSON, or no export
        for f in written + [MANIFEST]:
            os.replace(tmp / f, out / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return doc
