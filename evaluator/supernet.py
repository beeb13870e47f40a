"""Training a weight-sharing supernet (sandwich rule + in-place distillation) and scoring specs on it.

Sandwich rule (Yu et al., BigNAS/"universally slimmable"): each step trains the largest spec,
the smallest spec and ``n_random`` random specs of the space on the same batch and noise; the
largest learns the −ELBO, the others the −ELBO plus ``kd_weight`` times in-place distillation
from the largest: the likelihood's ``distill`` term between their decoder outputs and the largest
spec's (detached) ones - for Bernoulli, the binary cross-entropy of their logits against the
largest spec's pixel probabilities. With elastic depth (per-depth boundary layers, see
``search_space/supernet.py``) the widest spec of *every* depth is trained each step
(``per_depth_max``), so shallow specs' own layers are not left to random sampling. It is a
``step_loss`` for the one training loop.

Scores from inherited weights are *estimates* (``neg_elbo_is_estimate=True`` wherever shown).

Calibration (:class:`DepthCalibration`): within one depth the supernet ranks specs well, but its
error differs by depth and size: shallow wide specs look far worse than they train while deep ones
are close (``benchmarks/supernet_fidelity.py``; figures in ``benchmarks/README.md``). So before scoring,
the smallest and the largest spec of every depth (anchors) are trained standalone with the
study's recipe; per depth, the offset measured − estimated is interpolated linearly in
log(params) between its two anchors and added to every estimate of that depth. ("Depth" is a
spec's structural group, :func:`~search_space.supernet.group_of`: the MLP depth, or the pair of
conv depth and FC depth for conv spaces.) The result is
still an ESTIMATE (labelled so); the raw supernet figure is kept beside it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, fields

import torch

from search_space import ArchSpec, SearchSpace, VaenasInputError
from search_space.errors import check_block, check_type
from search_space.supernet import build_supernet, extreme_spec, group_of, structure_groups

from .data import Splits
from .elbo import evaluate_neg_elbo, kl_std_normal
from .latency import LatencyConfig
from .costs import count_params
from .objectives import EvalFailure, image_bits_per_dim, score_model, task_evaluation
from .train import TrainConfig, TrainingDiverged, resolve_device, seeded_model, train


@dataclass(frozen=True)
class SandwichConfig:
    n_random: int = 2
    kd_weight: float = 1.0
    seed: int = 0
    per_depth_max: bool = True


def sandwich_loss(space: SearchSpace, cfg: SandwichConfig = SandwichConfig()):
    big, small = extreme_spec(space, "max"), extreme_spec(space, "min")
    others = [small]
    if cfg.per_depth_max:
        others += [extreme_spec(space, "max", depth=d) for d in structure_groups(space) if d != group_of(big)]
    rng = random.Random(cfg.seed)

    def loss(net, x: torch.Tensor, g: torch.Generator, beta: float) -> torch.Tensor:
        eps = torch.randn((len(x), net.max_latent), generator=g, device=x.device)
        lik = net.likelihood

        def terms(spec: ArchSpec):
            out, mu, logvar = net(x, spec, eps[:, : spec.latent_dim])
            rec = -lik.log_prob(out, x)
            return out, (rec + beta * kl_std_normal(mu, logvar)).mean()

        t_out, total = terms(big)
        target = t_out.detach()
        for spec in others + [space.sample(rng) for _ in range(cfg.n_random)]:
            out, l = terms(spec)
            kd = lik.distill(out, target).mean()
            total = total + l + cfg.kd_weight * kd
        return total

    return loss


def train_supernet(space: SearchSpace, data: Splits, cfg: TrainConfig, sandwich: SandwichConfig = SandwichConfig(),
                   progress: bool = False):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = build_supernet(space)
    net.to(resolve_device(cfg.device))
    res = train(net, data.train, cfg, step_loss=sandwich_loss(space, sandwich), progress=progress)
    return net, res


def finetune_config(train_cfg: TrainConfig, steps: int, seed: int | None = None) -> TrainConfig:
    """The recipe for fine-tuning inherited weights: ``train_cfg``'s lr and batch size for ``steps``
    steps at constant lr, quantised from the first step, no KL or lr warm-up."""
    return TrainConfig(**{**train_cfg.to_dict(), "max_steps": steps, "lr_schedule": "constant", "qat_delay": 0.0,
                          "kl_warmup_steps": 0, "lr_warmup_steps": 0,
                          **({} if seed is None else {"seed": seed})})


def estimate_neg_elbo(net, spec: ArchSpec, data: torch.Tensor, seed: int = 0) -> float:
    """Validation −ELBO of ``spec`` with inherited weights - an ESTIMATE, not a standalone-trained figure."""
    return evaluate_neg_elbo(net.extract(spec), data, seed=seed)["neg_elbo"]


@dataclass(frozen=True)
class SupernetConfig:
    """A study's supernet-backed evaluation (the ``supernet:`` block of a study config)."""

    epochs: float = 10.0  # supernet training epochs (sandwich steps over the training split)
    n_random: int = 2
    kd_weight: float = 1.0
    finetune_steps: int = 0  # per-spec fine-tune of the inherited weights before scoring (0: none;
    #                          conv spaces rank well only with one: benchmarks/README.md)
    n_val: int | None = 2000  # validation images the estimate is computed on (None: all)
    remeasure: int = 10  # front specs re-measured by standalone training after the search
    calibrate: bool = True  # anchor estimates per depth on standalone-trained extreme specs
    latency_table: bool = True  # latency of scored specs from a per-layer table fitted once per study (ESTIMATES)

    def sandwich(self, seed: int) -> SandwichConfig:
        return SandwichConfig(n_random=self.n_random, kd_weight=self.kd_weight, seed=seed)

    @classmethod
    def from_config(cls, block, space: SearchSpace) -> "SupernetConfig":
        """A study config's ``supernet:`` block for ``space`` (one line naming ``supernet.KEY`` on bad input)."""
        sn = check_block("supernet", block, {f.name for f in fields(cls)})
        if len(space.family) != 1:
            raise VaenasInputError(f"supernet: needs a one-family space (space.family: [mlp] or [conv]), got "
                                   f"{list(space.family)} - split the study by family or remove the supernet block")
        if space.compression_keys:
            raise VaenasInputError(f"supernet: the weight-sharing supernet cannot carry space.{space.compression_keys[0]} "
                                   "(its one shared weight per layer is neither pruned, factorised nor k-means coded "
                                   "per subnet); remove it from the space or remove the supernet block")
        if "int8" in space.arithmetic:
            raise VaenasInputError("supernet: the weight-sharing supernet runs float activations, so it cannot estimate "
                                   "an int8 spec (space.arithmetic); use arithmetic [float] or remove the supernet block")
        for k, t in (("epochs", (int, float)), ("n_random", int), ("kd_weight", (int, float)),
                     ("finetune_steps", int), ("remeasure", int), ("calibrate", bool), ("latency_table", bool)):
            if k in sn:
                check_type(f"supernet.{k}", sn[k], t)
        if "n_val" in sn:
            check_type("supernet.n_val", sn["n_val"], int, allow_none=True)
        return cls(**sn)._checked()

    def _checked(self) -> "SupernetConfig":
        for k in ("epochs", "n_val"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise VaenasInputError(f"supernet.{k}: must be > 0, got {v!r}")
        for k in ("n_random", "finetune_steps", "remeasure"):
            if getattr(self, k) < 0:
                raise VaenasInputError(f"supernet.{k}: must be >= 0, got {getattr(self, k)!r}")
        if self.kd_weight < 0:
            raise VaenasInputError(f"supernet.kd_weight: must be >= 0, got {self.kd_weight!r}")
        return self


@dataclass
class DepthCalibration:
    """Per depth: anchors ``(log params, measured − estimated)``; offsets interpolated between them."""

    anchors: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, spec: ArchSpec, measured: float, estimated: float) -> None:
        """Record an anchor: ``spec`` trained standalone to ``measured``, estimated at ``estimated``."""
        self.anchors.setdefault(group_of(spec), []).append((math.log(count_params(spec)), measured - estimated))

    def offset(self, spec: ArchSpec) -> float:
        pts = sorted(self.anchors.get(group_of(spec), []))
        if not pts:
            return 0.0
        x = math.log(count_params(spec))
        if len(pts) == 1 or pts[-1][0] == pts[0][0]:
            return float(sum(p[1] for p in pts) / len(pts))
        (x0, y0), (x1, y1) = pts[0], pts[-1]
        t = min(1.0, max(0.0, (x - x0) / (x1 - x0)))  # no extrapolation beyond the anchors
        return float(y0 + t * (y1 - y0))

    def to_dict(self) -> dict:
        return {"anchors": {str(d): a for d, a in self.anchors.items()}, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: dict) -> "DepthCalibration":
        key = lambda k: int(k) if k.isdigit() else k  # noqa: E731 - MLP depths are ints, conv groups strings
        return cls({key(k): [tuple(p) for p in v] for k, v in d["anchors"].items()}, d.get("seconds", 0.0))


