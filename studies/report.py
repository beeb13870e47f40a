"""Read a study back: trials table, Pareto front, knee, export of a chosen architecture."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from evaluator import OBJECTIVES
from strategies.pareto import Bound, hypervolume, knee_point, non_dominated_mask
from search_space import ArchSpec, VaenasInputError

from .config import check_name
from .invocation import prog
from .files import atomic_write, study_dir
from strategies.trial_record import FAIL_REASON, trial_attrs

COST_COLUMNS = [n for n in OBJECTIVES if n != "neg_elbo" and OBJECTIVES[n].direction == "minimize"]  # the costs
TASK_COLUMNS = [n for n in OBJECTIVES if OBJECTIVES[n].direction == "maximize"]  # auroc, auprc


def ranked(df: pd.DataFrame, objectives: list[str]) -> np.ndarray:
    """The objectives' columns as the Pareto maths ranks them: every one minimised (a maximised one negated)."""
    return np.column_stack([df[o].to_numpy(float) * (-1.0 if OBJECTIVES[o].direction == "maximize" else 1.0)
                            for o in objectives]) if objectives else np.empty((len(df), 0))


@dataclass
class StudyView:
    name: str
    storage: str
    study: optuna.Study
    objectives: list[str]
    bounds: list[Bound]
    trials: pd.DataFrame  # one row per COMPLETE trial
    all_trials: pd.DataFrame  # every trial: number, state, fail_reason

    @property
    def front(self) -> pd.DataFrame:
        return self.trials[self.trials["on_front"]].sort_values(
            self.objectives[0], ascending=OBJECTIVES[self.objectives[0]].direction == "minimize")


def _storage_for(name: str, runs_dir: str | Path, storage: str | None) -> str:
    if storage:
        return storage
    db = study_dir(runs_dir, name) / "study.db"
    if not db.exists():
        raise VaenasInputError(f"study {name!r}: no {db}; run `vaenas list` to see studies or pass --storage")
    return f"sqlite:///{db}"


def load_view(name: str, runs_dir: str | Path = "runs", storage: str | None = None) -> StudyView:
    check_name(name, "STUDY")
    url = _storage_for(name, runs_dir, storage)
    from .storage import open_storage, redact

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None, readonly=True))
    except KeyError:
        raise VaenasInputError(f"study {name!r} is not in {redact(url)}; run `vaenas list` to see studies") from None
    objectives = study.user_attrs.get("objectives") or study.metric_names
    if not isinstance(objectives, list) or not objectives or not all(o in OBJECTIVES for o in objectives):
        raise VaenasInputError(f"study {name!r}: its stored objectives {objectives!r:.200} are not objectives of this "
                               f"vaenas ({', '.join(OBJECTIVES)}); the study's attributes were changed - restore them")
    bounds = [Bound(*b) for b in study.user_attrs["bounds"]]
    rows, all_rows = [], []
    for t in study.get_trials(deepcopy=False):
        a = trial_attrs(t)  # once per trial: a packed record is unpacked by each call
        partial = a.get("partial") or {}
        all_rows.append({"number": t.number, "state": t.state.name, "fail_reason": a.get(FAIL_REASON, ""),
                         "worker": a.get("worker", ""), "stopped_at_rung": a.get("stopped_at_rung"),
                         "stopped_at_fraction": a.get("stopped_at_fraction"),
                         "partial_neg_elbo": partial.get("neg_elbo"),
                         "reused_from_trial": a.get("reused_from_trial")})
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        spec = ArchSpec.from_json(a["spec"])
        row = {"trial": t.number, "spec_id": spec.id, "family": spec.family, "latent_dim": spec.latent_dim,
               "enc_hidden": list(spec.enc_hidden), "enc_channels": list(spec.enc_channels),
               "weight_bits": list(spec.weight_bits), "mean_bits": spec.mean_bits}
        for k in ["neg_elbo", "bits_per_dim"] + COST_COLUMNS + TASK_COLUMNS + [
                "train_seconds", "latency_path", "neg_elbo_is_estimate", "latency_is_estimate"]:
            row[k] = a.get(k)
        row["score"] = (a.get("anomaly") or {}).get("score")
        row["flash_is_estimate"] = bool(a.get("flash_is_estimate", True))
        row["reused_from_trial"] = a.get("reused_from_trial")
        row["feasible"] = bool(a.get("feasible", True))
        row["neg_elbo_is_estimate"] = bool(row["neg_elbo_is_estimate"] or False)
        row["latency_is_estimate"] = bool(row["latency_is_estimate"] or False)
        row["phase"] = a.get("phase", "search")
        row["remeasure_of"] = a.get("remeasure_of")
        row["estimate_neg_elbo"] = a.get("estimate_neg_elbo")
        row["estimate_neg_elbo_uncalibrated"] = a.get("estimate_neg_elbo_uncalibrated")
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["on_front"] = False
        ok = reported_mask(df)
        if ok.any():  # the front is over feasible trials only (a study's constraints are hard)
            df.loc[ok, "on_front"] = non_dominated_mask(ranked(df.loc[ok], objectives))
    else:
        df = pd.DataFrame(columns=["trial", "spec_id", *objectives, "feasible", "on_front", "neg_elbo_is_estimate",
                                   "phase"])
    return StudyView(name, redact(url), study, objectives, bounds, df,
                     pd.DataFrame(all_rows, columns=ALL_TRIAL_COLUMNS))


