"""Cost counting: FLOPs (``torch.utils.flop_counter``), BitOps, parameters and packed bytes.

FLOPs are those of one forward pass of the whole VAE (encode, reparameterise, decode) at
batch 1, counted by PyTorch's ``FlopCounterMode`` on the *deployed* float graph (fake-quant ops
are a training device and are not part of it), on the meta device, so counting allocates nothing.
A multiply-accumulate counts as 2 FLOPs. Ops the counter has no formula for are listed in
``uncounted`` (e.g. ``relu``, ``exp``, ``add``) - they are reported, never silently counted as 0.

BitOps = sum over weight layers of MACs x weight bits x activation bits (32 for float); a k-means
layer's weights are float32 codebook entries once looked up, so it counts 32 weight bits.

Compression (``search_space/compression.py``): a factorised layer's FLOPs are its two factors'
(counted on the factorised graph); structured pruning counts the narrower model that ships
(``spec.deployed()``: fewer FLOPs, parameters, bytes); unstructured sparsity does **not** lower FLOPs - every
deployable form (ONNX, C, ExecuTorch) executes the layer dense, pruned weights as zeros - it
lowers the packed bytes.

``ram_bytes`` (peak activation memory of the exported C inference, exact for that build) and
``flash_bytes`` (packed weights + an *estimate* of the code) come from ``evaluator.deploy.memory``.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from search_space import ArchSpec, build_vae, packed_size_bytes
from evaluator.deploy.memory import flash_bytes, ram_bytes

# ops that move or view data and do no arithmetic: not worth listing as "uncounted"
_NO_ARITHMETIC = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "split", "split_with_sizes",
    "chunk", "unbind", "slice", "select", "detach", "alias", "clone", "copy_", "empty", "zeros", "ones",
    "zero_", "fill_", "as_strided", "squeeze", "unsqueeze", "flatten", "contiguous", "_to_copy", "lift_fresh",
}


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.packets: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.packets.add(func.overloadpacket)
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@dataclass(frozen=True)
class FlopReport:
    total: int  # FLOPs (2 per MAC) of the ops the counter knows
    per_layer: dict[str, int]  # weight-layer name -> FLOPs
    uncounted: tuple[str, ...] = field(default=())  # arithmetic ops executed but not counted

    @property
    def macs(self) -> int:
        return self.total // 2


def count_flops(spec: ArchSpec, batch_size: int = 1) -> FlopReport:
    """FLOPs of the deployed float graph: the same for every bit-width assignment of one structure, so
    counted once per structure (cached)."""
    spec = spec.deployed()  # structured pruning: the narrower model that ships
    float_spec = spec.replace(weight_bits=(32,) * len(spec.weight_bits), act_bits=None, quantizer=None, sparsity=None,
                              arithmetic=None)
    return _count_float_flops(float_spec, batch_size)


@functools.lru_cache(maxsize=8192)
def _count_float_flops(float_spec: ArchSpec, batch_size: int) -> FlopReport:
    spec = float_spec
    with torch.device("meta"):
        model = build_vae(float_spec).eval()
        x = torch.zeros((batch_size, *spec.input_shape))
        eps = torch.zeros((batch_size, spec.latent_dim))
    counter = FlopCounterMode(display=False)
    recorder = _OpRecorder()
    with torch.no_grad(), counter, recorder:
        model(x, eps)
    counts = counter.get_flop_counts()
    per_layer = {name: int(sum(counts.get(f"VAE.{name}", {}).values())) for name in spec.layer_names()}
    counted = {p for p in recorder.packets if p in flop_registry}
    uncounted = sorted({p.__name__ for p in recorder.packets - counted} - _NO_ARITHMETIC)
    return FlopReport(total=int(counter.get_total_flops()), per_layer=per_layer, uncounted=tuple(uncounted))


def count_bitops(spec: ArchSpec, flops: FlopReport | None = None) -> int:
    flops = flops or count_flops(spec)
    spec = spec.deployed()
    a_bits = 8 if spec.is_integer else spec.act_bits or 32
    w_bits = [32 if spec.layer_quantizer(i) == "kmeans" else b for i, b in enumerate(spec.weight_bits)]
    return sum((flops.per_layer[n] // 2) * b * a_bits for n, b in zip(spec.layer_names(), w_bits))


def count_params(spec: ArchSpec) -> int:
    with torch.device("meta"):
        return build_vae(spec.deployed()).num_params()


@dataclass(frozen=True)
class Costs:
    flops: int
    bitops: int
    params: int
    size_bytes: int
    uncounted_ops: tuple[str, ...]
    ram_bytes: int = 0
    flash_bytes: int = 0  # an estimate (code size estimated; weights exact)


@functools.lru_cache(maxsize=8192)
def static_costs(spec: ArchSpec) -> Costs:
    """Every cost that depends on the spec alone (no training, no weights); cached per spec (a frozen,
    hashable value), so a spec scored again - a repeat, a supernet estimate, a re-measurement - costs nothing."""
    fr = count_flops(spec)
    return Costs(flops=fr.total, bitops=count_bitops(spec, fr), params=count_params(spec),
                 size_bytes=packed_size_bytes(spec), uncounted_ops=fr.uncounted, ram_bytes=ram_bytes(spec),
                 flash_bytes=flash_bytes(spec))
