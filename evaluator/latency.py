"""Measured latency of a VAE in its deployable form.

What the number means: the wall time of one *reconstruction pass* - encode, take ``z = mu``,
decode to logits - for a batch of ``batch_size`` images (default 1), under ``inference_mode``,
with ``threads`` intra-op threads (default 1, recorded), after ``warmup`` untimed runs; the median
over ``repeats`` timed runs, with the inter-quartile range. On CUDA each run is synchronised.

Deployable form (``deployable_model``): the fake-quant layers are replaced by plain PyTorch
layers carrying the dequantised weights (what a packed model unpacks to). If no layer is 32-bit
(every weight <= 8 bits), the Linear layers then run through PyTorch's real int8 path,
``torch.ao.quantization.quantize_dynamic`` (per-channel int8 weights, int8 GEMM, activations
quantised per batch), on CPU. Conv layers have no dynamic int8 kernel in PyTorch and stay float32;
``LatencyResult.path`` says which path ran. Sub-8-bit weights are stored packed on disk but
execute as int8: PyTorch has no sub-byte GEMM.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from search_space import VAE


@dataclass(frozen=True)
class LatencyConfig:
    batch_size: int = 1
    threads: int = 1
    warmup: int = 10
    repeats: int = 100
    device: str = "cpu"
    int8: bool = True  # use the int8 dynamic path when every layer is <= 8 bits (CPU only)

    def __post_init__(self) -> None:
        from search_space import VaenasInputError

        for k, lo, hi in (("repeats", 2, 100_000), ("warmup", 0, 100_000), ("threads", 1, 1024), ("batch_size", 1, 65536)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise VaenasInputError(f"latency.{k}: must be a whole number from {lo} to {hi}, got {v!r}")


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
    path: str  # "fp32" | "int8-dynamic-linear" | "int8-dynamic-linear+fp32-conv"


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
    """A copy whose weight layers are plain ``torch.nn`` layers holding the dequantised weights."""
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


def deployable_model(model: VAE, cfg: LatencyConfig = LatencyConfig()) -> tuple[nn.Module, str]:
    """The reconstruction pass in the form that would ship, and the name of its execution path."""
    fm = float_model(model)
    spec = model.spec
    if not (cfg.int8 and cfg.device == "cpu" and max(spec.weight_bits) <= 8):
        return _Recon(fm).eval(), "fp32"
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = quantize_dynamic(copy.deepcopy(fm).cpu(), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    path = "int8-dynamic-linear" + ("+fp32-conv" if spec.family == "conv" else "")
    return _Recon(qm).eval(), path


def measure_latency(model: VAE, cfg: LatencyConfig = LatencyConfig()) -> LatencyResult:
    deploy, path = deployable_model(model, cfg)
    device = torch.device(cfg.device)
    deploy = deploy.to(device) if path == "fp32" else deploy
    x = (torch.rand((cfg.batch_size, *model.spec.input_shape), generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = x.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.inference_mode():
            for _ in range(cfg.warmup):
                deploy(x)
            sync()
            times = []
            for _ in range(cfg.repeats):
                t0 = time.perf_counter_ns()
                deploy(x)
                sync()
                times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        torch.set_num_threads(prev_threads)
    q = statistics.quantiles(times, n=20, method="inclusive")  # 5% steps
    q1, q3 = statistics.quantiles(times, n=4, method="inclusive")[0::2]
    return LatencyResult(
        median_ms=statistics.median(times), iqr_ms=q3 - q1, p10_ms=q[1], p90_ms=q[17], batch_size=cfg.batch_size,
        threads=cfg.threads, repeats=cfg.repeats, device=str(device), path=path,
    )
