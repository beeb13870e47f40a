"""RAM and flash of the exported C inference, from the spec alone.

``ram_bytes``: the C library's one static activation arena (its ``.bss``). Tensor ``j`` of the
reconstruction chain (:func:`search_space.plan.tensor_sizes`) lies at the arena's start for even ``j`` and
at its end for odd ``j``, so a layer never overwrites its own input; the arena is therefore
``max_j (size_j + size_{j+1})`` floats - the peak activation memory of a sequential network
(input and output of the widest step live together, MCUNet's definition), input and output
tensors of the pass included. Activations and activation quantisation work in place.

Integer specs (``arithmetic: int8``): one byte per int8 activation in an int8 arena laid out the same way
(:func:`int8_arena_bytes`), plus the head's float output and the kernels' scratch (:func:`ram_bytes`); the
library declares them as separate static arrays, so its bss adds the compiler's alignment of each (at most 32
bytes per array on x86-64). The Cortex-M target's RAM is measured on its own build (:mod:`evaluator.mcu`). Their
flash: the packed weights and the integer tables (exact, :func:`int_table_bytes`) plus a code estimate fitted
the same way (``CODE_INT_*``).

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

from search_space.packing import SPLITS, packed_layout, packed_size_bytes
from search_space.spec import ArchSpec
from search_space.plan import Step, decoder_steps, encoder_steps, tensor_sizes

FLOAT_BYTES = 4
# fitted code-size model, bytes (see the module docstring): an estimate, not a measurement
CODE_BASE = 100
CODE_PER_LAYER = 330
CODE_CONV = 820  # conv + transposed-conv kernels
CODE_ACT_QUANT = 500  # the activation quantiser ...
CODE_ACT_QUANT_PER_LAYER = 180  # ... and its call before every layer
# the integer library's code, fitted the same way over 40 random int8 specs (largest residual 2.4 KB):
CODE_INT_BASE = 2050  # kernels, decoders, entry quantiser ...
CODE_INT_PER_STEP = 145  # ... a step's call and descriptor
CODE_INT_CONV = 1250  # convolution kernels and their input centring
CODE_INT_TCONV = 1250
CODE_INT_PER_WIDTH = 1925  # a plane dot product per stream width read in place (8, 4, 2, 1 bits)
CODE_INT_TABLE = 1065  # the table activation's path
FLASH_MARGIN = 0.10  # |estimate - size(text+data)| <= FLASH_MARGIN * size + FLASH_SLACK
FLASH_SLACK = 1024


def int8_chains(spec: ArchSpec) -> list[list[int]]:
    """An integer spec's int8 tensor sizes per chain: the input (``x`` / ``z``), then every step's output but the
    exit's (which is float)."""
    enc, dec = encoder_steps(spec), decoder_steps(spec)
    return [[spec.n_inputs] + [s.out_size for s in enc[:-1]], [spec.latent_dim] + [s.out_size for s in dec[:-1]]]


def int8_arena_bytes(spec: ArchSpec) -> int:
    """The int8 arena: tensor ``j`` of a chain at the start (even ``j``) or the end (odd ``j``), as the float arena."""
    sizes = [max(a + b for a, b in zip(c, c[1:])) if len(c) > 1 else c[0] for c in int8_chains(spec)]
    return max(sizes)


def kernel_scratch_bytes(spec: ArchSpec) -> int:
    """The integer C kernels' scratch (:func:`scratch`): a decoded weight row, a linear input split in planes, a
    convolution's int16 centered input and one output channel's int32 accumulators."""
    return scratch_bytes(encoder_steps(spec) + decoder_steps(spec))


# the integer C kernels' layout (evaluator/deploy/c_int.py), which their RAM follows
GROUP = {8: (1, 1), 6: (4, 3), 5: (8, 5), 4: (2, 1), 3: (8, 3), 2: (4, 1), 1: (8, 1)}  # bits -> (codes, bytes) per group


def direct_bits(step: Step) -> int:
    """The width of a dense linear step whose rows are read in place, group by group (every row starts on a
    group boundary: ``in_size`` a multiple of the group's codes), else 0 (rows are decoded first)."""
    if step.kind != "linear" or step.sparsity > 0:
        return 0
    return step.bits if step.in_size % GROUP[step.bits][0] == 0 else 0


def rows(step: Step) -> tuple[int, int]:
    """``(rows, row length)`` of the weight tensor as the kernels decode it (a transposed conv's rows are one
    input channel's kernels for one output channel)."""
    n = step.n_weights
    if step.kind == "tconv":
        return step.in_shape[0] * step.out_shape[0], step.kernel * step.kernel
    return step.out_channels, n // step.out_channels


