"""REINFORCE controller (Zoph & Le 2017 style) in plain torch, multi-objective by random Chebyshev rewards.

Policy: an LSTM cell steps through the space's define-by-run program; at each decision it gets
the embedding of the previous choice plus an embedding of *which* decision is asked, and a
per-decision linear head gives logits over that decision's choices (so conditional decisions -
widths of layers that exist only at some depths - are handled naturally). Heads start at zero:
the first policy is uniform.

Reward of an episode (= one finished trial), multi-objective and scale-free (nats and bytes
weigh alike), one of:

* ``domination`` (default): minus the fraction of the earlier feasible trials that dominate it
  (0 for a point on the current front) - Pareto dominance, no weights, no bounds needed;
* ``chebyshev``: ``-max_j w_j * q_j`` where ``q_j`` is the empirical quantile of objective ``j``
  among the feasible finished trials so far and ``w`` a Dirichlet(1) vector drawn per episode
  (random Chebyshev scalarisation).

A failed or infeasible trial gets -1. Defaults (lr 0.1, entropy 0.05, domination) were picked on
the synthetic benchmark (``strategies.synthetic``; the figures are in ``benchmarks/README.md``).
Update per episode: ``-(r - b) log pi(a) - beta H(pi)`` with Adam, ``b`` a moving average.

State (JSON): policy and optimiser tensors, baseline, the trial numbers already learned from.
Every worker learns from every finished trial of the study in trial-number order, so workers
sharing one storage converge to the same policy.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from search_space import ArchSpec, SearchSpace

from .base import Observation, SpecSampler, domination_reward, earlier_feasible_points, trial_rng


class Controller(nn.Module):
    def __init__(self, dims: dict[str, tuple], hidden: int = 32):
        super().__init__()
        self.names = list(dims)
        self.dims = {n: tuple(c) for n, c in dims.items()}
        self.index = {n: i for i, n in enumerate(self.names)}
        self.offset, total = {}, 1  # choice embedding 0 = start token
        for n in self.names:
            self.offset[n] = total
            total += len(self.dims[n])
        self.hidden = hidden
        self.decision_emb = nn.Embedding(len(self.names), hidden)
        self.choice_emb = nn.Embedding(total, hidden)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, len(self.dims[n])) for n in self.names)
        for h in self.heads:
            nn.init.zeros_(h.weight)
            nn.init.zeros_(h.bias)

    def episode(self, space: SearchSpace, pick) -> tuple[ArchSpec, torch.Tensor, torch.Tensor]:
        """Run the program; ``pick(name, probs) -> index``. Returns (spec, sum log-prob, sum entropy)."""
        state = None
        prev = torch.zeros(1, dtype=torch.long)
        logp = torch.zeros(())
        ent = torch.zeros(())

        def choose(name: str, choices: tuple) -> Any:
            nonlocal state, prev, logp, ent
            if tuple(choices) != self.dims[name]:
                raise RuntimeError(f"decision {name!r} offers {choices}, controller expects {self.dims[name]}")
            x = self.choice_emb(prev) + self.decision_emb(torch.tensor([self.index[name]]))
            state = self.lstm(x, state)
            logits = self.heads[self.index[name]](state[0])[0]
            lp = torch.log_softmax(logits, -1)
            i = pick(name, lp.detach().exp())
            logp = logp + lp[i]
            ent = ent - (lp.exp() * lp).sum()
            prev = torch.tensor([self.offset[name] + i])
            return choices[i]

        spec = space.define(choose)
        return spec, logp, ent


def _to_json(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return {"__tensor__": x.detach().cpu().reshape(-1).tolist(), "shape": list(x.shape), "dtype": str(x.dtype)}
    if isinstance(x, dict):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_json(v) for v in x]
    return x


def _from_json(x: Any) -> Any:
    if isinstance(x, dict) and "__tensor__" in x:
        dtype = getattr(torch, x["dtype"].removeprefix("torch."))
        return torch.tensor(x["__tensor__"], dtype=dtype).reshape(x["shape"])
    if isinstance(x, dict):
        return {k: _from_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json(v) for v in x]
    return x


class ReinforceController(SpecSampler):
    def __init__(self, space: SearchSpace, seed: int, *, hidden: int = 32, lr: float = 0.1,
                 entropy_weight: float = 0.05, baseline_decay: float = 0.9, reward: str = "domination", **kw):
        super().__init__(space, seed, **kw)
        if not lr > 0 or not 0 <= baseline_decay < 1 or entropy_weight < 0 or hidden < 1:
            raise TypeError("need lr > 0, 0 <= baseline_decay < 1, entropy_weight >= 0, hidden >= 1")
        if reward not in ("chebyshev", "domination"):
            raise TypeError(f"reward must be 'chebyshev' or 'domination', got {reward!r}")
        self.reward_kind = reward
        self.entropy_weight = entropy_weight
        self.baseline_decay = baseline_decay
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.policy = Controller(space.dimensions(), hidden)
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.baseline: float | None = None
        self.consumed: set[int] = set()

    # -- state
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "baseline": self.baseline, "consumed": sorted(self.consumed),
                "policy": _to_json(self.policy.state_dict()), "opt": _to_json(self.opt.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.baseline = state["baseline"]
        self.consumed = set(state["consumed"])
        self.policy.load_state_dict(_from_json(state["policy"]))
        opt = _from_json(state["opt"])
        opt["state"] = {int(k): v for k, v in opt["state"].items()}
        self.opt.load_state_dict(opt)

    # -- learning
    def weights(self, number: int, m: int) -> np.ndarray:
        r = random.Random(f"vaenas-rl-w:{self.seed}:{number}")
        g = np.array([r.expovariate(1.0) for _ in range(m)])
        return g / g.sum()

    def reward(self, o: Observation, history: list[Observation]) -> float:
        if self.reward_kind == "domination" or o.values is None or not o.feasible:
            return domination_reward(o, history)
        pts, v = earlier_feasible_points(o, history), np.asarray(o.values)
        q = ((pts < v).sum(0) + 0.5 * ((pts == v).sum(0) - 1)) / max(1, len(pts) - 1)
        return -float(np.max(self.weights(o.number, len(v)) * q))

    def observe(self, history: list[Observation]) -> None:
        for o in history:
            if o.number in self.consumed:
                continue
            self.consumed.add(o.number)
            params = self.space.to_params(o.spec)
            r = self.reward(o, history)
            self.baseline = r if self.baseline is None else (
                self.baseline_decay * self.baseline + (1 - self.baseline_decay) * r)
            adv = r - self.baseline

            def teacher(name: str, probs: torch.Tensor, params=params) -> int:
                return self.policy.dims[name].index(params[name])

            _, logp, ent = self.policy.episode(self.space, teacher)
            loss = -adv * logp - self.entropy_weight * ent
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def propose(self, history: list[Observation], rng: random.Random) -> ArchSpec | None:
        def sample(name: str, probs: torch.Tensor) -> int:
            u = rng.random()
            cdf = torch.cumsum(probs.double(), 0)
            return int(min(int((cdf < u).sum()), len(probs) - 1))

        with torch.no_grad():
            spec, _, _ = self.policy.episode(self.space, sample)
        return spec


__all__ = ["Controller", "ReinforceController", "trial_rng"]
