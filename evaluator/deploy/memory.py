"""RAM and flash of the exported C inference, from the spec alone.

``ram_bytes``: the C library's one static activation arena (its ``.bss``). Tensor ``j`` of the
reconstruction chain (:func:`search_space.plan.tensor_sizes`) lies at the arena's start for even ``j`` and
at its end for odd ``j``, so a layer never overwrites its own input; the arena is therefore
``max_j (size_j + size_{j+1})`` floats - the peak activation memory of a sequential network
(input and output of the widest step live together, MCUNet's definition), input and output
tensors of the pass included. Activations and activation quantisation work in place.

``flash_bytes``: the packed weights (exact, ``packed_size_bytes``), the bitmap layers' prefix
tables (exact, :func:`c_table_bytes`: one uint32 per 64 weights of a sparse layer stored as a
bitmap, so the C code finds a kept weight's slot in at most 63 steps) plus an **estimate** of the
inference code (:func:`code_bytes_estimate`: a per-layer call, the conv kernels, the activation
quantiser), fitted by least squares to ``size``'s text+data of ``vae_model.o`` built with
``cc -std=c99 -O2`` (gcc, x86-64) over random specs (the fit's figures: ``benchmarks/README.md``).
tests/evaluator/test_deploy.py checks every round-trip spec is within ``FLASH_MARGIN * size + FLASH_SLACK``
of ``size``'s figure. Code for another instruction set (Thumb-2 is denser) differs; the weights
do not.
"""

from __future__ import annotations

from search_space.packing import packed_layout, packed_size_bytes
from search_space.spec import ArchSpec
from search_space.plan import tensor_sizes

FLOAT_BYTES = 4
# fitted code-size model, bytes (see the module docstring): an estimate, not a measurement
CODE_BASE = 100
CODE_PER_LAYER = 330
CODE_CONV = 820  # conv + transposed-conv kernels
CODE_ACT_QUANT = 500  # the activation quantiser ...
CODE_ACT_QUANT_PER_LAYER = 180  # ... and its call before every layer
FLASH_MARGIN = 0.10  # |estimate - size(text+data)| <= FLASH_MARGIN * size + FLASH_SLACK
FLASH_SLACK = 1024


def arena_floats(spec: ArchSpec) -> int:
    sizes = tensor_sizes(spec)
    return max(a + b for a, b in zip(sizes, sizes[1:]))


def ram_bytes(spec: ArchSpec) -> int:
    """Peak activation memory of the exported C inference (its static arena), bytes."""
    return FLOAT_BYTES * arena_floats(spec)


def prefix_entries(n_weights: int) -> int:
    """uint32 entries of a bitmap layer's prefix table: one per 64-weight block."""
    return (n_weights + 63) // 64


def c_table_bytes(spec: ArchSpec) -> int:
    """Bytes of the C library's prefix tables (bitmap-sparse layers only; exact)."""
    return sum(4 * prefix_entries(lay.n_weights) for lay in packed_layout(spec) if lay.index_format == "bitmap")


def code_bytes_estimate(spec: ArchSpec) -> int:
    """Bytes of inference code (estimated, see the module docstring)."""
    n = len(packed_layout(spec))
    code = CODE_BASE + CODE_PER_LAYER * n + (CODE_CONV if spec.family == "conv" else 0)
    if spec.act_bits:
        code += CODE_ACT_QUANT + CODE_ACT_QUANT_PER_LAYER * n
    return code


def flash_bytes(spec: ArchSpec) -> int:
    """Packed weights and prefix tables (exact) + inference code (estimated): what the C library puts in flash."""
    return packed_size_bytes(spec) + c_table_bytes(spec) + code_bytes_estimate(spec)