def scratch(steps: list[Step]) -> dict[str, int]:
    """Elements of each scratch array the kernels of ``steps`` need (0: not declared): ``wrow`` (int8, a decoded
    row or output channel's kernels), ``xplanes`` (int8, a linear input split in planes), ``xc`` (int16, a
    convolution's centered input), ``acc`` (int32, one output channel's accumulators)."""
    out = {"wrow": 1, "xplanes": 0, "xc": 0, "acc": 0}  # the linear kernel names wrow in any case
    for st in steps:
        d = direct_bits(st)
        if st.kind == "linear":
            key = "wrow" if not d else "xplanes" if d != 8 else None
            if key:  # a split width's input in two arrangements (its low and high streams group differently)
                out[key] = max(out[key], (2 if key == "xplanes" and d in SPLITS else 1) * st.in_size)
            continue
        out["wrow"] = max(out["wrow"], st.in_shape[0] * st.kernel * st.kernel)
        out["xc"] = max(out["xc"], st.in_size)
        out["acc"] = max(out["acc"], st.out_shape[1] * st.out_shape[2])
    return out


SCRATCH_TYPES = {"wrow": ("int8_t", 1), "xplanes": ("int8_t", 1), "xc": ("int16_t", 2), "acc": ("int32_t", 4)}


def scratch_bytes(steps: list[Step]) -> int:
    return sum(n * SCRATCH_TYPES[k][1] for k, n in scratch(steps).items())





def arena_floats(spec: ArchSpec) -> int:
    sizes = tensor_sizes(spec)
    return max(a + b for a, b in zip(sizes, sizes[1:]))


def ram_bytes(spec: ArchSpec) -> int:
    """Peak activation memory of the exported C inference (its static arenas), bytes: float specs one float
    arena; integer specs the int8 arena, the head's float output (``2 * latent_dim`` floats) and the kernels'
    int8 weight scratch."""
    if spec.is_integer:
        return int8_arena_bytes(spec) + FLOAT_BYTES * 2 * spec.latent_dim + kernel_scratch_bytes(spec)
    return FLOAT_BYTES * arena_floats(spec)


def prefix_entries(n_weights: int) -> int:
    """uint32 entries of a bitmap layer's prefix table: one per 64-weight block."""
    return (n_weights + 63) // 64


def c_table_bytes(spec: ArchSpec) -> int:
    """Bytes of the C library's prefix tables (bitmap-sparse layers only; exact)."""
    return sum(4 * prefix_entries(lay.n_weights) for lay in packed_layout(spec) if lay.index_format == "bitmap")


def int_table_bytes(spec: ArchSpec) -> int:
    """The integer C library's per-step tables (exact): int32 bias, int32 multiplier + uint8 shift (or float exit
    scales), the 256-entry activation table, a sparse layer's row prefix table."""
    from search_space.integer import uses_table

    total = 0
    for steps in (encoder_steps(spec), decoder_steps(spec)):
        for i, st in enumerate(steps):
            n = st.out_channels
            total += 4 * n + (4 * n if i == len(steps) - 1 else 5 * n)
            if i < len(steps) - 1 and st.act_after and uses_table(spec.activation):
                total += 256
            if st.sparsity > 0:
                total += 4 * (rows(st)[0] + 1)
    return total


def code_bytes_estimate(spec: ArchSpec) -> int:
    """Bytes of inference code (estimated, see the module docstring)."""
    n = len(packed_layout(spec))
    if spec.is_integer:
        from search_space.integer import uses_table

        steps = encoder_steps(spec) + decoder_steps(spec)
        kinds = {s.kind for s in steps}
        direct = {direct_bits(s) for s in steps} - {0}
        widths = len({w for b in direct for w in SPLITS.get(b, (b,))})
        return (CODE_INT_BASE + CODE_INT_PER_STEP * n + (CODE_INT_CONV if kinds & {"conv", "tconv"} else 0)
                + (CODE_INT_TCONV if "tconv" in kinds else 0) + CODE_INT_PER_WIDTH * widths
                + (CODE_INT_TABLE if uses_table(spec.activation) else 0))
    code = CODE_BASE + CODE_PER_LAYER * n + (CODE_CONV if spec.family == "conv" else 0)
    if spec.act_bits:
        code += CODE_ACT_QUANT + CODE_ACT_QUANT_PER_LAYER * n
    return code


def flash_bytes(spec: ArchSpec) -> int:
    """Packed weights and prefix tables (exact) + inference code (estimated): what the C library puts in flash
    (an integer spec's: its integer tables, exact, instead of the prefix tables)."""
    if spec.is_integer:
        return packed_size_bytes(spec) + int_table_bytes(spec) + code_bytes_estimate(spec)
    return packed_size_bytes(spec) + c_table_bytes(spec) + code_bytes_estimate(spec)
