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

import torch

from .compression import kept_count
from .plan import UnitGroup, unit_groups


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
