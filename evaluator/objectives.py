"""The objectives record and the :class:`Evaluator` that produces it.

A study picks 2-4 of :data:`OBJECTIVES`. Each has a direction; ``auroc`` and ``auprc`` are maximised,
every other one minimised. Everything that ranks trials (Optuna, the strategies, the Pareto maths)
sees the *minimised* form: :meth:`Objectives.values` negates a maximised objective (and a study's
bounds of it are stored negated); tables, plots and manifests show the value itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from search_space import ArchSpec, VaenasInputError

from .costs import static_costs
from .data import Splits
from .elbo import bits_per_dim, evaluate_neg_elbo
from .latency import LatencyConfig, measure_latency
from .train import TrainConfig, TrainingDiverged, seeded_model, train

@dataclass(frozen=True)
class Objective:
    """One objective a study may pick: what it means, its unit, how a plot labels it and a table
    prints it, and whether the spec alone decides it (``static``: a constraint on it is checked before
    training, and a spec over it is never trained)."""

    name: str
    doc: str
    unit: str
    label: str  # axis label of plots and the HTML report
    fmt: str = "{:,.0f}"  # how tables print a value
    static: bool = False
    direction: str = "minimize"


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, doc: str, unit: str, label: str, fmt: str = "{:,.0f}",
                       static: bool = False, direction: str = "minimize") -> Objective:
    """Add an objective (the record :class:`Objectives` must carry a field of that name)."""
    if name in OBJECTIVES:
        raise ValueError(f"objective {name!r} is registered already")
    OBJECTIVES[name] = Objective(name, doc, unit, label, fmt, static, direction)
    return OBJECTIVES[name]


def minimised(name: str, value: float) -> float:
    """``value`` of objective ``name`` in the form every ranking minimises (a maximised one negated)."""
    return -float(value) if OBJECTIVES[name].direction == "maximize" else float(value)


register_objective("neg_elbo", "validation −ELBO, nats per example", "nats",
                   "validation −ELBO (nats/example, lower is better)", "{:.2f}")
register_objective("flops", "FLOPs of one forward pass at batch 1 (2 per MAC)", "FLOPs",
                   "FLOPs per forward pass (batch 1)", static=True)
register_objective("bitops", "MACs x weight bits x activation bits", "BitOps",
                   "BitOps (MACs × weight bits × activation bits)", static=True)
register_objective("params", "parameters", "parameters", "parameters", static=True)
register_objective("size_bytes", "packed model size, bytes", "bytes", "packed model size (bytes)", static=True)
register_objective("latency_ms", "median reconstruction-pass latency, ms, of the exported artifact (latency.backend)",
                   "ms", "latency (ms, median, batch 1, exported artifact)", "{:.4f}")
register_objective("ram_bytes", "peak activation RAM of the exported C inference, bytes", "bytes",
                   "peak activation RAM of the C export (bytes)", static=True)
register_objective("flash_bytes", "flash of the C export: packed weights + estimated code, bytes (an estimate; exact "
                   "for the core with latency.backend cortex_m)",
                   "bytes", "flash of the C export (bytes; ESTIMATE unless measured on a Cortex-M build)", static=True)
register_objective("mcu_instructions", "instructions one reconstruction executes on the Cortex-M core (latency.backend "
                   "cortex_m; counted in an emulator: instructions, not cycles)", "instructions",
                   "instructions per reconstruction (Cortex-M, emulated)")
register_objective("auroc", "validation AUROC of the anomaly score (task: anomaly; maximised)", "AUROC",
                   "validation AUROC (higher is better)", "{:.4f}", direction="maximize")
register_objective("auprc", "validation AUPRC (average precision) of the anomaly score (task: anomaly; maximised)",
                   "AUPRC", "validation AUPRC (higher is better)", "{:.4f}", direction="maximize")
DIRECTIONS: dict[str, str] = {name: o.direction for name, o in OBJECTIVES.items()}
STATIC_OBJECTIVES = tuple(n for n, o in OBJECTIVES.items() if o.static)  # decided by the spec alone
LABELS: dict[str, str] = {name: o.label for name, o in OBJECTIVES.items()}


def check_objectives(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise VaenasInputError(f"objectives: {unknown[0]!r} is unknown; choose from {list(OBJECTIVES)}")
    if not 1 <= len(names) <= 4 or len(set(names)) != len(names):
        raise VaenasInputError(f"objectives: pick 1 to 4 distinct objectives (one: budget mode, with constraints), "
                               f"got {names}")
    return names


@dataclass(frozen=True)
class Objectives:
    spec_id: str
    neg_elbo: float
    flops: int
    bitops: int
    params: int
    size_bytes: int
    latency_ms: float
    latency_iqr_ms: float = float("nan")
    ram_bytes: int = 0  # 0 in records written before these objectives existed
    flash_bytes: int = 0
    latency_path: str = ""
    latency_threads: int = 1
    train_seconds: float = 0.0
    eval_seconds: float = 0.0  # time outside training: costs, validation, latency
    epochs: float = 0.0
    seed: int = 0
    neg_elbo_is_estimate: bool = False  # True when inherited from a supernet, not trained standalone
    neg_elbo_uncalibrated: float | None = None  # supernet estimate before depth calibration (if calibrated)
    uncounted_ops: tuple[str, ...] = field(default=())
    bits_per_dim: float | None = None  # image data: neg_elbo in bits per data dimension (None for vectors)
    latency_is_estimate: bool = False  # True when latency_ms comes from a latency table, not a measurement
    mcu_instructions: int = 0  # latency.backend cortex_m: instructions per reconstruction (0: not measured)
    mcu: dict | None = None  # latency.backend cortex_m: the core, text/data/bss, stack (measured and .su bound)
    flash_is_estimate: bool = True  # False when flash_bytes and ram_bytes were measured on a Cortex-M build
    auroc: float = float("nan")  # task anomaly: validation AUROC of the kept score
    auprc: float = float("nan")
    anomaly: dict | None = None  # task anomaly: the kept score, its threshold and validation FPR/TPR (anomaly_figures)

    def values(self, names: list[str]) -> tuple[float, ...]:
        """The objectives ``names`` in their minimised form (what Optuna and the Pareto maths rank)."""
        return tuple(minimised(n, getattr(self, n)) for n in names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["uncounted_ops"] = list(self.uncounted_ops)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Objectives":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["uncounted_ops"] = tuple(kw.get("uncounted_ops", ()))
        return cls(**kw)


def image_bits_per_dim(spec: ArchSpec, nats: float) -> float | None:
    """``nats`` per example in bits per dimension for image specs (the unit image results use); None for vectors."""
    return bits_per_dim(nats, spec.n_inputs) if spec.is_image else None


@dataclass(frozen=True)
class EvalFailure:
    spec_id: str
    reason: str


class RungGate(Protocol):
    """Multi-fidelity early stopping, asked during training (the run loop's rungs implement it).

    ``fractions``: the fractions of the training budget, each < 1, after which :meth:`decide` is
    called; ``needs``: the objectives it compares (``latency_ms`` is then measured once, at the
    first rung). ``decide(rung, fraction, partial)`` gets the figures at the rung (:func:`partial_figures`)
    and answers whether training continues."""

    fractions: tuple[float, ...]
    needs: tuple[str, ...]

    def decide(self, rung: int, fraction: float, partial: dict[str, float]) -> bool: ...


@dataclass(frozen=True)
class Stopped:
    """A trial stopped at a rung: its figures there are PARTIAL (−ELBO after ``fraction`` of the
    training budget, exact static costs); never a front point."""

    spec_id: str
    rung: int
    fraction: float
    partial: dict[str, float]
    train_seconds: float
    epochs: float


class Evaluator:
    """Train a spec on ``data.train`` for the budget in ``train_cfg``, then score it on ``data.val``."""

    def __init__(self, data: Splits, train_cfg: TrainConfig, latency_cfg: LatencyConfig = LatencyConfig()):
        self.data = data
        self.train_cfg = train_cfg
        self.latency_cfg = latency_cfg

    def evaluate(self, spec: ArchSpec, seed: int | None = None) -> Objectives | EvalFailure:
        return self.evaluate_with_model(spec, seed)[0]

    def evaluate_with_model(self, spec: ArchSpec, seed: int | None = None, gate: RungGate | None = None):
        """Like :meth:`evaluate`, also returning the trained model (``None`` on failure). With a ``gate``,
        training may end at a rung: the result is then :class:`Stopped` (and the model ``None``)."""
        seed = self.train_cfg.seed if seed is None else seed
        cfg = TrainConfig(**{**self.train_cfg.to_dict(), "seed": seed})
        model = seeded_model(spec, seed, cfg.device)
        rungs: list[tuple[int, float, dict]] = []  # (rung, fraction, partial figures) of each rung reached
        at_checkpoint = self._rung_hook(gate, model, spec, rungs) if gate is not None else None
        try:
            res = train(model, self.data.train, cfg, checkpoints=gate.fractions if gate else (),
                        at_checkpoint=at_checkpoint)
        except TrainingDiverged as e:
            return EvalFailure(spec.id, f"training diverged: {e}"), None
        if res.stopped:
            i, fraction, partial = rungs[-1]
            return Stopped(spec.id, i, fraction, partial, res.seconds, res.epochs), None
        return score_model(model, spec, self.data.val, self.latency_cfg, seed=seed, train_seconds=res.seconds,
                           epochs=res.epochs, task_eval=task_evaluation(self.data))

    def _rung_hook(self, gate: RungGate, model, spec: ArchSpec, rungs: list):
        """The training loop's checkpoint hook: figures at the rung, recorded in ``rungs``, then the gate decides."""
        def at_checkpoint(i: int, step: int, total: int) -> bool:
            partial = partial_figures(model, spec, self.data.val, self.latency_cfg, gate.needs,
                                      rungs[0][2] if rungs else None, task_evaluation(self.data))
            rungs.append((i, gate.fractions[i], partial))
            return gate.decide(i, gate.fractions[i], partial)

        return at_checkpoint


def task_evaluation(data: Splits):
    """The task's figures of a trained model on the validation split (``None`` without a task block):
    for an anomaly task, AUROC / AUPRC of each listed score and the kept score's threshold."""
    if getattr(data, "task", None) is None:
        return None
    from .anomaly import anomaly_figures

    return lambda model: anomaly_figures(model, data.score_val, data.val_labels, data.task)


def partial_figures(model, spec: ArchSpec, val_data, latency_cfg: LatencyConfig, needs, earlier: dict | None,
                    task_eval=None) -> dict:
    """A partly trained model's figures at a rung: validation −ELBO now, exact static costs and, when
    ``needs`` it, measured latency (taken from ``earlier``, the first rung's figures, when given:
    the graph, and so its timing, does not change with training)."""
    val = evaluate_neg_elbo(model, val_data)["neg_elbo"]
    costs = {k: v for k, v in asdict(static_costs(spec)).items() if k != "uncounted_ops"}
    out = {"neg_elbo": val if math.isfinite(val) else float("inf"), **costs}
    if task_eval is not None:
        fig = task_eval(model)
        out.update({k: fig[k] if math.isfinite(fig[k]) else 0.0 for k in ("auroc", "auprc")})
    if "latency_ms" in needs:
        out["latency_ms"] = earlier["latency_ms"] if earlier else measure_latency(model, latency_cfg).median_ms
    return out


def score_model(model, spec: ArchSpec, val_data, latency_cfg: LatencyConfig, *, seed: int, train_seconds: float,
                epochs: float, estimate: bool = False, latency_table=None, task_eval=None):
    """Score a ready model: validation −ELBO, static costs, measured latency -> ``(Objectives, model)``;
    with ``task_eval`` (:func:`task_evaluation`) also the task's validation figures (AUROC, AUPRC).

    ``estimate=True`` marks the −ELBO as inherited from a supernet (an estimate, not a standalone figure).
    ``latency_table`` (:class:`~evaluator.latency_table.LatencyTable`): latency is its ESTIMATE, not measured.
    """
    t0 = time.perf_counter()
    val = evaluate_neg_elbo(model, val_data)["neg_elbo"]
    if not math.isfinite(val):
        return EvalFailure(spec.id, f"validation −ELBO is {val}"), None
    task = task_eval(model) if task_eval is not None else {}
    if task and not math.isfinite(task["auroc"]):
        return EvalFailure(spec.id, f"the anomaly scores are not finite (validation AUROC {task['auroc']})"), None
    costs = static_costs(spec)
    mcu = {}
    if latency_table is not None:
        lat_ms, lat_iqr, lat_path, threads = latency_table.estimate_ms(spec), float("nan"), \
            f"latency table ({latency_table.backend}): ESTIMATE", latency_cfg.threads
    elif latency_cfg.backend == "cortex_m":
        mcu = _mcu_figures(model, latency_cfg)
        lat_ms, lat_iqr, lat_path, threads = mcu.pop("latency_ms"), 0.0, mcu.pop("latency_path"), 1
    else:
        lat = measure_latency(model, latency_cfg)
        lat_ms, lat_iqr, lat_path, threads = lat.median_ms, lat.iqr_ms, lat.path, lat.threads
    return Objectives(
        spec_id=spec.id, neg_elbo=val, flops=costs.flops, bitops=costs.bitops, params=costs.params,
        size_bytes=costs.size_bytes, ram_bytes=mcu.get("ram_bytes", costs.ram_bytes),
        flash_bytes=mcu.get("flash_bytes", costs.flash_bytes), latency_ms=lat_ms,
        latency_iqr_ms=lat_iqr, latency_path=lat_path, latency_threads=threads, train_seconds=train_seconds,
        eval_seconds=time.perf_counter() - t0, epochs=epochs, seed=seed, neg_elbo_is_estimate=estimate,
        uncounted_ops=costs.uncounted_ops, bits_per_dim=image_bits_per_dim(spec, val),
        latency_is_estimate=latency_table is not None or bool(mcu), mcu_instructions=mcu.get("instructions", 0),
        mcu=mcu.get("mcu"), flash_is_estimate=not mcu, auroc=task.get("auroc", float("nan")),
        auprc=task.get("auprc", float("nan")), anomaly=task or None,
    ), model


def _mcu_figures(model, cfg: LatencyConfig) -> dict:
    """The Cortex-M build measured: exact flash, RAM and instructions, and the latency ESTIMATE from them."""
    import tempfile
    from pathlib import Path

    from .latency import measure_mcu, mcu_estimate_ms, mcu_path

    with tempfile.TemporaryDirectory(prefix="vaenas-mcu-") as tmp:
        m = measure_mcu(model, cfg, Path(tmp))
    m.pop("out")
    return {"flash_bytes": m["flash_bytes"], "ram_bytes": m["ram_bytes"], "instructions": m["instructions"],
            "latency_ms": mcu_estimate_ms(m, cfg), "latency_path": mcu_path(m, cfg),
            "mcu": {k: m[k] for k in ("cpu", "text", "data", "bss", "stack_bytes", "stack_bytes_su",
                                     "cycles_estimate", "cpi_assumed")}}
