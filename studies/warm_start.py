"""``warm_start: STUDY``: another study's Pareto front (or best feasible spec) is evaluated first in this one.

The specs are read from the other study (read-only), checked against this study's data (the same input
shape and likelihood, else one line) and space (a spec this space cannot make is skipped, and said), and
join ``enqueue:`` - evaluated once per study, before the strategy proposes anything. What a trial
measures does not change, so the fingerprint does not include the warm start (as for the strategy).
"""

from __future__ import annotations

from search_space import ArchSpec, VaenasInputError
from strategies.trial_record import trial_attrs


def front_specs(name: str, runs_dir, storage: str | None) -> list[ArchSpec]:
    """The specs of study ``name``'s reported front, best first."""
    from .report import load_view

    view = load_view(name, runs_dir, storage)
    trials = {t.number: t for t in view.study.get_trials(deepcopy=False)}
    return [ArchSpec.from_json(trial_attrs(trials[int(n)])["spec"]) for n in view.front["trial"]]


def warm_start_specs(cfg, data, runs_dir, progress: bool = True) -> list[ArchSpec]:
    name, storage = cfg.warm_start
    specs = front_specs(name, runs_dir, storage)
    for s in specs:
        if tuple(s.input_shape) != tuple(data.input_shape) or s.likelihood != data.likelihood:
            raise VaenasInputError(
                f"warm_start: study {name!r} searched inputs of shape {list(s.input_shape)} under {s.likelihood}, "
                f"this study's data are {list(data.input_shape)} under {data.likelihood}; warm-start from a study "
                "of the same input shape and likelihood")
    kept = [s for s in specs if cfg.space.contains(s)]
    if progress:
        skipped = len(specs) - len(kept)
        print(f"warm start: {len(kept)} front specs of study {name!r} run first"
              + (f" ({skipped} not in this space, skipped)" if skipped else ""), flush=True)
    return kept
