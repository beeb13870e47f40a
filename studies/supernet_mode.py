"""Supernet mode and DARTS in a study: the supernet evaluator (trained once, kept as ``supernet.pt``),
the re-measurement of the estimated front by standalone training, and the DARTS lambda sweep
enqueued as ordinary trials (see :mod:`studies.run` for how a study uses them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from evaluator import Evaluator, Objectives
from search_space import ArchSpec
from strategies.pareto import hypervolume, non_dominated_mask
from strategies.trial_record import FAIL_REASON, FEASIBLE, PHASE, SEED, SPEC, SPEC_ID, WORKER, trial_attrs

from .config import StudyConfig
from .files import data_meta, save_checkpoint, save_tensors
from .trial import WORKER_ID, Outcome, add
from .trials import REMEASURE, constraint_values, is_estimate, is_feasible


class Evaluators:
    """The standalone evaluator, and the supernet one, trained (or loaded) only when first needed."""

    def __init__(self, cfg: StudyConfig, data, sdir: Path, study: optuna.Study, progress: bool):
        self.cfg, self.data, self.sdir, self.study, self.progress = cfg, data, sdir, study, progress
        self.standalone = Evaluator(data, cfg.train, cfg.latency)
        self._supernet = None

    def get(self):
        if self.cfg.supernet is None:
            return self.standalone
        if self._supernet is None:
            ev = self._supernet = supernet_evaluator(self.cfg, self.data, self.sdir, self.progress)
            attrs = self.study.user_attrs
            if ev.calibration is not None and "supernet_calibration" not in attrs:
                self.study.set_user_attr("supernet_calibration", ev.calibration.to_dict())
            if ev.train_seconds and "supernet_train_seconds" not in attrs:
                self.study.set_user_attr("supernet_train_seconds", ev.train_seconds)
            if self.cfg.supernet.latency_table:
                ev.latency_table = self._latency_table()
        return self._supernet

    def _latency_table(self):
        """The study's latency table: fitted once (stored in the study), reused on ``--resume``."""
        from evaluator.latency_table import LatencyTable, fit_latency_table

        stored = self.study.user_attrs.get("latency_table")
        if stored is not None:
            return LatencyTable.from_dict(stored)
        if self.progress:
            print(f"fitting the latency table: measuring sampled specs on {self.cfg.latency.backend} ...", flush=True)
        table = fit_latency_table(self.cfg.space, self.cfg.latency, self.cfg.seed)
        self.study.set_user_attr("latency_table", table.to_dict())
        if self.progress:
            print(table.describe(), flush=True)
        return table


def darts_enqueue(study: optuna.Study, cfg: StudyConfig, data, progress: bool = False) -> list[dict]:
    """Run the config's DARTS lambda sweep once; enqueue each distinct derived spec as a normal trial.

    The sweep (lambda, derived spec, expected size) is stored in the study (``darts_sweep``) so a
    resumed study neither re-runs nor re-enqueues it. The enqueued trials are trained and scored
    by the study's evaluator like every other trial, so fronts are comparable across strategies.
    """
    from evaluator import resolve_device
    from evaluator.darts import DartsConfig, lambda_sweep

    d = cfg.darts
    dc = DartsConfig(**{k: d[k] for k in ("steps", "arch_lr", "warmup_steps", "batch_size") if k in d},
                     lr=cfg.train.lr, seed=cfg.seed, device=str(resolve_device(cfg.train.device)))
    t0 = time.perf_counter()
    if progress:
        print(f"DARTS: lambda sweep over {d['lambdas']} ({dc.steps} steps each) ...", flush=True)
    res = lambda_sweep(cfg.space, data.train, data.val, d["lambdas"], dc, depth=d.get("depth"))
    sweep, seen = [], set()
    for lam, (spec, info) in zip(d["lambdas"], res):
        sweep.append({"lambda": lam, "spec_id": spec.id, "spec": spec.to_json(),
                      "expected_size_bytes": info["expected_size_bytes"],
                      "expected_cost_ratio": info["expected_cost_ratio"], "duplicate": spec.id in seen})
        if spec.id not in seen:
            seen.add(spec.id)
            study.enqueue_trial(cfg.space.to_params(spec), user_attrs={"proposed_by": "darts", "darts_lambda": lam},
                                skip_if_exists=True)
    study.set_user_attr("darts_sweep", sweep)
    study.set_user_attr("darts_seconds", time.perf_counter() - t0)
    return sweep


