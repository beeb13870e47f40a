"""A cheap closed-form benchmark for strategies: two objectives of a spec, no training.

``quality``: a stand-in for −ELBO - falls with capacity (log of the narrowest hidden width - the
bottleneck - and of the latent size, with diminishing returns) and rises with the worst layer's
quantisation noise (``4**-bits``, weighted up by the layer's share of the weights).
``size``: log10 of the exact packed size in bytes. The two conflict, the front is curved, and
uniform random sampling of per-layer bits wastes most draws - the regime where search matters.
Used by the strategy contract test; lives here so anyone can try a new strategy on it.
"""

from __future__ import annotations

import math

import optuna

from search_space import ArchSpec, SearchSpace, packed_layout, packed_size_bytes

from .trial_record import FAIL_REASON, SPEC, SPEC_ID


def synthetic_objectives(spec: ArchSpec) -> tuple[float, float]:
    layers = packed_layout(spec)
    total = sum(lay.n_weights for lay in layers)
    noise = max(4.0 ** (-lay.bits) * (0.5 + lay.n_weights / total) for lay in layers)
    widths = list(spec.enc_hidden) or [1]
    capacity = math.log2(1 + min(widths)) + 0.5 * math.log2(spec.latent_dim) + 0.3 * len(widths)
    quality = 100.0 / (1.0 + capacity) + 200.0 * noise
    return quality, math.log10(packed_size_bytes(spec))


def run_synthetic(space: SearchSpace, sampler: optuna.samplers.BaseSampler, trials: int,
                  fail_every: int = 0, study: optuna.Study | None = None, objectives: int = 2) -> optuna.Study:
    """Ask/tell ``trials`` trials on the synthetic objectives (every ``fail_every``-th trial fails);
    ``objectives=1``: the quality alone (a single-objective, budget-mode study)."""
    from . import suggest_spec

    study = study or optuna.create_study(directions=["minimize"] * objectives, sampler=sampler)
    for _ in range(trials):
        t = study.ask()
        spec = suggest_spec(space, t)
        t.set_user_attr(SPEC, spec.to_json())
        t.set_user_attr(SPEC_ID, spec.id)
        if fail_every and (t.number + 1) % fail_every == 0:
            t.set_user_attr(FAIL_REASON, "synthetic failure")
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(t, list(synthetic_objectives(spec))[:objectives])
    return study
