"""The per-layer compression methods beyond uniform bit-widths: one owner of their arithmetic.

Three optional per-layer choices of an :class:`~search_space.spec.ArchSpec` (each a tuple in
``spec.layer_names()`` order, ``None`` when unused):

* ``sparsity`` - the fraction of a layer's weights pruned to exactly zero by magnitude
  (unstructured). A layer of ``n`` weights at sparsity ``s`` keeps exactly
  ``n - floor(s * n)`` (:func:`kept_count`); training reaches that gradually (:func:`sparsity_at`,
  Zhu & Gupta 2017's cubic schedule), and the packed model stores the kept weights only, with
  their positions as a bitmap or as a list of indices, whichever is smaller
  (:func:`sparse_index_bytes`, counted exactly).
* ``rank`` - the layer is trained and shipped as the product of two factors of rank
  ``r = max(1, floor(rank * min(rows, cols) + 0.5))`` of its weight matrix (:func:`factor_rank`):
  a linear layer ``(O, I)`` becomes ``(r, I)`` then ``(O, r)``; a conv ``(O, C, k, k)`` becomes a
  ``k x k`` conv to ``r`` channels then a ``1 x 1`` conv to ``O``; a transposed conv
  ``(C, O, k, k)`` becomes a ``1 x 1`` conv from ``C`` to ``r`` channels then the transposed conv
  from ``r``. The factors are named ``<layer>.v`` (first) and ``<layer>.u`` (second, with the
  bias) and are quantised at the layer's bit-width and quantizer.
* ``quantizer`` - ``uniform`` (per-channel symmetric grid, :mod:`.quant`) or ``kmeans``: one
  learned codebook of ``2**bits`` float32 values per layer; each weight is its nearest entry.

A layer may be sparse or factorised, not both (a sparse factor pair is not a method of the
seeds); the k-means quantizer needs a bit-width below 32.
"""

from __future__ import annotations

import math

QUANTIZERS = ("uniform", "kmeans")
PRUNINGS = (None, "unstructured", "structured")
MAX_SPARSITY = 0.99


def kept_count(n: int, sparsity: float) -> int:
    """Weights kept of ``n`` at ``sparsity``: ``n - floor(sparsity * n)`` (at least 1)."""
    return max(1, n - math.floor(sparsity * n + 1e-9))


def index_bits(n: int) -> int:
    """Bits of one weight index into a layer of ``n`` weights."""
    return max(1, (n - 1).bit_length())


def sparse_format(n: int, kept: int) -> str:
    """``"bitmap"`` (one bit per weight) or ``"indices"`` (``index_bits(n)`` bits per kept weight),
    whichever takes fewer bytes (the bitmap on a tie)."""
    bitmap = (n + 7) // 8
    indices = (kept * index_bits(n) + 7) // 8
    return "indices" if indices < bitmap else "bitmap"


def sparse_index_bytes(n: int, kept: int) -> int:
    """Bytes of a sparse layer's position record (see :func:`sparse_format`)."""
    if sparse_format(n, kept) == "bitmap":
        return (n + 7) // 8
    return (kept * index_bits(n) + 7) // 8


def factor_rank(rows: int, cols: int, fraction: float) -> int:
    """The rank of a factorised ``rows x cols`` weight matrix at ``fraction`` of full rank."""
    return max(1, math.floor(fraction * min(rows, cols) + 0.5))


def sparsity_at(target: float, step: int, total: int, start: float = 0.1, end: float = 0.8) -> float:
    """The pruned fraction after (1-based) ``step`` of ``total``: 0 before ``start`` of training, the
    cubic ramp ``target * (1 - (1 - t)**3)`` between ``start`` and ``end``, ``target`` after."""
    if total <= 0 or target <= 0:
        return target
    t = (step / total - start) / max(1e-9, end - start)
    t = min(1.0, max(0.0, t))
    return target * (1.0 - (1.0 - t) ** 3)