ALL_TRIAL_COLUMNS = ["number", "state", "fail_reason", "worker", "stopped_at_rung", "stopped_at_fraction",
                     "partial_neg_elbo", "reused_from_trial"]


def list_studies(runs_dir: str | Path = "runs", storage: str | None = None) -> pd.DataFrame:
    urls = [storage] if storage else [f"sqlite:///{p}" for p in sorted(Path(runs_dir).glob("*/study.db"))]
    rows = []
    from .storage import open_storage, redact

    for url in urls:
        storage = open_storage(url, heartbeat=None, readonly=True)
        for s in optuna.get_all_study_summaries(storage):
            states = [t.state for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False)]
            rows.append({"study": s.study_name, "complete": sum(x.name == "COMPLETE" for x in states),
                         "failed": sum(x.name == "FAIL" for x in states), "running": sum(x.name == "RUNNING" for x in states),
                         "storage": redact(url)})
    return pd.DataFrame(rows, columns=["study", "complete", "failed", "running", "storage"])


def reported_mask(df: pd.DataFrame) -> np.ndarray:
    """Feasible trials a front is reported over: where a study holds supernet ESTIMATES and
    measured (re-measured) trials, only the measured ones - estimates never mix into that front."""
    ok = df["feasible"].to_numpy(bool)
    est = df["neg_elbo_is_estimate"].fillna(False).to_numpy(bool) if "neg_elbo_is_estimate" in df else np.zeros(len(df), bool)
    measured = ok & ~est
    return measured if measured.any() and (ok & est).any() else ok


def feasible_trials(view: StudyView) -> pd.DataFrame:
    """The trials the front, hypervolume and ``--pick`` use (see :func:`reported_mask`)."""
    return view.trials[reported_mask(view.trials)] if len(view.trials) else view.trials


def study_hypervolume(view: StudyView) -> float:
    df = feasible_trials(view)
    return hypervolume(ranked(df, view.objectives), view.bounds) if len(df) else 0.0


def hypervolume_curve(view: StudyView) -> tuple[list[int], list[float]]:
    """Hypervolume of the feasible COMPLETE trials up to and including each trial number."""
    df = view.trials.sort_values("trial")
    if len(df) and "phase" in df:
        df = df[df["phase"] != "remeasure"]  # the search's own curve (estimates, in supernet mode)
    xs, ys = [], []
    for i in range(len(df)):
        upto = df.iloc[: i + 1]
        upto = upto[upto["feasible"].astype(bool)]
        xs.append(int(df["trial"].iloc[i]))
        ys.append(hypervolume(ranked(upto, view.objectives), view.bounds) if len(upto) else 0.0)
    return xs, ys


