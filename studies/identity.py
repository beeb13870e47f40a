"""A study's identity: which storage holds it, what it records about itself when created, and the
refusal to resume or join a study whose trials measured something else."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna

from evaluator import OBJECTIVES

from search_space import VaenasInputError
from strategies import optuna_private
from strategies.trial_record import FAIL_REASON, INTERRUPTED

from .config import StudyConfig
from .files import data_meta, default_storage_url
from .liveness import claim_lock, claim_path
from .storage import _check_file_storage, _study_names, open_storage, redact


class StudyExistsError(VaenasInputError):
    pass


def storage_url(cfg: StudyConfig, runs_dir: str | Path) -> str:
    return cfg.storage or default_storage_url(cfg.name, runs_dir)


def existing_studies(url: str, heartbeat, path: Path | None) -> list[str]:
    """The study names in the storage; none (and nothing created) when a file storage does not exist.
    An existing file is opened under the claim lock (another process may be creating its tables)."""
    if path is None:
        return _study_names(open_storage(url, heartbeat))
    _check_file_storage(url, readonly=False)
    if not path.exists() or path.stat().st_size == 0:  # nothing in it; opening it would write Optuna's tables
        return []
    with claim_lock(claim_path(path)):
        return _study_names(open_storage(url, heartbeat))


def init_study_attrs(study: optuna.Study, cfg: StudyConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna (and its dashboard) sees the minimised form: a maximised objective is named as negated
        study.set_metric_names([f"neg_{o}" if OBJECTIVES[o].direction == "maximize" else o for o in cfg.objectives])
    raw = json.loads(json.dumps(cfg.raw, default=str))
    if isinstance(raw.get("storage"), str):
        raw["storage"] = redact(raw["storage"])  # the study is readable by anyone who can read the storage
    study.set_user_attr("config", raw)
    study.set_user_attr("objectives", cfg.objectives)
    study.set_user_attr("bounds", [[b.lo, b.hi, b.log] for b in cfg.bounds])
    study.set_user_attr("space", cfg.space.to_dict())
    study.set_user_attr("fingerprint", cfg.fingerprint())


def check_same_study(study: optuna.Study, cfg: StudyConfig) -> None:
    """Refuse to resume or join a study whose trials measured something else (its stored fingerprint,
    :meth:`StudyConfig.fingerprint`, differs from this config's), naming the first key that differs."""
    stored = study.user_attrs.get("fingerprint")
    if stored is None:  # a study made before fingerprints: only its objectives were recorded
        if study.user_attrs.get("objectives") not in (None, cfg.objectives):
            raise VaenasInputError(f"study {cfg.name!r} in the storage optimises {study.user_attrs['objectives']}, "
                                   f"this config {cfg.objectives}; use another study name")
        return
    now = cfg.fingerprint()
    unknown = sorted(set(stored) - set(now) - set(_DEFAULTS))
    if unknown:
        raise VaenasInputError(f"study {cfg.name!r} was run by a newer vaenas: its fingerprint has {unknown[0]!r}, "
                               "which this vaenas does not know; upgrade vaenas to resume it")
    for key in sorted(set(now) | set(stored)):
        diff = first_difference(key, _filled(key, stored), _filled(key, now))
        if diff is not None:
            where, was, new = diff
            raise VaenasInputError(
                f"study {cfg.name!r} was run with {where} = {was}, this config has {new}: its trials would not be "
                f"comparable; restore {where} to resume it, or start a new study under another name: in the config")


def _defaults() -> dict:
    """What a fingerprint key (and each key inside it) meant before it was recorded: its default."""
    import dataclasses

    from evaluator import LatencyConfig, TrainConfig
    from evaluator.supernet import SupernetConfig

    train = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("device", "seed")}
    return {"n_train": None, "constraints": {}, "supernet": None, "darts": None, "rungs": None, "train": train,
            "latency": dataclasses.asdict(LatencyConfig()),
            # latency_table: false is left out of a fingerprint (studies before the table measured every estimate)
            "supernet.": {**dataclasses.asdict(SupernetConfig()), "latency_table": False}}


_DEFAULTS = _defaults()


def _filled(key: str, fingerprint: dict):
    """One key of a fingerprint, decoded, a missing key or sub-key taking its default: studies made by an
    earlier vaenas (before the key existed) compare as what they ran."""
    value = json.loads(fingerprint[key]) if key in fingerprint else _DEFAULTS.get(key)
    sub = _DEFAULTS.get(f"{key}.", _DEFAULTS.get(key))
    if isinstance(value, dict) and isinstance(sub, dict):
        value = {**sub, **value}
    return value


def first_difference(key: str, va, vb) -> tuple[str, str, str] | None:
    """The first (dotted) key at which two decoded fingerprint values differ, and the two values, shortened;
    None when they are equal."""
    if va == vb:
        return None
    while isinstance(va, dict) and isinstance(vb, dict):
        sub = next((k for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)), None)
        if sub is None:
            break
        key, va, vb = f"{key}.{sub}", va.get(sub), vb.get(sub)
    short = lambda v: (t if len(t := json.dumps(v)) <= 60 else t[:57] + "...")  # noqa: E731
    return key, short(va), short(vb)


def open_study(cfg: StudyConfig, url: str, heartbeat, sampler, data, *, create: bool, worker: bool) -> optuna.Study:
    """Create the study (with its attributes) or load it; refuse one that measured something else."""
    storage = open_storage(url, heartbeat, outage_s=cfg.outage_s)
    if create:
        study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, load_if_exists=worker,
                                    directions=["minimize"] * len(cfg.objectives))
        if "objectives" not in study.user_attrs:
            init_study_attrs(study, cfg)
            study.set_user_attr("data", data_meta(data))  # plots, export and retrain reload the data from it
    else:
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    check_same_study(study, cfg)
    return study


def resume_study(study: optuna.Study, sampler, file_storage: bool) -> None:
    """Load the strategy's state; mark trials left RUNNING by a killed process as interrupted. On a
    file storage this process holds the study alone (``lock_study``), so every RUNNING trial is dead;
    on a server other workers may be alive: their trials are left to the heartbeats."""
    state = study.user_attrs.get("strategy_state")
    if state is not None and hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state)
    if not file_storage and optuna_private.heartbeat_enabled(study):
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna_private.set_trial_failed(study, t, FAIL_REASON, INTERRUPTED)


def enqueue_config_specs(study: optuna.Study, cfg: StudyConfig) -> None:
    """The config's ``enqueue:`` specs, once per study (a resumed study does not enqueue them again)."""
    if not cfg.enqueue or "config_enqueued" in study.user_attrs:
        return
    for spec in cfg.enqueue:
        study.enqueue_trial(cfg.space.to_params(spec), user_attrs={"proposed_by": "config"}, skip_if_exists=True)
    study.set_user_attr("config_enqueued", [s.id for s in cfg.enqueue])
