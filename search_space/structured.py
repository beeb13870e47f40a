"""Structured pruning (``pruning: structured``): a layer's ``sparsity`` removes whole output units - features
of a linear layer, channels of a conv, transposed conv or of ``dec.proj``'s feature map - and with them
the matching inputs of the layer that consumes them, so what ships is a dense, narrower VAE
(:meth:`ArchSpec.deployed`): fewer FLOPs, bytes and milliseconds, not only bytes.

Training: the wide model carries 0/1 masks; a unit is removed by zeroing its rows in the producer's
mask and its columns in the consumer's, so the wide model computes exactly what the narrow one does
(the consumer never sees the removed unit, whatever the activation makes of it). Units are ranked by
the L2 norm of their (masked) producer weights (filter pruning, Li et al. 2017) and removed along
:func:`~search_space.compression.sparsity_at`'s schedule; at the end exactly
``units - kept_count(units, sparsity)`` are gone. :func:`narrow_state` slices the trained wide model
into the deployed spec's state dict (weights, per-channel scales, biases; codebooks unchanged).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .compression import kept_count
from .spec import ArchSpec


@dataclass(frozen=True)
class UnitGroup:
    """One pruned layer's units: ``producer`` computes them, ``consumer`` reads them."""

    producer: str
    consumer: str
    units: int
    target: float  # the fraction of units removed at the end
    out_axis: int  # producer weight axis of the units (0; 1 for a transposed conv)
    out_group: int  # producer rows per unit along out_axis (dec.proj: h * w; else 1)
    in_axis: int  # consumer weight axis of its inputs (1 for linear/conv; 0 for a transposed conv)
    in_group: int  # consumer inputs per unit (a linear layer after a conv: h * w; else 1)


def unit_groups(spec: ArchSpec) -> list[UnitGroup]:
    """The structured-pruning plan of ``spec`` (empty unless ``spec.pruning == "structured"``)."""
    if spec.pruning != "structured":
        return []
    sp = dict(zip(spec.layer_names(), spec.sparsity or ()))
    shapes = spec.feature_shapes()
    n_conv, n_fc = len(spec.enc_channels), len(spec.enc_hidden)
    out = []
    for name, units in spec.prunable_units().items():
        if sp.get(name, 0.0) <= 0:
            continue
        idx = int("0" + "".join(c for c in name if c.isdigit()))
        out_axis, out_group, in_axis, in_group = 0, 1, 1, 1
        if name.startswith("enc.conv"):
            if idx + 1 < n_conv:
                consumer = f"enc.conv{idx + 1}"
            else:
                consumer, in_group = ("enc.fc0" if n_fc else "head"), math.prod(shapes[idx + 1][1:])
        elif name.startswith("enc.fc"):
            consumer = f"enc.fc{idx + 1}" if idx + 1 < n_fc else "head"
        elif name.startswith("dec.fc"):
            last = "dec.out" if spec.family == "mlp" else "dec.proj"
            consumer = f"dec.fc{idx + 1}" if idx + 1 < len(spec.decoder_hidden) else last
        elif name == "dec.proj":
            consumer, out_group, in_axis = "dec.tconv0", math.prod(shapes[-1][1:]), 0
        else:  # dec.tconv{idx}, not the last
            consumer, out_axis, in_axis = f"dec.tconv{idx + 1}", 1, 0
        out.append(UnitGroup(name, consumer, units, sp[name], out_axis, out_group, in_axis, in_group))
    return out


@functools.lru_cache(maxsize=1024)
def masked_layers(spec: ArchSpec) -> frozenset[str]:
    """Layers that need a mask under structured pruning (producers and consumers; once per spec)."""
    return frozenset(n for g in unit_groups(spec) for n in (g.producer, g.consumer))


def _units_view(w: torch.Tensor, g: UnitGroup) -> torch.Tensor:
    """The producer weight as (units, everything else)."""
    return w.movedim(g.out_axis, 0).reshape(g.units, -1)


def _alive(layers: dict, g: UnitGroup) -> torch.Tensor:
    """Per unit: still in? (A unit is removed when its producer mask rows are all 0.)"""
    return _units_view(layers[g.producer].weight_mask, g).abs().sum(1) > 0


def kept_units(layers: dict, g: UnitGroup) -> torch.Tensor:
    """Indices of the units still in."""
    return torch.nonzero(_alive(layers, g)).reshape(-1)


@torch.no_grad()
def prune_units(layers: dict, g: UnitGroup, fraction: float) -> None:
    """Remove the lowest-norm units until ``units - kept_count(units, fraction)`` are gone (monotone)."""
    k = g.units - kept_count(g.units, fraction) if fraction > 0 else 0
    prod, cons = layers[g.producer], layers[g.consumer]
    alive = _alive(layers, g)
    if k > int((~alive).sum()):
        norms = _units_view(prod.weight * prod.weight_mask, g).norm(dim=1)
        norms = torch.where(alive, norms, torch.full_like(norms, -1.0))  # removed ones stay removed
        drop = torch.argsort(norms, stable=True)[:k]
        prod.weight_mask.index_fill_(g.out_axis, _expand(drop, g.out_group), 0.0)
        cons.weight_mask.index_fill_(g.in_axis, _expand(drop, g.in_group), 0.0)
    for m in (prod, cons):
        m.weight.mul_(m.weight_mask)


def _expand(units: torch.Tensor, group: int) -> torch.Tensor:
    return (units[:, None] * group + torch.arange(group, device=units.device)).reshape(-1)


@torch.no_grad()
def narrow_state(model) -> dict[str, torch.Tensor]:
    """The trained wide model's tensors sliced to ``model.spec.deployed()``'s layers (a state dict)."""
    layers = model.weight_layers()
    outs: dict[str, tuple[int, torch.Tensor]] = {}
    ins: dict[str, tuple[int, torch.Tensor]] = {}
    for g in unit_groups(model.spec):
        keep = kept_units(layers, g)
        outs[g.producer] = (g.out_axis, _expand(keep, g.out_group))
        ins[g.consumer] = (g.in_axis, _expand(keep, g.in_group))
    state = {}
    for name, m in layers.items():
        w = m.weight.detach()
        if name in ins:
            w = w.index_select(ins[name][0], ins[name][1])
        if name in outs:
            w = w.index_select(*outs[name])
        state[f"{name}.weight"] = w.clone()
        if m.bias is not None:
            b = m.bias.detach()
            state[f"{name}.bias"] = (b.index_select(0, outs[name][1]) if name in outs else b).clone()
        if hasattr(m, "weight_scale"):
            s = m.step_size().detach()
            state[f"{name}.weight_scale"] = (s.index_select(0, outs[name][1]) if name in outs else s).clone()
        if hasattr(m, "codebook"):
            state[f"{name}.codebook"] = m.step_size().detach().clone()
    return state