def pick_trial(view: StudyView, trial: int | None = None, pick: str | None = None,
               max_constraints: list[str] | None = None) -> int:
    """Choose a trial number: explicit, the knee of the front, best on one objective, under limits."""
    df = view.trials
    if len(df) == 0:
        raise VaenasInputError(f"study {view.name!r} has no completed trials to export")
    if trial is not None:
        if trial not in set(df["trial"]):
            row = view.all_trials[view.all_trials["number"] == trial]
            if len(row) and row["stopped_at_rung"].notna().iloc[0]:
                f = row["stopped_at_fraction"].iloc[0]
                raise VaenasInputError(f"--trial: trial {trial} of study {view.name!r} was stopped early at a rung "
                                       f"(after {f:g} of its training): it has partial figures only and no model; "
                                       f"export a completed trial, or `vaenas retrain` its spec from `show --all`")
            raise VaenasInputError(f"--trial: study {view.name!r} has no completed trial {trial}; "
                                   f"completed trials are {sorted(df['trial'].tolist())[:20]}")
        return trial
    df = feasible_trials(view)
    for c in max_constraints or []:
        key, _, val = c.partition("=")
        if key not in OBJECTIVES or not val:
            raise VaenasInputError(f"--max: expected OBJECTIVE=VALUE with OBJECTIVE in {list(OBJECTIVES)}, got {c!r}")
        try:
            df = df[df[key].astype(float) <= float(val)]
        except ValueError:
            raise VaenasInputError(f"--max: {val!r} is not a number") from None
    if len(df) == 0:
        raise VaenasInputError(f"no feasible completed trial satisfies {' and '.join(max_constraints or [])}")
    pick = pick or "knee"
    if pick == "knee":
        pts = ranked(df, view.objectives)
        return int(df["trial"].iloc[knee_point(pts, view.bounds)])
    if pick.startswith("best:"):
        key = pick.split(":", 1)[1]
        if key not in OBJECTIVES:
            raise VaenasInputError(f"--pick: {key!r} is not an objective; use one of {list(OBJECTIVES)}")
        return int(df.sort_values([key, "neg_elbo"])["trial"].iloc[0])
    raise VaenasInputError(f"--pick: expected 'knee' or 'best:OBJECTIVE', got {pick!r}")


def export_trial(view: StudyView, number: int, out: Path, runs_dir: str | Path = "runs") -> dict:
    t = view.study.trials[number]
    attrs = trial_attrs(t)
    spec = ArchSpec.from_json(attrs["spec"])
    objectives = {k: attrs.get(k) for k in ["neg_elbo"] + COST_COLUMNS + (TASK_COLUMNS if attrs.get("anomaly") else [])}
    cfg = view.study.user_attrs.get("config", {})
    data = study_data(view)
    dataset = data["dataset"]
    arch_path = str(out)
    # a shorthand is named on the command line; a dataset block is read back from this file by retrain
    flag = f" --dataset {dataset}" if isinstance(dataset, str) else ""
    doc = {
        "type": "vaenas.Export", "version": 1, "spec": spec.to_dict(), "spec_id": spec.id,
        "objectives": objectives, "neg_elbo_is_estimate": bool(attrs.get("neg_elbo_is_estimate", False)),
        "likelihood": spec.likelihood, "input_shape": list(spec.input_shape),
        "input_normalization": data.get("normalization"),
        "provenance": {"study": view.name, "storage": view.storage, "trial": number, "dataset": dataset,
                       **({"task": data["task"]} if data.get("task") else {}),
                       "seed": attrs.get("seed"), "train": cfg.get("train", {}),
                       "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "retrain_command": f"{prog()} retrain {arch_path} --epochs 30{flag}",
    }
    atomic_write(out, json.dumps(doc, indent=2).encode())
    return doc


def study_data(view: StudyView) -> dict:
    """The study's data record (dataset in config form with absolute paths, likelihood, input shape,
    normalisation); studies made before it existed name a shorthand dataset in their config."""
    data = view.study.user_attrs.get("data")
    if data:
        return data
    return {"dataset": view.study.user_attrs.get("config", {}).get("dataset", "mnist"), "likelihood": "bernoulli"}


def front_points(view: StudyView) -> np.ndarray:
    return ranked(view.front, view.objectives)
