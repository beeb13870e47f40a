"""Optional NNI 3.0 strategies: ``nni-evolution`` and ``nni-rl`` (``pip install -e '.[nni]'``).

Both run NNI's algorithms *in process*, as libraries: no NNI experiment, no node manager, no
port, nothing written under ``~``.

* ``nni-evolution``: NNI's HPO ``EvolutionTuner`` (tournament of two, mutate the winner) over
  the space's named decisions (as choice indices).
* ``nni-rl``: the trajectory generator of NNI's NAS ``PolicyBasedRL`` with its default tianshou
  PPO policy; the policy is updated every ``samples_per_update`` finished trials
  (``update_times`` x ``policy.update(batch_size=32, repeat=5)``), as ``PolicyBasedRL`` does.

NNI's algorithms are single-objective: the reward of a trial is our Pareto-dominance reward
(minus the fraction of earlier feasible trials that dominate it; failed or infeasible: -1), as in
:mod:`strategies.rl`. Proposals a strategy must not make (a spec already in the study, or one
over a static limit) are fed back at once with reward -1 and another is drawn.

State: NNI objects do not serialise, so the strategy is *replayable* instead - every draw runs
with the global RNGs (``random``, NumPy, torch) seeded from (seed, trial number, attempt) and
restored afterwards, and the study's finished trials are fed in trial-number order; a fresh
instance given ``state_dict()`` rebuilds the same NNI state by replaying the study's history.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
from typing import Any

import numpy as np
import torch

from search_space import ArchSpec, SearchSpace, VaenasInputError

from .base import MAX_TRIES, Observation, SpecSampler, domination_reward, observations
from strategies.trial_record import SPEC_ID, trial_attrs

EXTRA = "pip install -e '.[nni]'"
NAMES = ("nni-evolution", "nni-rl")


def nni_available() -> bool:
    try:
        import nni  # noqa: F401
    except ImportError:
        return False
    return True


def _require(name: str) -> None:
    if not nni_available():
        raise VaenasInputError(f"strategy: {name!r} needs NNI 3.0, which is not installed; install the extra with "
                               f"`{EXTRA}` or choose another strategy")
    for lg in ("nni", "tianshou"):
        logging.getLogger(lg).setLevel(logging.WARNING)


@contextlib.contextmanager
def _seeded(*key: Any):
    """Run NNI code with the global RNGs seeded from ``key``; restore them afterwards."""
    s = int(hashlib.sha256(repr(key).encode()).hexdigest()[:8], 16)
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    try:
        yield s
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])


class _NNIStrategy(SpecSampler):
    name = "nni"

    def __init__(self, space: SearchSpace, seed: int, **kw):
        _require(self.name)
        super().__init__(space, seed, feasible=kw.pop("feasible", None))
        self.dims = space.dimensions()
        self._fresh()

    # --- engine: subclasses
    def _make(self) -> None: ...
    def _generate(self, number: int, attempt: int) -> tuple[ArchSpec, Any]: ...
    def _feed(self, handle: Any, reward: float) -> None: ...
    def _discard(self, handle: Any) -> None: ...

    def _before_propose(self, history: list[Observation]) -> None:
        """Hook run before every proposal, live or replayed, with the trials finished before it."""

    def _fresh(self) -> None:
        with _seeded("nni-init", self.seed):
            self._make()
        self._fed: list[int] = []
        self._handles: dict[int, tuple[Any, str]] = {}

    def _decode(self, sample: dict[str, Any]) -> ArchSpec:
        def idx(v: Any) -> int:  # NNI's internal configs hold {"_index": i, "_value": v}
            return int(v["_value"]) if isinstance(v, dict) else int(v)

        return self.space.define(lambda n, c: self.dims[n][idx(sample[n])])

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "fed": list(self._fed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self._fresh()  # the NNI state is rebuilt from the study's history at the next proposal

    def _propose_for(self, number: int, seen: set[str]) -> tuple[ArchSpec, Any]:
        for attempt in range(MAX_TRIES):
            spec, handle = self._generate(number, attempt)
            if self.ok(spec) and spec.id not in seen:
                return spec, handle
            self._feed(handle, -1.0)  # a proposal it must not make: teach it so
        raise RuntimeError(f"{self.name}: no novel feasible spec in {MAX_TRIES} draws")

    def _sync(self, study, history: list[Observation]) -> None:
        ids_by_number = {t.number: trial_attrs(t).get(SPEC_ID) for t in study.get_trials(deepcopy=False)}
        for o in history:
            if o.number in self._fed:
                continue
            if o.number not in self._handles:  # replay: redo the proposal as it was made
                seen = {i for n, i in ids_by_number.items() if n < o.number and i}
                self._before_propose([h for h in history if h.number < o.number])
                spec, handle = self._propose_for(o.number, seen)
                self._handles[o.number] = (handle, spec.id)
            handle, spec_id = self._handles.pop(o.number)
            if spec_id == o.spec.id:
                self._feed(handle, domination_reward(o, history))
            else:  # not what it proposed (an enqueued retry, another worker's trial): no lesson
                self._discard(handle)
            self._fed.append(o.number)

    def before_trial(self, study, trial) -> None:
        history = observations(study)
        self._sync(study, history)
        seen = {trial_attrs(t)[SPEC_ID] for t in study.get_trials(deepcopy=False) if SPEC_ID in trial_attrs(t)}
        self._before_propose(history)
        spec, handle = self._propose_for(trial.number, seen)
        self._handles[trial.number] = (handle, spec.id)
        self._proposals[trial.number] = self.space.to_params(spec)


class NNIEvolution(_NNIStrategy):
    name = "nni-evolution"

    def __init__(self, space: SearchSpace, seed: int, *, population_size: int = 16, **kw):
        if population_size < 2:
            raise TypeError("population_size must be >= 2")
        self.population_size = population_size
        super().__init__(space, seed, **kw)

    def _make(self) -> None:
        from nni.algorithms.hpo.evolution_tuner import EvolutionTuner

        self.tuner = EvolutionTuner(optimize_mode="maximize", population_size=self.population_size)
        self.tuner.update_search_space({n: {"_type": "choice", "_value": list(range(len(c)))}
                                        for n, c in self.dims.items()})
        # NNI seeds its RandomState from the OS there: redraw the first population from ours
        self.tuner.random_state = np.random.RandomState(np.random.randint(2**31))
        self.tuner.population = []
        for _ in range(self.population_size):
            self.tuner._random_generate_individual()

    def _generate(self, number: int, attempt: int):
        pid = number * MAX_TRIES + attempt
        with _seeded("nni-gen", self.seed, number, attempt) as s:
            self.tuner.random_state.seed(s)  # the tuner's own RandomState (OS-seeded by NNI)
            params = self.tuner.generate_parameters(pid)
        return self._decode(params), (pid, params)

    def _feed(self, handle, reward: float) -> None:
        pid, params = handle
        self.tuner.receive_trial_result(pid, params, reward)
        self.tuner.trial_end(pid, True)

    def _before_propose(self, history: list[Observation]) -> None:
        # NNI keeps one scalar fitness per individual, but Pareto dominance changes as the front
        # grows: re-score every evaluated individual against the history so far
        latest = {o.spec.id: o for o in history}
        for ind in self.tuner.population:
            if ind.result is None:
                continue
            o = latest.get(self._decode(ind.config).id)
            if o is not None:
                ind.result = domination_reward(Observation(10**9, o.spec, o.values, o.feasible), history)

    def _discard(self, handle) -> None:
        with _seeded("nni-discard", self.seed, handle[0]) as s:
            self.tuner.random_state.seed(s)
            self.tuner.trial_end(handle[0], False)


class NNIPolicyRL(_NNIStrategy):
    name = "nni-rl"

    def __init__(self, space: SearchSpace, seed: int, *, samples_per_update: int = 5, update_times: int = 5, **kw):
        if samples_per_update < 1 or update_times < 1:
            raise TypeError("samples_per_update and update_times must be >= 1")
        self.samples_per_update = samples_per_update
        self.update_times = update_times
        super().__init__(space, seed, **kw)

    def _make(self) -> None:
        from nni.mutable import Categorical, MutableDict
        from nni.nas.strategy._rl_impl import TuningTrajectoryGenerator
        from tianshou.data import ReplayBuffer

        self._Gen = TuningTrajectoryGenerator
        self.mutable = MutableDict({n: Categorical(list(range(len(c))), label=n) for n, c in self.dims.items()})
        gen = TuningTrajectoryGenerator(self.mutable)
        self.policy = gen.policy
        self.policy.train()
        self.buffer = ReplayBuffer(gen.expected_trajectory_length * self.samples_per_update)
        self.n_trajectories = 0

    def _generate(self, number: int, attempt: int):
        with _seeded("nni-gen", self.seed, number, attempt):
            gen = self._Gen(self.mutable, self.policy)
            sample = gen.next_sample()
        return self._decode(sample), gen

    def _feed(self, gen, reward: float) -> None:
        self.buffer.update(gen.send_reward(reward))
        self.n_trajectories += 1
        if self.n_trajectories % self.samples_per_update == 0:
            with _seeded("nni-update", self.seed, self.n_trajectories):
                for _ in range(self.update_times):
                    self.policy.update(0, self.buffer, batch_size=32, repeat=5)

    def _discard(self, gen) -> None:
        pass