def anchor_specs(space: SearchSpace) -> list[ArchSpec]:
    """The smallest and the largest spec of every structural group (depth) of the space (distinct)."""
    out: dict[str, ArchSpec] = {}
    for d in structure_groups(space):
        for which in ("min", "max"):
            s = extreme_spec(space, which, depth=d)
            out.setdefault(s.id, s)
    return list(out.values())


def calibrate_depths(net, data: Splits, train_cfg: TrainConfig, val: torch.Tensor,
                     seed: int = 0, estimate=None) -> DepthCalibration:
    """Train each anchor spec standalone (``train_cfg``), compare with its supernet estimate on ``val``
    (``estimate(spec) -> nats``; default: inherited weights as they are)."""
    import time

    t0 = time.perf_counter()
    cal = DepthCalibration()
    for spec in anchor_specs(net.space):
        est = estimate(spec) if estimate is not None else evaluate_neg_elbo(net.extract(spec), val)["neg_elbo"]
        model = seeded_model(spec, seed, resolve_device(train_cfg.device))
        train(model, data.train, TrainConfig(**{**train_cfg.to_dict(), "seed": seed}))
        meas = evaluate_neg_elbo(model, val)["neg_elbo"]
        if math.isfinite(meas) and math.isfinite(est):
            cal.add(spec, meas, est)
    cal.seconds = time.perf_counter() - t0
    return cal


