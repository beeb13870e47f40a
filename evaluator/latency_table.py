"""A per-layer latency table: latency ESTIMATES at microseconds per spec, measured once per study.

Measuring latency on the exported artifact costs tens of milliseconds per spec (export, session,
timed runs); a supernet study scores a spec in less. So a study in supernet mode measures a sample
of its space's specs once, on the study's own latency backend, and fits a table of what each kind
of layer costs there:

* per layer type - weight layer kind (fully connected, conv/transposed conv) x weight storage
  (int4-stored codes for 2-4 bits, int8 for 5-8, float32) - a fixed cost per layer and a cost per
  multiply-accumulate;
* per element of activation quantisation and of activation functions;
* one fixed cost per reconstruction pass.

The estimate of a spec is the sum over the layers of its inference program
(:mod:`search_space.plan`), so it counts what the deployed chain runs. Costs are
non-negative least squares over the measured specs. A second, disjoint sample is measured too
and predicted: the Spearman rank correlation and the errors are printed and stored with the
study, and every latency taken from the table is labelled an estimate. The front a supernet study
reports is re-measured on the real backend.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from search_space import ArchSpec, SearchSpace, build_vae
from search_space.plan import Step, decoder_steps, encoder_steps

from .latency import LatencyConfig, measure_latency


def _storage(bits: int) -> str:
    return "int4" if bits <= 4 else "int8" if bits <= 8 else "f32"


def _macs(step: Step) -> int:
    if step.kind == "linear":
        return step.in_size * step.out_size
    if step.kind == "conv":
        return step.out_size * step.in_shape[0] * step.kernel ** 2
    return step.in_size * step.out_shape[0] * step.kernel ** 2  # transposed: each input scattered k*k*C_out times


FEATURES = ["pass", *(f"{k}.{s}.{w}" for k in ("fc", "conv") for s in ("int4", "int8", "f32")
                      for w in ("layer", "mmac")), "act_quant.kelem", "activation.kelem"]


def features(spec: ArchSpec) -> np.ndarray:
    """The spec's counts per table entry (:data:`FEATURES`): layers and millions of MACs per layer type,
    thousands of elements activation-quantised and passed through activations, and 1 for the pass."""
    f = dict.fromkeys(FEATURES, 0.0)
    f["pass"] = 1.0
    for step in encoder_steps(spec) + decoder_steps(spec):
        key = f"{'fc' if step.kind == 'linear' else 'conv'}.{_storage(step.bits)}"
        f[f"{key}.layer"] += 1
        f[f"{key}.mmac"] += _macs(step) / 1e6
        if spec.act_bits is not None:
            f["act_quant.kelem"] += step.in_size / 1e3
        if step.act_after:
            f["activation.kelem"] += step.out_size / 1e3
    return np.array([f[k] for k in FEATURES])


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares (active set: drop the most negative coefficient, refit)."""
    active = [j for j in range(a.shape[1]) if np.any(a[:, j])]
    while True:
        x = np.zeros(a.shape[1])
        if active:
            x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        neg = [j for j in active if x[j] < 0]
        if not neg:
            return x
        active.remove(min(neg, key=lambda j: x[j]))


def spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable")
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable")
    if len(a) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class LatencyTable:
    """Per-layer-type costs (ms) on one latency backend, fitted to measured specs, with its validation."""

    backend: str
    costs: dict[str, float]
    validation: dict[str, float] = field(default_factory=dict)  # spearman, median/max abs error (ms, %)
    seconds: float = 0.0  # wall time spent measuring and fitting

    def estimate_ms(self, spec: ArchSpec) -> float:
        return float(features(spec) @ np.array([self.costs.get(k, 0.0) for k in FEATURES]))

    def to_dict(self) -> dict:
        return {"backend": self.backend, "costs": self.costs, "validation": self.validation, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        return cls(d["backend"], dict(d["costs"]), dict(d.get("validation", {})), float(d.get("seconds", 0.0)))

    def describe(self) -> str:
        v = self.validation
        return (f"latency table ({self.backend}; ESTIMATES for scored specs, fitted on {v.get('n_fit', 0):.0f} measured "
                f"specs in {self.seconds:.1f} s): on {v.get('n_check', 0):.0f} other measured specs Spearman "
                f"{v.get('spearman', float('nan')):.3f}, median error {v.get('median_abs_pct', float('nan')):.1f} % "
                f"({v.get('median_abs_ms', float('nan')) * 1e3:.1f} us), max {v.get('max_abs_pct', float('nan')):.1f} %")


ROUNDS = 2  # each sampled spec is measured this many times, interleaved; the fastest round is kept


def _measure(spec: ArchSpec, cfg: LatencyConfig, seed: int) -> float:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_vae(spec)
    return measure_latency(model, cfg).median_ms


def _distinct_specs(space: SearchSpace, rng: random.Random, n: int, avoid: set[str]) -> list[ArchSpec]:
    out: list[ArchSpec] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        s = space.sample(rng)
        if s.id not in avoid:
            avoid.add(s.id)
            out.append(s)
    return out


def _extremes(space: SearchSpace, seen: set[str]) -> list[ArchSpec]:
    """The space's smallest and largest spec (one-family spaces), so the table spans the whole range."""
    from search_space.supernet import extreme_spec

    out = []
    for which in ("min", "max"):
        try:
            s = extreme_spec(space, which)
        except Exception:  # noqa: BLE001 - mixed-family spaces have no single extreme
            continue
        if s.id not in seen and space.contains(s):
            seen.add(s.id)
            out.append(s)
    return out


def fit_latency_table(space: SearchSpace, cfg: LatencyConfig, seed: int = 0, n_fit: int = 32,
                      n_check: int = 16) -> LatencyTable:
    """Measure ``n_fit`` + ``n_check`` distinct specs of ``space`` on ``cfg``'s backend (the space's
    smallest and largest first among the fitted ones), fit the table on the first, check it on the
    others. Both samples are drawn from ``seed``."""
    t0 = time.perf_counter()
    rng = random.Random(f"latency-table:{seed}")
    seen: set[str] = set()
    fit_specs = _extremes(space, seen) if n_fit >= 2 else []
    fit_specs += _distinct_specs(space, rng, n_fit - len(fit_specs), seen)
    check_specs = _distinct_specs(space, rng, n_check, seen)
    rounds = [{s.id: _measure(s, cfg, seed) for s in fit_specs + check_specs} for _ in range(ROUNDS)]
    measured = {k: float(np.min([r[k] for r in rounds])) for k in rounds[0]}  # the least disturbed round
    a = np.stack([features(s) for s in fit_specs])
    b = np.array([measured[s.id] for s in fit_specs])
    x = nnls(a / b[:, None], np.ones_like(b))  # relative errors: small specs count as much as large ones
    table = LatencyTable(cfg.backend, {k: float(v) for k, v in zip(FEATURES, x) if v != 0.0})
    if check_specs:
        pred = np.array([table.estimate_ms(s) for s in check_specs])
        true = np.array([measured[s.id] for s in check_specs])
        err = np.abs(pred - true)
        table.validation = {"n_fit": len(fit_specs), "n_check": len(check_specs), "spearman": spearman(pred, true),
                            "median_abs_ms": float(np.median(err)), "max_abs_ms": float(err.max()),
                            "median_abs_pct": float(np.median(err / true) * 100),
                            "max_abs_pct": float((err / true).max() * 100)}
    table.seconds = time.perf_counter() - t0
    if not all(math.isfinite(v) for v in table.costs.values()):
        raise RuntimeError("latency table: the fit gave non-finite costs")
    return table
