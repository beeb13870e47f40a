"""The contract every registered strategy passes (parametrised over the registry, like timm's tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from search_space import SearchSpace, VaenasInputError, packed_size_bytes
from strategies import OPTIONAL, REGISTRY, create_sampler, extra_available
from strategies.evolution import crowding_distance, nondominated_ranks
from strategies.synthetic import run_synthetic, synthetic_objectives

optuna.logging.set_verbosity(optuna.logging.ERROR)

# the synthetic benchmark's space: MLP, per-layer bits (where structure matters)
SPACE = SearchSpace.from_dict({
    "family": ["mlp"], "latent_dim": [4, 8, 16, 32, 64], "activation": ["relu"],
    "mlp": {"depth": [1, 2, 3], "width": [16, 32, 64, 128, 256, 512]},
    "weight_bits": [2, 3, 4, 5, 6, 8, 32], "bits_per_layer": True,
})
# a mixed space (both families, free decoder) for validity
MIXED = SearchSpace.from_dict({
    "family": ["mlp", "conv"], "latent_dim": [4, 16], "activation": ["relu", "silu"],
    "mlp": {"depth": [1, 2, 3], "width": [32, 128]},
    "conv": {"depth": [1, 2], "channels": [4, 8], "kernel": [3, 4], "stride": [1, 2], "fc_depth": [0, 1],
             "fc_width": [32]},
    "decoder": "free", "weight_bits": [2, 4, 8, 32], "bits_per_layer": True,
})
# the compression dimensions: conditional per-layer decisions (quantizer, rank, sparsity, pruning)
COMPRESSED = SearchSpace.from_dict({
    "family": ["mlp", "conv"], "latent_dim": [4, 16], "activation": ["relu"],
    "mlp": {"depth": [1, 2], "width": [32, 128]},
    "conv": {"depth": [1, 2], "channels": [4, 8], "kernel": [3], "stride": [2], "fc_depth": [0, 1], "fc_width": [32]},
    "weight_bits": [2, 4, 32], "quantizer": ["uniform", "kmeans"], "rank": [None, 0.5],
    "sparsity": [0, 0.5], "pruning": ["unstructured", "structured"],
})
AVAILABLE = sorted(n for n in REGISTRY if extra_available(n))  # NNI ones only with the [nni] extra
LO, HI = np.array([5.0, 4.0]), np.array([30.0, 7.0])  # fixed bounds of the synthetic objectives


def hv(study: optuna.Study) -> float:
    from optuna._hypervolume import compute_hypervolume

    pts = np.array([t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE])
    p = (pts - LO) / (HI - LO)
    p = p[(p < 1).all(1)]
    return float(compute_hypervolume(p, np.ones(2))) if len(p) else 0.0


def ids(study: optuna.Study) -> list[str]:
    return [t.user_attrs["spec_id"] for t in study.trials]


def test_registry_has_the_issue_strategies():
    assert {"random", "nsga2", "tpe", "gp", "evolution", "rl", "nni-evolution", "nni-rl"} <= set(REGISTRY)


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_optional_strategies_name_their_extra_when_missing(name):
    if extra_available(name):
        assert create_sampler(name, SPACE, 0).seed == 0
        return
    with pytest.raises(VaenasInputError, match=r"pip install -e '\.\[nni\]'"):
        create_sampler(name, SPACE, 0)


@pytest.mark.parametrize("space", [MIXED, COMPRESSED], ids=["mixed", "compressed"])
@pytest.mark.parametrize("name", AVAILABLE)
def test_proposals_are_valid_specs_even_when_trials_fail(name, space):
    study = run_synthetic(space, create_sampler(name, space, 0), 30, fail_every=3)
    assert len(study.trials) == 30
    assert sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials) == 10
    for t in study.trials:
        from search_space import ArchSpec

        spec = ArchSpec.from_json(t.user_attrs["spec"])
        assert space.contains(spec), space.contains(spec).reason


@pytest.mark.parametrize("name", AVAILABLE)
def test_seeded_runs_are_reproducible(name):
    a = run_synthetic(MIXED, create_sampler(name, MIXED, 3), 25)
    b = run_synthetic(MIXED, create_sampler(name, MIXED, 3), 25)
    c = run_synthetic(MIXED, create_sampler(name, MIXED, 4), 25)
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


@pytest.mark.parametrize("name", AVAILABLE)
def test_state_round_trips_through_json(name):
    k = 20
    s1 = create_sampler(name, SPACE, 5)
    study1 = run_synthetic(SPACE, s1, k)
    state = json.loads(json.dumps(s1.state_dict()))  # JSON-able: it lives in the study's storage
    cont1 = ids(run_synthetic(SPACE, s1, 6, study=study1))[k:]

    study2 = run_synthetic(SPACE, create_sampler(name, SPACE, 5), k)  # same history
    s2 = create_sampler(name, SPACE, 99)  # another seed: everything must come from the state
    s2.load_state_dict(state)
    study2.sampler = s2
    cont2 = ids(run_synthetic(SPACE, s2, 6, study=study2))[k:]
    assert cont1 == cont2
    assert s2.state_dict()["seed"] == 5


@pytest.mark.parametrize("name", AVAILABLE)
def test_every_strategy_runs_a_single_objective_study(name):
    """Budget mode: one objective (the constraints do the rest); every strategy proposes valid specs and learns."""
    study = run_synthetic(SPACE, create_sampler(name, SPACE, 0), 24, fail_every=5, objectives=1)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == 24 and len(done) == 20 and all(len(t.values) == 1 for t in done)
    assert study.best_value == min(t.values[0] for t in done)


def test_bad_options_and_unknown_names_are_clear_errors():
    with pytest.raises(VaenasInputError, match="unknown"):
        create_sampler("hillclimb", SPACE, 0)
    with pytest.raises(VaenasInputError, match="strategy.options: invalid for 'evolution'"):
        create_sampler("evolution", SPACE, 0, {"population_size": 1})
    with pytest.raises(VaenasInputError, match="strategy.options: invalid for 'rl'"):
        create_sampler("rl", SPACE, 0, {"temperature": 2})


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n not in ("nsga2", "tpe", "gp")])
def test_whole_spec_strategies_never_propose_statically_infeasible_specs(name):
    limit = 100_000  # about two thirds of random specs of this space are larger
    sampler = create_sampler(name, SPACE, 1, feasible=lambda s: packed_size_bytes(s) <= limit)
    study = run_synthetic(SPACE, sampler, 40)
    sizes = [10 ** t.values[1] for t in study.trials]
    assert max(sizes) <= limit + 1e-6
    assert len(set(ids(study))) == 40  # and never the same spec twice


def test_evolution_selection_helpers_match_definitions():
    pts = np.array([[1, 5], [2, 2], [5, 1], [3, 3], [4, 4], [6, 6.0]])
    assert nondominated_ranks(pts).tolist() == [0, 0, 0, 1, 2, 3]
    d = crowding_distance(pts[:3])
    assert np.isinf(d[0]) and np.isinf(d[2]) and d[1] == pytest.approx((5 - 1) / 4 + (5 - 1) / 4)


# 10 seeds: with 5, one learned strategy's margin flipped under another torch version (RL on torch
# 2.11: 0.713 vs random 0.716; single seeds swing by 0.04). Means over seeds 0-9 on torch 2.14.1:
# random 0.720, nsga2 0.731, tpe 0.748, evolution 0.736, rl 0.744, nni-evolution 0.729, nni-rl 0.729.
SEEDS = range(10)
BUDGET = 120


@pytest.fixture(scope="module")
def random_hv() -> float:
    return float(np.mean([hv(run_synthetic(SPACE, create_sampler("random", SPACE, s), BUDGET)) for s in SEEDS]))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "gp" else n  # gp: ~5 min
                                  for n in AVAILABLE if n != "random"])
def test_beats_random_search_on_the_synthetic_objectives(name, random_hv):
    """Mean hypervolume over 10 seeds at a fixed budget of 120 trials is above random search's."""
    mean = float(np.mean([hv(run_synthetic(SPACE, create_sampler(name, SPACE, s), BUDGET)) for s in SEEDS]))
    assert mean > random_hv, (name, mean, random_hv)