def _load_supernet(cfg: StudyConfig, path: Path, key_json: str):
    """``(net, calibration, checkpoint)`` from ``supernet.pt`` when it was trained with the same settings
    (``key_json``); ``(None, None, {})`` otherwise."""
    from evaluator import resolve_device
    from evaluator.supernet import DepthCalibration
    from search_space.supernet import build_supernet

    if not path.exists():
        return None, None, {}
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("format") != "vaenas.supernet" or ck.get("key") != key_json:
        return None, None, {}
    net = build_supernet(cfg.space)
    net.load_state_dict(ck["state_dict"])
    net.to(resolve_device(cfg.train.device))
    calibration = None
    if ck.get("calibration") is not None:
        calibration = DepthCalibration.from_dict(json.loads(ck["calibration"]))
    return net, calibration, ck


def supernet_evaluator(cfg: StudyConfig, data, sdir: Path, progress: bool = False):
    """Train the study's supernet (or load ``sdir/supernet.pt`` trained with the same settings)."""
    from evaluator import TrainConfig
    from evaluator.supernet import SupernetEvaluator, calibrate_depths, train_supernet

    sn = cfg.supernet
    tcfg = TrainConfig(**{**cfg.train.to_dict(), "epochs": sn.epochs, "max_steps": None, "seed": cfg.seed})
    key = {"space": cfg.space.to_dict(), "dataset": cfg.dataset.to_config(), "n_train": cfg.n_train, "train": tcfg.to_dict(),
           "sandwich": {"n_random": sn.n_random, "kd_weight": sn.kd_weight}}
    key_json = json.dumps(key, sort_keys=True, default=str)
    path = sdir / "supernet.pt"
    net, calibration, ck = _load_supernet(cfg, path, key_json)
    dirty, train_seconds = False, 0.0
    if net is None:
        if progress:
            print(f"training the supernet ({sn.epochs:g} epochs, sandwich rule) ...", flush=True)
        net, res = train_supernet(cfg.space, data, tcfg, sn.sandwich(cfg.seed), progress=progress)
        train_seconds = res.seconds
        ck = {"format": "vaenas.supernet", "version": 1, "key": key_json,
              "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
        dirty = True
    net.eval()
    evaluator = SupernetEvaluator(net, data, cfg.train, cfg.latency, sn)
    if sn.calibrate and calibration is None:
        if progress:
            print("calibrating the supernet per depth on standalone-trained anchor specs ...", flush=True)
        calibration = calibrate_depths(net, data, cfg.train, evaluator.val, cfg.seed,
                                       estimate=lambda spec: evaluator.evaluate(spec, cfg.seed).neg_elbo)
        ck["calibration"] = json.dumps(calibration.to_dict())
        dirty = True
    if dirty:
        save_tensors(path, ck)
    evaluator.calibration = calibration if sn.calibrate else None
    evaluator.train_seconds = train_seconds  # 0 when loaded from supernet.pt
    return evaluator


def greedy_hv_subset(points, bounds, k: int) -> list[int]:
    """Indices of ``k`` points chosen greedily, each adding the most hypervolume (normalised by ``bounds``)
    to those already chosen; ties (no gain left) go to the earliest point. The greedy choice is within
    a factor 1 - 1/e of the best subset's hypervolume (hypervolume is submodular)."""
    chosen: list[int] = []
    base = 0.0
    rest = list(range(len(points)))
    while rest and len(chosen) < k:
        gains = [hypervolume([points[j] for j in chosen] + [points[i]], bounds) - base for i in rest]
        best = int(np.argmax(gains))
        chosen.append(rest.pop(best))
        base += gains[best]
    return sorted(chosen)


def remeasure_front(study: optuna.Study, cfg: StudyConfig, evaluator: Evaluator, sdir: Path,
                    progress: bool = False) -> int:
    """Train up to ``supernet.remeasure`` specs of the estimated front standalone; add them as trials.

    With more front specs than that, the ones whose estimated points cover the most hypervolume
    (greedy, :func:`greedy_hv_subset`) are re-measured.

    Specs already re-measured in the study are skipped (so ``--resume`` finishes an interrupted
    re-measurement). Returns how many were measured in this call.
    """
    todo = specs_to_remeasure(study, cfg)
    for i, t in enumerate(todo):
        spec = ArchSpec.from_json(trial_attrs(t)["spec"])
        if progress:
            print(f"re-measuring front spec {i + 1}/{len(todo)} ({spec.id}, estimated −ELBO "
                  f"{trial_attrs(t)['neg_elbo']:.2f}) by standalone training ...", flush=True)
        result, model = evaluator.evaluate_with_model(spec, cfg.seed)
        attrs = {SPEC: spec.to_json(), SPEC_ID: spec.id, SEED: cfg.seed, PHASE: REMEASURE,
                 "remeasure_of": t.number, "estimate_neg_elbo": trial_attrs(t)["neg_elbo"], WORKER: WORKER_ID,
                 "estimate_neg_elbo_uncalibrated": trial_attrs(t).get("neg_elbo_uncalibrated")}
        if _add_remeasured(study, cfg, spec, result, attrs):
            number = max(x.number for x in study.get_trials(deepcopy=False)
                         if trial_attrs(x).get("remeasure_of") == t.number)
            save_checkpoint(sdir / "trials" / str(number) / "model.pt", model, spec, data_meta(evaluator.data))
    return len(todo)


def specs_to_remeasure(study: optuna.Study, cfg: StudyConfig) -> list:
    """The estimated front's trials to re-measure, one per spec (at most ``supernet.remeasure``: those
    whose points cover the most hypervolume), less the specs already re-measured."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    est = [t for t in trials if is_estimate(t) and is_feasible(t) and trial_attrs(t).get(PHASE) != REMEASURE]
    if not est:
        return []
    mask = non_dominated_mask([t.values for t in est])
    front = sorted((t for t, m in zip(est, mask) if m), key=lambda t: (t.values[0], t.number))
    seen_ids, picked = set(), []
    for t in front:  # one per spec
        if trial_attrs(t)[SPEC_ID] not in seen_ids:
            seen_ids.add(trial_attrs(t)[SPEC_ID])
            picked.append(t)
    n = cfg.supernet.remeasure
    if len(picked) > n:  # the n specs whose estimated points cover the most hypervolume (greedy)
        picked = [picked[i] for i in greedy_hv_subset([t.values for t in picked], cfg.bounds, n)]
    done = {trial_attrs(t).get(SPEC_ID) for t in trials if trial_attrs(t).get(PHASE) == REMEASURE}
    return [t for t in picked if trial_attrs(t)[SPEC_ID] not in done]


def _add_remeasured(study: optuna.Study, cfg: StudyConfig, spec: ArchSpec, result, attrs: dict) -> bool:
    """Add a re-measurement as a finished trial (FAIL when it failed); True when it completed."""
    from optuna.distributions import CategoricalDistribution

    if not isinstance(result, Objectives):
        add(study, Outcome(optuna.trial.TrialState.FAIL, attrs={**attrs, FAIL_REASON: result.reason}))
        return False
    attrs.update(result.to_dict())
    cons = dict(zip(cfg.constraints, constraint_values(result.to_dict(), cfg.constraints))) if cfg.constraints else {}
    if cfg.constraints:
        attrs[FEASIBLE] = all(c <= 0 for c in cons.values())
    params = {k: v for k, v in cfg.space.to_params(spec).items()}
    dists = {k: CategoricalDistribution(list(c)) for k, c in cfg.space.dimensions().items() if k in params}
    add(study, Outcome(optuna.trial.TrialState.COMPLETE, list(result.values(cfg.objectives)), attrs, cons),
        params, dists)
    return True

