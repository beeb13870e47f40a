"""Study configuration from YAML (strict: unknown keys and wrong types are rejected with one line).

    name: quickstart                 # letters, digits, '-', '_' (it names runs/<name>/)
    dataset: mnist                   # mnist | fashion_mnist, or a source + likelihood (evaluator/data.py):
                                     # {source: torchvision, name: CIFAR10, likelihood: discretized_logistic}
                                     # {source: folder, path: ./photos, image_size: [32, 32], channels: 3,
                                     #  likelihood: discretized_logistic}
                                     # {source: array, path: x.npy, likelihood: gaussian}  (.npy/.npz/.csv)
                                     # {source: sklearn, name: breast_cancer, likelihood: gaussian}
                                     # the space's input_shape and likelihood are taken from the data
    data_root: null                  # torchvision's root: default $VAENAS_DATA or ~/.cache/vaenas/data
    n_train: 10000                   # optional: train each trial on a leading subset
    space: {...} | path.yaml         # inline search space or a file (relative to this config)
    strategy: {name: random, options: {}}   # random | nsga2 | tpe | gp | evolution | rl (+ nni-* with the extra)
                                     # + screen: {pool: 16, startup: 8} (random, evolution, rl): after `startup`
                                     # trials each trial draws `pool` proposals and trains only the one a
                                     # predictor of the measured objectives ranks best (strategies/screening.py)
    objectives: [neg_elbo, size_bytes]
    constraints: {size_bytes: 16384}  # optional hard limits, OBJECTIVE: max (any objective name)
    bounds: {neg_elbo: [80, 250], size_bytes: {lo: 1000, hi: 4000000, log: true}}
    budget: {trials: 12, timeout_s: null}   # + rungs: [0.1, 0.3, 1.0], keep: 0.33 - multi-fidelity early
                                     # stopping: at each rung (fraction of the trial's training) a trial goes on
                                     # only if it ranks in the best `keep` fraction of the trials that reached it
    train: {epochs: 1, batch_size: 100, lr: 0.001, max_steps: null, lr_schedule: constant, device: auto,
            kl_warmup_steps: 0, lr_warmup_steps: 0}   # warm-ups: linear ramps over the first N steps
    latency: {backend: onnxruntime, repeats: 50, threads: 1, batch_size: 1}  # onnxruntime | c | executorch |
                                     # torch | command (+ command: './time.sh {artifact}', format: c|onnx|executorch)
    seed: 0
    storage: null                    # any Optuna storage URL (sqlite:///..., postgresql://...) or journal:PATH;
                                     # default sqlite:///runs/<name>/study.db
    artifacts: null                  # each trial's arch.json, model.pt and samples.png as Optuna artifacts (seen in
                                     # `vaenas dashboard`): default runs/<name>/artifacts; a folder; false: off;
                                     # {backend: boto3, bucket: NAME} (S3) or {backend: gcs, bucket: NAME}
    heartbeat: {interval_s: 30, grace_s: 120, outage_s: 60}  # server storages: a trial silent for grace_s is
                                     # failed and retried once; a worker rides out a database outage of up to
                                     # outage_s (retrying with backoff), then stops: "database unreachable"
    supernet: {epochs: 10, n_random: 2, kd_weight: 1.0, finetune_steps: 0, n_val: 2000, remeasure: 10,
               calibrate: true, latency_table: true}  # calibrate: anchor the estimates per depth on
                                     # standalone-trained extremes; latency_table: scored specs' latency is an
                                     # ESTIMATE from a per-layer table fitted once (validation printed)
                                     # optional (one-family spaces): score trials on one trained weight-sharing
                                     # supernet - their −ELBO is an ESTIMATE - then re-measure up to
                                     # `remeasure` front specs by standalone training (the reported front)
    darts: {lambdas: [0, 10, 100, 1000, 10000], steps: 300, depth: null}
                                     # optional (MLP, mirrored decoder): a DARTS lambda sweep runs first;
                                     # each derived spec is enqueued as a normal trial (then `strategy`
                                     # fills any remaining budget)
    warm_start: STUDY                # optional ({study: NAME, storage: URL}): that study's front specs are evaluated
                                     # first, once (e.g. MNIST's front on Fashion-MNIST); same input shape needed
    enqueue: [{type: vaenas.ArchSpec, ...}]  # optional: specs of the space evaluated first, once per study
                                     # (e.g. a baseline to compare with; an exported arch.json's content)
    task: {kind: anomaly, normal: [0], score: neg_elbo, samples: null, threshold: {fpr: 0.01}}
                                     # optional anomaly detection (evaluator/anomaly.py): train on the normal
                                     # labels only; objectives auroc / auprc (maximised, on validation); score
                                     # neg_elbo | iwae | recon_prob | recon_error, a list or all (the best on
                                     # validation is kept per trial); threshold {fpr: F} or best_f1 ships
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from evaluator import OBJECTIVES, STATIC_OBJECTIVES, LatencyConfig, TrainConfig, check_objectives
from strategies.pareto import Bound
from strategies.screening import ScreenConfig
from evaluator.anomaly import AnomalyTask, check_anomaly_objectives
from evaluator.data import DatasetSpec, Splits
from evaluator.supernet import SupernetConfig
from search_space import ArchSpec, SearchSpace, VaenasInputError
from search_space.errors import check_block, check_type, read_text
from search_space.plan import check_param_cap
from search_space.space import safe_yaml

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_KEYS = {"name", "dataset", "data_root", "n_train", "space", "strategy", "objectives", "bounds", "budget", "train",
         "latency", "seed", "storage", "constraints", "heartbeat", "supernet", "darts", "enqueue",
         "artifacts", "task", "warm_start"}
# constraints the spec alone decides (no training): strategies can rule specs out before proposing them
STATIC_CONSTRAINTS = STATIC_OBJECTIVES  # the limits a spec alone decides: checked before training


class ConfigError(VaenasInputError):
    pass


def check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ConfigError(f"{what}: {name!r} is not a valid study name; use letters, digits, '-' and '_' "
                          "(no path characters), at most 64")
    return name


def _typed(key: str, value: Any, typ: type | tuple, allow_none: bool = False) -> Any:
    return _owned(lambda: check_type(key, value, typ, allow_none))


def _block(key: str, value: Any, allowed: set[str]) -> dict:
    return _owned(lambda: check_block(key, value, allowed))


@dataclass
class StudyConfig:
    name: str
    space: SearchSpace
    objectives: list[str]
    bounds: list[Bound]
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec.parse("mnist"))
    data_root: str | None = None
    n_train: int | None = None
    strategy: str = "random"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    screen: ScreenConfig | None = None  # set: whole-spec strategies propose a pool, the predictor picks one
    trials: int = 10
    timeout_s: float | None = None
    rungs: tuple[float, ...] = ()  # decision points (fractions of the training budget, < 1); () = no early stopping
    keep: float = 1 / 3  # the fraction of the trials at a rung that go on
    train: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    seed: int = 0
    storage: str | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # objective -> max allowed value
    heartbeat: tuple[int, int] = (30, 120)  # (interval_s, grace_s)
    outage_s: float = 60.0  # server storages: how long a database outage is waited out
    supernet: SupernetConfig | None = None  # set: trials are scored on a supernet (estimates)
    darts: dict[str, Any] | None = None  # set: a DARTS lambda sweep proposes the first trials
    enqueue: list[ArchSpec] = field(default_factory=list)  # specs evaluated first (e.g. a baseline)
    artifacts: Any = None  # where trial files go as Optuna artifacts (studies/artifacts.py); False: nowhere
    task: AnomalyTask | None = None  # an anomaly task (evaluator/anomaly.py): normal-only training, AUROC
    warm_start: tuple[str, str | None] | None = None  # (study, storage): its front specs are evaluated first
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, base_dir: Path | None = None) -> "StudyConfig":
        """Check every key of a study config (one line naming the first bad one) and build it; each
        block is parsed by its owner (``TrainConfig``, ``LatencyConfig``, ``SupernetConfig``, DARTS')."""
        _check_top(d)
        space = _space(d["space"], base_dir)
        objectives, bounds = _objectives(d)
        seed = _typed("seed", d.get("seed", 0), int)
        train = _owned(lambda: TrainConfig.from_config(d.get("train"), seed))
        trials, timeout, rungs, keep = _budget(d.get("budget"), train.epochs)
        strategy, options, screen = _strategy(d.get("strategy", {"name": "random"}))
        interval, grace, outage = _heartbeat(d.get("heartbeat"))
        supernet = _owned(lambda: SupernetConfig.from_config(d["supernet"], space)) if d.get("supernet") is not None \
            else None
        if supernet is not None and rungs:
            raise ConfigError("budget.rungs: supernet trials are estimates that train nothing, so there is nothing "
                              "to stop early; remove budget.rungs or the supernet block")
        from evaluator.darts import darts_block

        darts = _owned(lambda: darts_block(d["darts"], space)) if d.get("darts") is not None else None
        from .artifacts import check_artifacts_config

        task = _owned(lambda: AnomalyTask.parse(d["task"])) if d.get("task") is not None else None
        _owned(lambda: check_anomaly_objectives(objectives, task))
        return cls(
            name=check_name(d["name"]), space=space, objectives=objectives, bounds=bounds,
            dataset=DatasetSpec.parse(d.get("dataset", "mnist"), base_dir),
            data_root=_typed("data_root", d.get("data_root"), str, allow_none=True), n_train=_n_train(d),
            strategy=strategy, strategy_options=options, screen=screen, trials=trials, timeout_s=timeout, rungs=rungs, keep=keep,
            train=train,
            latency=_owned(lambda: LatencyConfig.from_config(d.get("latency"))), seed=seed,
            storage=_typed("storage", d.get("storage"), str, allow_none=True), constraints=_constraints(d),
            heartbeat=(interval, grace), outage_s=float(outage), supernet=supernet, darts=darts,
            enqueue=_enqueue(d.get("enqueue")), artifacts=check_artifacts_config(d.get("artifacts")), task=task,
            warm_start=_warm_start(d.get("warm_start")), raw=d,
        )

    def bind_data(self, data: Splits) -> None:
        """Give the space the data's input shape and likelihood, then check what depends on them
        (conv on vectors, a stated input_shape, enqueued specs): called after loading the data,
        before anything is written."""
        try:
            self.space = self.space.bind_data(data.input_shape, data.likelihood, f"dataset {self.dataset.label}")
        except VaenasInputError as e:
            raise ConfigError(str(e)) from None
        for i, spec in enumerate(self.enqueue):
            v = self.space.contains(spec)
            if not v:
                raise ConfigError(f"enqueue[{i}]: spec {spec.id} is not in the study's space ({v.reason}); "
                                  "widen the space or remove it from enqueue")

    def fingerprint(self) -> dict[str, str]:
        """Everything that changes what a trial measures, one canonical JSON string per key: a study
        resumed or joined with a different value would mix incomparable trials in one front.
        (Not in it: the strategy, the budget, the storage, the training device - they change how or
        where trials run, not what they measure.) Call after :meth:`bind_data`."""
        import json

        train = {k: v for k, v in self.train.to_dict().items() if k != "device"}
        parts = {
            "space": self.space.to_dict(), "dataset": self.dataset.to_config(), "n_train": self.n_train,
            "train": train, "seed": self.seed, "latency": dataclasses.asdict(self.latency),
            "objectives": self.objectives, "bounds": [[b.lo, b.hi, b.log] for b in self.bounds],
            "constraints": self.constraints,
            "supernet": _supernet_fingerprint(self.supernet),
            "darts": self.darts,
        }
        if self.task is not None:  # only when set, so studies made before tasks existed still resume
            parts["task"] = self.task.to_config()
        if self.rungs:  # only when set, so studies made before rungs existed still resume
            parts["rungs"] = {"rungs": list(self.rungs), "keep": self.keep}
        return {k: json.dumps(v, sort_keys=True, default=str) for k, v in parts.items()}

    @classmethod
    def load(cls, path: str | Path) -> "StudyConfig":
        p = Path(path)
        text = read_text(p, f"config file {str(p)!r} does not exist; check the path",
                         lambda e: f"{p.name}: not a readable text file ({type(e).__name__}); give a YAML study config",
                         ConfigError)
        return cls.from_dict(safe_yaml(text, p.name, ConfigError), base_dir=p.parent)


def _owned(parse):
    """A block parsed by its owner: its one-line error as the config's."""
    try:
        return parse()
    except ConfigError:
        raise
    except VaenasInputError as e:
        raise ConfigError(str(e)) from None


def _check_top(d: Any) -> None:
    if not isinstance(d, dict):
        raise ConfigError("study config: expected a mapping of keys at the top level")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown study key; allowed keys are {sorted(_KEYS)}")
    for req in ("name", "space", "objectives"):
        if req not in d:
            raise ConfigError(f"{req}: required study key is missing")
        if req == "name":
            check_name(d["name"])
        if req == "space" and isinstance(d["space"], dict):
            SearchSpace.from_dict(d["space"])


def _space(sp: Any, base_dir: Path | None) -> SearchSpace:
    if isinstance(sp, str):
        return SearchSpace.load(Path(sp) if Path(sp).is_absolute() or base_dir is None else base_dir / sp)
    if isinstance(sp, dict):
        return SearchSpace.from_dict(sp)
    raise ConfigError(f"space: expected an inline mapping or a file path, got {sp!r}")


def _objectives(d: dict) -> tuple[list[str], list[Bound]]:
    """The objectives and their fixed hypervolume bounds (one per objective, no other)."""
    objs = d["objectives"]
    if not isinstance(objs, list):
        raise ConfigError(f"objectives: expected a list such as [neg_elbo, size_bytes], got {objs!r}")
    objectives = check_objectives(objs)
    braw = d.get("bounds") or {}
    if not isinstance(braw, dict):
        raise ConfigError(f"bounds: expected a mapping objective -> [lo, hi], got {braw!r}")
    for o in objectives:
        if o not in braw:
            raise ConfigError(f"bounds.{o}: missing; hypervolume needs fixed bounds for every objective, "
                              f"e.g. {o}: [lo, hi]")
    extra = sorted(set(braw) - set(objectives))
    if extra:
        raise ConfigError(f"bounds.{extra[0]}: not one of the study's objectives {objectives}")
    return objectives, [_minimised_bound(o, _bound(f"bounds.{o}", braw[o])) for o in objectives]


def _minimised_bound(objective: str, b: Bound) -> Bound:
    """A maximised objective's bounds as the minimised form ranks it: [lo, hi] of AUROC -> [-hi, -lo]."""
    if OBJECTIVES[objective].direction != "maximize":
        return b
    if b.log:
        raise ConfigError(f"bounds.{objective}: a log scale does not suit a maximised score; give [lo, hi]")
    return Bound(-b.hi, -b.lo)


def _constraints(d: dict) -> dict[str, float]:
    craw = d.get("constraints") or {}
    if not isinstance(craw, dict):
        raise ConfigError(f"constraints: expected a mapping OBJECTIVE: max, e.g. {{size_bytes: 16384}}, got {craw!r}")
    out: dict[str, float] = {}
    for k, v in craw.items():
        if k not in OBJECTIVES:
            raise ConfigError(f"constraints.{k}: unknown; constrain one of {list(OBJECTIVES)}")
        if OBJECTIVES[k].direction == "maximize":
            raise ConfigError(f"constraints.{k}: constraints are maxima, and {k} is maximised; make it an objective")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ConfigError(f"constraints.{k}: expected a positive number (the maximum allowed), got {v!r}")
        out[k] = float(v)
    return out


def _heartbeat(raw: Any) -> tuple[int, int, float]:
    hb = _block("heartbeat", raw, {"interval_s", "grace_s", "outage_s"})
    interval = _typed("heartbeat.interval_s", hb.get("interval_s", 30), int)
    grace = _typed("heartbeat.grace_s", hb.get("grace_s", 120), int)
    if interval < 1 or grace <= interval:
        raise ConfigError(f"heartbeat: need interval_s >= 1 and grace_s > interval_s, got {interval} and {grace}")
    outage = _typed("heartbeat.outage_s", hb.get("outage_s", 60), (int, float))
    if not (math.isfinite(outage) and outage >= 0):
        raise ConfigError(f"heartbeat.outage_s: expected a number of seconds >= 0, got {outage!r}")
    return interval, grace, outage


def _budget(raw: Any, epochs: float = 1.0) -> tuple[int, float | None, tuple[float, ...], float]:
    budget = _block("budget", raw, {"trials", "timeout_s", "rungs", "keep"})
    trials = _typed("budget.trials", budget.get("trials", 10), int)
    if trials < 1:
        raise ConfigError(f"budget.trials: must be >= 1, got {trials}")
    timeout = _typed("budget.timeout_s", budget.get("timeout_s"), (int, float), allow_none=True)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ConfigError(f"budget.timeout_s: must be a positive number of seconds (or null), got {timeout}")
    from .rungs import parse_rungs

    return (trials, timeout, *parse_rungs(budget, epochs))


def _strategy(strat: Any) -> tuple[str, dict, ScreenConfig | None]:
    from strategies import REGISTRY

    strat = _block("strategy", {"name": strat} if isinstance(strat, str) else strat, {"name", "options", "screen"})
    name = _typed("strategy.name", strat.get("name", "random"), str)
    if name not in REGISTRY:
        raise ConfigError(f"strategy.name: {name!r} is unknown; registered strategies are {sorted(REGISTRY)}")
    screen = strat.get("screen")
    screen = _owned(lambda: ScreenConfig.parse(screen)) if screen not in (None, False) else None
    return name, _typed("strategy.options", strat.get("options") or {}, dict), screen


def _n_train(d: dict) -> int | None:
    n_train = _typed("n_train", d.get("n_train"), int, allow_none=True)
    if n_train is not None and n_train < 1:
        raise ConfigError(f"n_train: must be >= 1 (the number of training examples each trial uses), got {n_train}")
    return n_train


def _warm_start(raw: Any) -> tuple[str, str | None] | None:
    """``warm_start: STUDY`` or ``{study: STUDY, storage: URL}``: another study's front specs run first."""
    if raw is None:
        return None
    w = _block("warm_start", {"study": raw} if isinstance(raw, str) else raw, {"study", "storage"})
    name = check_name(w.get("study"), "warm_start.study")
    return name, _typed("warm_start.storage", w.get("storage"), str, allow_none=True)


def _enqueue(raw_q: Any) -> list[ArchSpec]:
    """Specs evaluated first; checked against the space once it is bound to the data (bind_data)."""
    raw_q = raw_q or []
    if not isinstance(raw_q, list):
        raise ConfigError(f"enqueue: expected a list of arch specs (as in an exported arch.json), got {raw_q!r}")
    out = []
    for i, item in enumerate(raw_q):
        try:
            out.append(ArchSpec.from_dict(item))
            check_param_cap(out[-1], "")
        except VaenasInputError as e:
            raise ConfigError(f"enqueue[{i}]: {e}") from None
    return out


def _supernet_fingerprint(sn) -> dict | None:
    """The supernet block as it changes what trials measure; ``latency_table: false`` (measuring every
    estimate, as studies did before the table existed) is left out, so those studies still resume."""
    if sn is None:
        return None
    d = dataclasses.asdict(sn)
    if not d["latency_table"]:
        del d["latency_table"]
    return d


def _bound(key: str, v: Any) -> Bound:
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return Bound(float(v[0]), float(v[1]))
    if isinstance(v, dict) and set(v) <= {"lo", "hi", "log"} and {"lo", "hi"} <= set(v):
        try:
            return Bound(float(v["lo"]), float(v["hi"]), bool(v.get("log", False)))
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{key}: expected [lo, hi] or {{lo, hi, log}}, got {v!r}")
