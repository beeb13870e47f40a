"""Latency measured on what ships: the exported artifact itself, run by its own runtime.

What the number means: the wall time of one *reconstruction pass* - encode, take ``z = mu``,
decode to the likelihood's parameters - for a batch of ``batch_size`` examples (default 1), with
``threads`` intra-op threads (default 1, recorded), after ``warmup`` untimed runs; the median over
``repeats`` timed runs, with the inter-quartile range.

Backends (``latency: {backend: ...}`` in a study config):

``onnxruntime`` (default)
    The ONNX export (``evaluator.deploy``: INT4/INT8 weight initializers + per-channel scales
    through ``DequantizeLinear``) in an onnxruntime CPU session with every graph optimisation on;
    one timed run is ``encoder.onnx`` then ``decoder.onnx``. The default because it is what a
    user deploying to a CPU (a server, a phone, a Raspberry Pi) most often ships, it runs the
    quantised artifact vaenas writes, and its timing is repeatable (benchmarks/deploy_latency.py).
``c``
    The C99 export compiled with ``cc -std=c99 -O2`` and timed by its own driver (``vae_demo
    bench``, ``clock_gettime``): the microcontroller-style reference inference, single-threaded,
    unpacking sub-byte weights on the fly. A proxy for an MCU's *ranking*, not its milliseconds.
``executorch``
    The ``.pte`` (XNNPACK partitioner) run by ExecuTorch's Python runtime (``executorch`` extra).
``torch``
    PyTorch eager on float32 layers holding the dequantised weights, on ``device`` (CPU or CUDA,
    synchronised). No integer kernels: the float baseline.
``cortex_m``
    The integer (or float) C library cross-compiled for ``cpu`` (``cortex-m4`` | ``cortex-m7`` |
    ``cortex-m0plus``) and run once in an emulator of that core (:mod:`evaluator.mcu`): the exact
    instruction count, flash and RAM of that build. An emulator counts instructions, not time, so
    ``latency_ms`` is an ESTIMATE (instructions x CPI 1 at ``clock_mhz``, default 100) and flagged so;
    the measured figures are the objectives ``mcu_instructions``, ``flash_bytes`` and ``ram_bytes``.
``command``
    A user's program: ``command`` with the exported artifact's path (``format``: the C folder, the
    ONNX folder or the ``.pte`` file) in place of ``{artifact}`` (appended if absent); it must
    print the latency in milliseconds (the last number on stdout is taken) - e.g. a script that
    copies the artifact to a board over ssh/adb and times it there. Run once per measurement.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from search_space import VAE, ArchSpec, VaenasInputError, pack_model
from search_space.errors import check_block, check_type

from .deploy.formats import runnable

BACKENDS = ("onnxruntime", "c", "executorch", "torch", "cortex_m", "command")
COMMAND_FORMATS = runnable()  # the export formats a latency command can be given
COMMAND_TIMEOUT_S = 600


class LatencyError(VaenasInputError):
    """A latency backend cannot measure (missing compiler or package, a user command that fails)."""


@dataclass(frozen=True)
class LatencyConfig:
    backend: str = "onnxruntime"
    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 100
    device: str = "cpu"  # the torch backend only
    command: str | None = None  # backend "command": the program to run ({artifact} = the export's path)
    format: str = "c"  # backend "command": which export the command receives
    cpu: str | None = None  # backend "cortex_m": the core (default cortex-m4)
    clock_mhz: float = 100.0  # backend "cortex_m": the clock of its latency ESTIMATE

    def __post_init__(self) -> None:
        for k, lo, hi in (("repeats", 2, 100_000), ("warmup", 0, 100_000), ("threads", 1, 1024), ("batch_size", 1, 65536)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise VaenasInputError(f"latency.{k}: must be a whole number from {lo} to {hi}, got {v!r}")
        if self.backend not in BACKENDS:
            raise VaenasInputError(f"latency.backend: {self.backend!r} is unknown; choose from {', '.join(BACKENDS)}")
        if self.backend == "command":
            if not isinstance(self.command, str) or not self.command.strip():
                raise VaenasInputError("latency.command: backend 'command' needs the program to run, e.g. "
                                       "command: './time_on_board.sh {artifact}' (it must print milliseconds)")
            try:
                shlex.split(self.command)
            except ValueError as e:
                raise VaenasInputError(f"latency.command: cannot be split into words ({e})") from None
        elif self.command is not None:
            raise VaenasInputError(f"latency.command: only backend 'command' runs a command (backend is {self.backend!r})")
        if self.format not in COMMAND_FORMATS:
            raise VaenasInputError(f"latency.format: {self.format!r} is unknown; choose from {', '.join(COMMAND_FORMATS)}")
        self._check_cortex_m()
        if self.device != "cpu" and self.backend != "torch":
            raise VaenasInputError(f"latency.device: {self.device!r} is only for backend 'torch'; "
                                   f"{self.backend!r} runs on the CPU")

    def _check_cortex_m(self) -> None:
        from .mcu import check_cpu

        if self.backend != "cortex_m":
            if self.cpu is not None:
                raise VaenasInputError(f"latency.cpu: only backend 'cortex_m' runs on a core (backend is {self.backend!r})")
            return
        object.__setattr__(self, "cpu", check_cpu("cortex-m4" if self.cpu is None else self.cpu))
        if isinstance(self.clock_mhz, bool) or not isinstance(self.clock_mhz, (int, float)) \
                or not 0 < self.clock_mhz <= 10_000:
            raise VaenasInputError(f"latency.clock_mhz: must be a number of MHz in (0, 10000], got {self.clock_mhz!r}")

    CONFIG_KEYS = ("backend", "repeats", "threads", "batch_size", "warmup", "command", "format", "cpu", "clock_mhz")

    @classmethod
    def from_config(cls, block) -> "LatencyConfig":
        """A study config's ``latency:`` block (one line naming ``latency.KEY`` on bad input)."""
        lat = check_block("latency", block, set(cls.CONFIG_KEYS))
        for k in lat:
            want = str if k in ("backend", "command", "format", "cpu") else (int, float) if k == "clock_mhz" else int
            check_type(f"latency.{k}", lat[k], want)
        return cls(**lat)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    batch_size: int
    threads: int
    repeats: int
    device: str
    path: str  # the backend and what it ran, e.g. "onnxruntime 1.32.0 (QDQ int4/int8 weights)"


