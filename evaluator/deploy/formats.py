"""The export-format registry: one entry per deployable format, with everything a command, a manifest
or a latency backend needs to know of it. Adding a format is one :func:`register_format` call.

An entry gives the files it writes, its writer ``write(spec, packed, folder) -> [file names]``, its
section of ``manifest.json``, what a latency command receives (the folder, or one file in it), the
files building it adds beside them, how to run it (one line), and a check that its package is here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from search_space import ArchSpec

from .c_lib import C_FILES, write_c
from .c_score import SCORE_FILES, write_c_score
from .onnx_score import write_onnx_score
from .memory import ram_bytes
from .onnx_graph import ONNX_FILES, write_onnx
from .pte import PTE_FILES, executorch_available, write_pte


@dataclass(frozen=True)
class ExportFormat:
    name: str
    files: tuple[str, ...]
    write: Callable[[ArchSpec, bytes, Path], list[str]]
    manifest: Callable[[ArchSpec], dict] | None = None  # its section of manifest.json
    artifact: str | None = ""  # what a latency command gets: "" the folder, else that file; None: not runnable
    build_files: tuple[str, ...] = ()  # what building it writes beside its files
    run_hint: Callable[[Path, ArchSpec], str] | None = None
    missing: Callable[[], str | None] = lambda: None  # what to install, or None when it can be written
    # an anomaly task's score beside the model: write_score(spec, packed, anomaly, eps, folder) -> [file names]
    write_score: Callable | None = None
    score_files: tuple[str, ...] = ()


FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in FORMATS or fmt.name == "all":
        raise ValueError(f"export format {fmt.name!r} is registered already")
    FORMATS[fmt.name] = fmt
    return fmt


def _write_arch(spec: ArchSpec, packed: bytes, out: Path) -> list[str]:
    (out / "arch.json").write_text(spec.to_json(indent=2))
    return ["arch.json"]


def _c_hint(out: Path, spec: ArchSpec) -> str:
    """How to build and run the C library; names input.txt only where one was written beside it."""
    if (Path(out) / "input.txt").is_file():
        return (f"C: cd {out} && make && ./vae_demo reconstruct < input.txt   "
                f"(input: {spec.n_inputs} floats per example, model space; see manifest.json)")
    return (f"C: cd {out} && make && ./vae_demo reconstruct < FILE   (FILE: your examples, {spec.n_inputs} "
            "whitespace-separated floats each, one per line, model space; see manifest.json)")


INT_ONNX = ("integer QDQ (arithmetic int8): uint8 activations with static scales and zero points, INT8 weight codes "
            "(every width) with per-channel scales, INT32 bias codes -> onnxruntime's QGemm / QLinearConv; exits as "
            "QGemm with float output or ConvInteger; transposed convolutions in float on the int8 values")
INT_C = ("integer (arithmetic int8): int8 activations, int32 accumulation, 16-bit fixed-point requantisation "
         "(search_space/integer.py); bit-exact with the integer reference")
INT_PTE = ("static int8 weights and activations (quantized_decomposed ops) delegated to XNNPACK; exits dynamically "
           "quantised; transposed convolutions on float weights")


register_format(ExportFormat("arch", ("arch.json",), _write_arch, artifact=None))
register_format(ExportFormat(
    "onnx", ONNX_FILES, write_onnx,
    manifest=lambda spec: {
        "opset": 21, "encoder": "encoder.onnx: x -> mu, logvar", "decoder": "decoder.onnx: z -> out",
        "weights": INT_ONNX if spec.is_integer else
                   "INT4 (2-4 bits) / INT8 (5-8 bits) initializers -> DequantizeLinear (per channel); "
                   "k-means: UINT8 indices -> Gather from the float32 codebook; "
                   "float32 for 32-bit layers; sparse layers dense with zeros"},
    run_hint=lambda out, spec: (f"ONNX: onnxruntime.InferenceSession('{out / 'encoder.onnx'}').run(None, {{'x': x}}) "
                                f"-> mu, logvar; then decoder.onnx with {{'z': mu}} -> out"),
    write_score=write_onnx_score, score_files=("score.onnx",)))
register_format(ExportFormat(
    "c", C_FILES, write_c,
    manifest=lambda spec: {
        "build": "make", "run": "./vae_demo reconstruct < input.txt",
        "api": ["vae_encode(x, mu, logvar)", "vae_decode(z, out)", "vae_reconstruct(x, out)"],
        "packed_array": "vae_packed[] in vae_model.c = weights.packed.bin byte for byte", "ram_bytes": ram_bytes(spec),
        **({"arithmetic": INT_C} if spec.is_integer else {})},
    build_files=("vae_demo", "vae_model.o", "vae_score_demo"),
    run_hint=lambda out, spec: _c_hint(out, spec), write_score=write_c_score, score_files=SCORE_FILES))
register_format(ExportFormat(
    "executorch", PTE_FILES, write_pte,
    manifest=lambda spec: {
        "file": "model.pte", "methods": {"encode": "x (1, ...) -> mu, logvar", "decode": "z (1, latent) -> out"},
        "weights": INT_PTE if spec.is_integer else "int8 codes + float32 scales, dequantised in the graph (XNNPACK)"},
    artifact="model.pte", missing=executorch_available,
    run_hint=lambda out, spec: (f"ExecuTorch: executorch.runtime.Runtime.get().load_program('{out / 'model.pte'}')"
                                ".load_method('encode').execute([x]) (methods encode, decode; batch 1; pass contiguous "
                                "tensors, x.contiguous(): ExecuTorch's runtime misreads strided ones)")))



def hint_order() -> tuple[str, ...]:
    """The formats with a run hint, the C library's first (the quickstart's closing lines start with it)."""
    named = [n for n, f in FORMATS.items() if f.run_hint is not None]
    return tuple(sorted(named, key=lambda n: n != "c"))


def runnable() -> tuple[str, ...]:
    """The formats a latency command can be given."""
    return tuple(n for n, f in FORMATS.items() if f.artifact is not None)