def test_synthetic_objectives_conflict():
    small = SPACE.define(lambda n, c: min(c) if n != "mlp.depth" else 1)
    big = SPACE.define(lambda n, c: max(c))
    qs, ss = synthetic_objectives(small)
    qb, sb = synthetic_objectives(big)
    assert qs > qb and ss < sb


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_nni_strategies_run_in_process_and_write_nothing_in_home(name, tmp_path):
    """NNI in library mode: no experiment, no node manager, no child process, nothing under ~.

    (Without the [nni] extra the strategy cannot run here; the test above checks its error.)"""
    if not extra_available(name):
        with pytest.raises(VaenasInputError):
            create_sampler(name, SPACE, 0)
        return
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    code = ("import os, psutil; from tests.test_strategies import SPACE; from strategies import create_sampler; "
            "from strategies.synthetic import run_synthetic; "
            f"run_synthetic(SPACE, create_sampler({name!r}, SPACE, 0), 12); "
            "assert not psutil.Process().children(recursive=True), 'child processes'; "
            "assert not [c for c in psutil.Process().net_connections() if c.status == 'LISTEN'], 'listening port'")
    env = {**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(home.rglob("*")) == []


def _fail(study, spec, reason):
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs={"spec": spec.to_json(), "spec_id": spec.id,
                                                          "fail_reason": reason}))


def test_a_trial_whose_worker_died_teaches_no_strategy():
    """The worker-died bug: a trial failed because its worker was killed said nothing about its spec, but
    evolution, RL and NNI learned from it (RL gave it reward -1). Every not-the-spec's-fault reason is
    defined once (strategies.trial_record) and no strategy's history holds such a trial."""
    from strategies.base import domination_reward
    from strategies.trial_record import INTERRUPTED, NOT_THE_SPECS_FAULT, SURPLUS, WORKER_DIED, observations
    from studies.liveness import WORKER_DIED as LIVENESS_REASON

    assert LIVENESS_REASON == WORKER_DIED and WORKER_DIED in NOT_THE_SPECS_FAULT
    space = SearchSpace.from_dict({"family": ["mlp"], "mlp": {"depth": [1], "width": [16, 32]},
                                   "latent_dim": [2, 4], "weight_bits": [4, 32]})
    import random

    specs = [space.sample(random.Random(i)) for i in range(4)]
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[100.0, 1000.0], user_attrs={
        "spec": specs[0].to_json(), "spec_id": specs[0].id}))
    for spec, reason in zip(specs[1:], (WORKER_DIED, INTERRUPTED, SURPLUS)):
        _fail(study, spec, reason)
    _fail(study, specs[0], "diverged: −ELBO is nan")  # the spec's own failure: a lesson (reward -1)
    history = observations(study)
    assert [o.number for o in history] == [0, 4]
    assert domination_reward(history[1], history) == -1.0
    for name in ("random", "evolution", "rl"):  # what each whole-spec strategy is shown before a proposal
        sampler = create_sampler(name, space, seed=0)
        shown: list = []
        real = sampler.observe
        sampler.observe = lambda h, real=real: (shown.append([o.number for o in h]), real(h))[1]
        sampler.before_trial(study, study.ask())
        assert shown == [[0, 4]], name
