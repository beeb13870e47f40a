"""How a trial's attributes are stored - the one owner of that layout (every layer may import it).

Standalone trials store each attribute as its own Optuna user attribute (``spec``, ``spec_id``,
``neg_elbo``, every cost, ...), written as the trial runs. A supernet estimate, scored in
milliseconds, is written with ONE storage write (:mod:`studies.estimates`): its attributes are
packed into the one JSON attribute ``record`` and its parameters are left out (they are the
spec's decisions, rebuilt from ``spec`` when the study is read back for a strategy). Every reader
goes through :func:`trial_attrs`, which gives both layouts as one flat dict.
"""

from __future__ import annotations

import copy
from typing import Any

RECORD = "record"  # the one user attribute of a packed trial: {attribute: value}


def trial_attrs(t) -> dict[str, Any]:
    """A trial's user attributes, a packed ``record`` unpacked (read-only view)."""
    ua = t.user_attrs
    rec = ua.get(RECORD)
    if rec is None:
        return ua
    return {**rec, **{k: v for k, v in ua.items() if k != RECORD}}


def packed(t):
    """A copy of FrozenTrial ``t`` stored with one attribute (``record``) and no parameters."""
    out = copy.copy(t)
    out.user_attrs = {RECORD: dict(trial_attrs(t))}
    out.params, out.distributions = {}, {}
    return out


def unpacked(t, space):
    """A copy of FrozenTrial ``t`` with its attributes unpacked and, when it had none stored, its
    parameters rebuilt from its spec (``space.to_params``) - as it was before :func:`packed`."""
    if RECORD not in t.user_attrs:
        return t
    from optuna.distributions import CategoricalDistribution

    from .spec import ArchSpec

    out = copy.copy(t)
    out.user_attrs = dict(trial_attrs(t))
    js = out.user_attrs.get("spec")
    if js is not None and not t.params:
        params = space.to_params(ArchSpec.from_json(js))
        dims = space.dimensions()
        out.distributions = {k: CategoricalDistribution(list(dims[k])) for k in params if k in dims}
        out.params = {k: params[k] for k in out.distributions}
    return out