def _plain(layer: nn.Module) -> nn.Module:
    """The plain ``torch.nn`` layer (no fake quantisation) with the layer's dequantised weights."""
    if isinstance(layer, nn.ConvTranspose2d):
        out = nn.ConvTranspose2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                 layer.padding, layer.output_padding, bias=layer.bias is not None)
    elif isinstance(layer, nn.Conv2d):
        out = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        bias=layer.bias is not None)
    else:
        out = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    out = out.to(layer.weight.device)
    with torch.no_grad():
        out.weight.copy_(layer.quantized_weight())
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def float_model(model: VAE) -> VAE:
    """A copy whose weight layers are plain ``torch.nn`` layers holding the dequantised weights (of the model
    that ships: structured pruning's narrower one; of an integer spec, its float-arithmetic twin)."""
    model = model.shipped()
    if model.spec.is_integer:
        out = VAE(model.spec.replace(arithmetic=None)).to(next(model.parameters()).device)
    else:
        out = copy.deepcopy(model)
    for name, layer in model.weight_layers().items():
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, _plain(layer))
    return out.eval()


class _Recon(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, _ = self.vae.encode(x)
        return self.vae.decode(mu)


def deployable_model(model: VAE) -> nn.Module:
    """The reconstruction pass in PyTorch eager form (float layers, dequantised weights)."""
    return _Recon(float_model(model)).eval()


def _input(spec: ArchSpec, batch: int) -> torch.Tensor:
    return (torch.rand((batch, *spec.input_shape), generator=torch.Generator().manual_seed(0)) > 0.5).float()


def _timed(run, warmup: int, repeats: int, sync=lambda: None) -> list[float]:
    for _ in range(warmup):
        run()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        run()
        sync()
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return times


# ----------------------------------------------------------------------------- backends
@dataclass(frozen=True)
class Prepared:
    """An exported, loaded artifact: ``times(warmup, repeats)`` -> milliseconds per timed run."""

    times: Callable[[int, int], list[float]]
    path: str


def _torch(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    device = torch.device(cfg.device)
    deploy = deployable_model(model).to(device)
    x = _input(model.spec, cfg.batch_size).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def times(warmup: int, repeats: int) -> list[float]:
        prev = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            with torch.inference_mode():
                return _timed(lambda: deploy(x), warmup, repeats, sync)
        finally:
            torch.set_num_threads(prev)

    return Prepared(times, f"torch {torch.__version__.split('+')[0]} eager fp32 (dequantised weights, {device.type})")


def _onnxruntime(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    import onnxruntime as ort

    from evaluator.deploy import write_onnx

    spec = model.spec
    write_onnx(spec, pack_model(model), workdir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = cfg.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    enc = ort.InferenceSession(str(workdir / "encoder.onnx"), so, providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(workdir / "decoder.onnx"), so, providers=["CPUExecutionProvider"])
    x = _input(spec, cfg.batch_size).numpy()

    def run():
        mu = enc.run(["mu"], {"x": x})[0]
        dec.run(None, {"z": mu})

    what = ("integer QDQ: uint8 activations, int8 weights, fused QGemm/QLinearConv" if spec.is_integer
            else "QDQ int4/int8 weights")
    return Prepared(lambda w, r: _timed(run, w, r), f"onnxruntime {ort.__version__} CPU ({what})")


def c_compiler() -> str | None:
    return os.environ.get("CC") if os.environ.get("CC") and shutil.which(os.environ["CC"]) else shutil.which("cc")


def build_c(folder: Path, what: str = "vae_demo") -> Path:
    """Compile the C export in ``folder`` (``cc -std=c99 -O2 -Wall -Wextra -Werror``); one line if no compiler."""
    from evaluator.deploy.c_lib import CFLAGS

    cc = c_compiler()
    if cc is None:
        raise LatencyError("no C compiler: cc (or $CC) is not on PATH; install one (apt-get install gcc) "
                           "or choose another latency backend")
    r = subprocess.run([cc, *CFLAGS.split(), "-o", what, "main.c", "vae_model.c", "-lm"], cwd=folder,
                       capture_output=True, text=True)
    if r.returncode:
        raise LatencyError(f"the C export did not compile ({cc}): {(r.stderr.strip().splitlines() or ['?'])[0]}")
    return folder / what


def _c(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    from evaluator.deploy import write_c

    spec = model.spec
    write_c(spec, pack_model(model), workdir)
    exe = build_c(workdir)
    x = " ".join(f"{v:.9g}" for v in _input(spec, 1)[0].reshape(-1).tolist())

    def times(warmup: int, repeats: int) -> list[float]:
        r = subprocess.run([str(exe), "bench", str(repeats), str(warmup), str(cfg.batch_size)], input=x,
                           capture_output=True, text=True)
        if r.returncode:
            raise LatencyError(f"the C export's benchmark failed: {r.stderr.strip()[:200]}")
        return [float(v) for v in r.stdout.split()]

    what = ("integer kernels: int8 activations, int32 accumulation" if spec.is_integer
            else "sub-byte weights unpacked on the fly")
    return Prepared(times, f"C99 (cc -O2, 1 thread, {what})")


def _executorch(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    from evaluator.deploy import executorch_available, write_pte

    missing = executorch_available()
    if missing:
        raise LatencyError(f"latency.backend executorch: {missing}")
    import executorch
    from executorch.runtime import Runtime

    spec = model.spec
    write_pte(spec, pack_model(model), workdir)
    program = Runtime.get().load_program(str(workdir / "model.pte"))
    enc, dec = program.load_method("encode"), program.load_method("decode")
    # batch 1 (as exported); contiguous: ExecuTorch's runtime misreads strided input tensors (upstream bug)
    xs = [_input(spec, 1).contiguous() for _ in range(cfg.batch_size)]

    def run():
        for x in xs:
            dec.execute([enc.execute([x])[0].contiguous()])

    version = getattr(executorch, "__version__", "")
    return Prepared(lambda w, r: _timed(run, w, r),
                    f"executorch {version} (XNNPACK partitioner, "
                    f"{'static int8 activations and weights' if spec.is_integer else 'int8 codes'})".replace("  ", " "))


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def command_artifact(model: VAE, fmt: str, workdir: Path) -> Path:
    """Write export ``fmt`` of ``model`` into ``workdir``; the path a latency command is given."""
    from evaluator.deploy import REGISTRY

    f = REGISTRY[fmt]
    f.write(model.spec, pack_model(model), workdir)
    return workdir / f.artifact if f.artifact else workdir


def run_command(command: str, artifact: Path) -> float:
    """Run the user's latency command on ``artifact``; the last number it prints, in ms (one line if not).

    Never through a shell. ``{artifact}`` in a word is replaced by the path shell-quoted (``shlex.quote``:
    the path itself when it holds no shell syntax, as vaenas' own temporary paths never do), so a
    command that hands it to ``sh -c`` cannot be made to run anything; the path is also in the
    environment as ``VAENAS_ARTIFACT`` - the safe way for a shell script to read it ("$VAENAS_ARTIFACT")."""
    words = shlex.split(command)
    args = [w.replace("{artifact}", shlex.quote(str(artifact))) for w in words]
    if not any("{artifact}" in w for w in words):
        args.append(str(artifact))
    env = {**os.environ, "VAENAS_ARTIFACT": str(artifact)}
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env=env)
    except FileNotFoundError:
        raise LatencyError(f"latency.command: {words[0]!r} was not found; give a program on PATH or a path to one") from None
    except PermissionError:
        raise LatencyError(f"latency.command: {words[0]!r} is not executable (chmod +x it)") from None
    except subprocess.TimeoutExpired:
        raise LatencyError(f"latency.command: {command!r} ran over {COMMAND_TIMEOUT_S} s") from None
    if r.returncode:
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or [""])[-1][:200]
        raise LatencyError(f"latency.command: {command!r} exited with status {r.returncode}" + (f": {last}" if last else ""))
    nums = _NUMBER.findall(r.stdout)
    if not nums:
        raise LatencyError(f"latency.command: {command!r} printed no number; it must print the latency in milliseconds")
    ms = float(nums[-1])
    if not math.isfinite(ms) or ms < 0:
        raise LatencyError(f"latency.command: {command!r} printed {nums[-1]}, not a latency in milliseconds")
    return ms


def _command(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    artifact = command_artifact(model, cfg.format, workdir)

    def times(warmup: int, repeats: int) -> list[float]:
        ms = run_command(cfg.command or "", artifact)  # the user's program does its own repeats
        return [ms, ms]

    return Prepared(times, f"command ({cfg.format} export): {cfg.command}")


def measure_mcu(model: VAE, cfg: LatencyConfig, workdir: Path) -> dict:
    """The Cortex-M build of ``model`` measured in the emulator (:func:`evaluator.mcu.measure`); one line if the
    cross-compiler or the emulator is missing."""
    from . import mcu

    missing = mcu.missing_tools()
    if missing:
        raise LatencyError(f"latency.backend cortex_m: {missing}")
    model = model.eval()
    x = _input(model.spec, 1)[0].reshape(-1).numpy()
    return mcu.measure(model.spec, pack_model(model), workdir, cfg.cpu or "cortex-m4", x)


def mcu_estimate_ms(m: dict, cfg: LatencyConfig) -> float:
    """The latency ESTIMATE of a Cortex-M measurement: cycles (instructions x the assumed CPI) at ``clock_mhz``."""
    return m["cycles_estimate"] / (cfg.clock_mhz * 1e3)


def mcu_path(m: dict, cfg: LatencyConfig) -> str:
    return (f"{m['cpu']} emulator (unicorn): {m['instructions']:,} instructions; latency ESTIMATE at CPI "
            f"{m['cpi_assumed']:g}, {cfg.clock_mhz:g} MHz")


def _cortex_m(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    m = measure_mcu(model, cfg, workdir)
    ms = mcu_estimate_ms(m, cfg)
    return Prepared(lambda w, r: [ms] * max(2, r), mcu_path(m, cfg))


_RUN = {"torch": _torch, "onnxruntime": _onnxruntime, "c": _c, "executorch": _executorch, "cortex_m": _cortex_m,
        "command": _command}


def prepare(model: VAE, cfg: LatencyConfig, workdir: Path) -> Prepared:
    """Export ``model`` for ``cfg.backend`` into ``workdir`` and load it, ready to be timed (repeatedly)."""
    return _RUN[cfg.backend](model.eval(), cfg, Path(workdir))


_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")  # nothing a shell would read as syntax


def _temp_root() -> str | None:
    """Where the exported artifacts go: the system's temporary folder, unless its path holds characters a
    shell would interpret (``$TMPDIR`` is anyone's text) - then ``/tmp``, which never does."""
    return None if _SAFE_PATH.match(tempfile.gettempdir()) else "/tmp"


def measure_latency(model: VAE, cfg: LatencyConfig = LatencyConfig()) -> LatencyResult:
    """Export ``model`` for ``cfg.backend`` into a temporary folder and time a reconstruction pass there."""
    with tempfile.TemporaryDirectory(prefix="vaenas-latency-", dir=_temp_root()) as tmp:
        p = prepare(model, cfg, Path(tmp))
        return summarise(p.times(cfg.warmup, cfg.repeats), cfg, p.path)


def summarise(times: list[float], cfg: LatencyConfig, path: str) -> LatencyResult:
    q = statistics.quantiles(times, n=20, method="inclusive")  # 5% steps
    q1, q3 = statistics.quantiles(times, n=4, method="inclusive")[0::2]
    threads = cfg.threads if cfg.backend in ("torch", "onnxruntime") else 1
    return LatencyResult(
        median_ms=statistics.median(times), iqr_ms=q3 - q1, p10_ms=q[1], p90_ms=q[17], batch_size=cfg.batch_size,
        threads=threads, repeats=len(times), device=cfg.device if cfg.backend == "torch" else "cpu", path=path,
    )


def check_latency_backend(cfg: LatencyConfig, spec: ArchSpec) -> None:
    """Measure once on an untrained model of ``spec`` so a backend that cannot work (no compiler, a
    user command that fails or prints no number, a missing package) is one line before a study starts."""
    from search_space import build_vae

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_vae(spec)
    measure_latency(model, LatencyConfig(**{**cfg.__dict__, "warmup": 0, "repeats": 2}))