class SupernetEvaluator:
    """Scores specs with weights inherited from a trained supernet: the −ELBO is an ESTIMATE.

    Costs (size, FLOPs, params) are exact and latency is measured on the extracted model, as for
    standalone trials; only the −ELBO differs, and every result carries ``neg_elbo_is_estimate``.
    Same ``evaluate_with_model`` interface as :class:`~evaluator.Evaluator`.
    """

    def __init__(self, net, data: Splits, train_cfg: TrainConfig, latency_cfg: LatencyConfig,
                 cfg: SupernetConfig = SupernetConfig(), calibration: DepthCalibration | None = None):
        self.net, self.data, self.train_cfg, self.latency_cfg, self.cfg = net, data, train_cfg, latency_cfg, cfg
        self.val = data.val if cfg.n_val is None else data.val[: cfg.n_val]
        self.calibration = calibration
        self.latency_table = None  # a LatencyTable: latency estimated from it instead of measured
        self.train_seconds = 0.0  # set by whoever trained the supernet (reporting only)

    def evaluate(self, spec: ArchSpec, seed: int | None = None):
        return self.evaluate_with_model(spec, seed)[0]

    def evaluate_with_model(self, spec: ArchSpec, seed: int | None = None):
        seed = self.train_cfg.seed if seed is None else seed
        model = self.net.extract(spec)
        seconds, epochs = 0.0, 0.0
        if self.cfg.finetune_steps > 0:
            try:
                res = train(model, self.data.train, finetune_config(self.train_cfg, self.cfg.finetune_steps, seed))
            except TrainingDiverged as e:
                return EvalFailure(spec.id, f"fine-tune diverged: {e}"), None
            seconds, epochs = res.seconds, res.epochs
        result, model = score_model(model, spec, self.val, self.latency_cfg, seed=seed, train_seconds=seconds,
                                    epochs=epochs, estimate=True, latency_table=self.latency_table,
                                    task_eval=task_evaluation(self.data))
        if self.calibration is not None and not isinstance(result, EvalFailure):
            from dataclasses import replace

            raw = result.neg_elbo
            cal = raw + self.calibration.offset(spec)
            result = replace(result, neg_elbo=cal, neg_elbo_uncalibrated=raw, bits_per_dim=image_bits_per_dim(spec, cal))
        return result, model
