"""Anomaly detection: the task block, the anomaly scores (one owner), AUROC / AUPRC and the threshold that ships.

A study (or ``vaenas train``/``retrain``) with ::

    task: {kind: anomaly, normal: [0], score: neg_elbo, samples: 8, threshold: {fpr: 0.01}}

trains on normal examples only (``evaluator/data.py`` drops every anomaly from the training split);
the validation and test splits hold normal examples the model never saw plus labelled anomalies.

Scores - higher means more anomalous, per example, in nats (``recon_error``: squared model-space units):

``neg_elbo``
    −ELBO: −(1/k) Σ log p(x | z_i) + KL(q(z|x) || N(0, I)), k = ``samples`` (default 1).
``iwae``
    IWAE-k bound on −log p(x): −log (1/k) Σ p(x|z_i) p(z_i) / q(z_i|x) (default k = 8).
``recon_prob``
    Reconstruction probability (An & Cho 2015), as −(1/k) Σ log p(x | z_i) (default k = 8).
``recon_error``
    Σ (x − mean of p(x | z = mu))² over the data's dimensions: no sampling at all.

Scores read the input as a device sees it, without randomness (``Likelihood.score_data``: a Bernoulli
model scores grey levels / 255, not a random binarisation; ``Splits.score_val`` / ``score_test``).
Noise is **fixed**: z_i = mu + exp(logvar / 2) * eps_i with ``eps`` = :func:`score_noise` (a seeded
``(k, latent)`` table, the same for every example), so a device computes the same score every time;
the C and ONNX exports carry the same table.

``score`` may list several scores (or ``all``): every listed score is computed on the validation
split and the trial keeps the one with the best validation AUROC (the score changes nothing in
training, so it is chosen like the threshold, on validation, rather than spending trials on it).

The threshold: an example is an anomaly when ``score > threshold``. ``threshold: {fpr: F}`` (default
``F = 0.01``) takes the lowest threshold whose validation false-positive rate is at most F;
``threshold: best_f1`` the one with the best validation F1. AUROC and AUPRC follow scikit-learn's
``roc_auc_score`` (ties count half) and ``average_precision_score``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from search_space import VaenasInputError

from .elbo import kl_std_normal

SCORE_SEED = 2015  # the fixed noise table's seed (An & Cho's year)


@dataclass(frozen=True)
class Score:
    name: str
    doc: str
    samples: int  # default Monte-Carlo samples (0: deterministic)


SCORES: dict[str, Score] = {s.name: s for s in (
    Score("neg_elbo", "−ELBO with fixed noise: −(1/k) Σ log p(x|z_i) + KL(q(z|x) || N(0, I)), nats", 1),
    Score("iwae", "IWAE-k bound on −log p(x) with fixed noise, nats", 8),
    Score("recon_prob", "negative reconstruction probability (An & Cho 2015): −(1/k) Σ log p(x|z_i) with fixed "
                        "noise, nats", 8),
    Score("recon_error", "squared reconstruction error Σ (x − mean of p(x|z=mu))², model space; no sampling", 0),
)}
TASK_KEYS = {"kind", "normal", "score", "samples", "threshold"}


@dataclass(frozen=True)
class AnomalyTask:
    """What is normal, which score(s) to compute and how the shipped threshold is chosen."""

    normal: tuple
    scores: tuple[str, ...] = ("neg_elbo",)
    samples: int | None = None  # None: each score's default
    fpr: float | None = 0.01  # None: best F1

    @classmethod
    def parse(cls, value: Any) -> "AnomalyTask":
        if isinstance(value, AnomalyTask):
            return value
        if not isinstance(value, dict):
            raise VaenasInputError(f"task: expected a mapping such as {{kind: anomaly, normal: [0]}}, got {value!r}")
        unknown = sorted(set(value) - TASK_KEYS)
        if unknown:
            raise VaenasInputError(f"task.{unknown[0]}: unknown key; allowed keys are {sorted(TASK_KEYS)}")
        if value.get("kind") != "anomaly":
            raise VaenasInputError(f"task.kind: {value.get('kind')!r} is not a task; use kind: anomaly")
        normal = value.get("normal")
        normal = [normal] if isinstance(normal, (int, str)) and not isinstance(normal, bool) else normal
        if not isinstance(normal, list) or not normal or not all(
                isinstance(v, (int, str)) and not isinstance(v, bool) for v in normal):
            raise VaenasInputError(f"task.normal: expected the normal class labels, e.g. [0] or [good], got "
                                   f"{value.get('normal')!r}; every other label is an anomaly")
        return cls(tuple(normal), _scores(value.get("score", "neg_elbo")), _samples(value.get("samples")),
                   _fpr(value.get("threshold", {"fpr": 0.01})))

    def to_config(self) -> dict:
        return {"kind": "anomaly", "normal": list(self.normal), "score": list(self.scores),
                "samples": self.samples, "threshold": "best_f1" if self.fpr is None else {"fpr": self.fpr}}

    def samples_for(self, score: str) -> int:
        return 0 if SCORES[score].samples == 0 else (self.samples or SCORES[score].samples)

    @property
    def rule(self) -> str:
        return "best F1 on validation" if self.fpr is None else f"validation FPR <= {self.fpr:g}"


def _scores(v: Any) -> tuple[str, ...]:
    names = list(SCORES) if v == "all" else [v] if isinstance(v, str) else v
    if not isinstance(names, list) or not names or any(n not in SCORES for n in names) or len(set(names)) < len(names):
        raise VaenasInputError(f"task.score: {v!r} is not a score; use one of {list(SCORES)}, a list of them, or all")
    return tuple(names)


def _samples(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024:
        raise VaenasInputError(f"task.samples: expected a whole number of noise samples 1..1024, got {v!r}")
    return v


def _fpr(v: Any) -> float | None:
    if v == "best_f1":
        return None
    f = v.get("fpr") if isinstance(v, dict) and set(v) == {"fpr"} else None
    if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
        raise VaenasInputError(f"task.threshold: expected {{fpr: F}} with 0 <= F < 1, or best_f1, got {v!r}")
    return float(f)


def check_anomaly_objectives(objectives: list[str], task: AnomalyTask | None) -> None:
    """``auroc``/``auprc`` need a task block: one line otherwise."""
    needing = [o for o in objectives if o in ("auroc", "auprc")]
    if needing and task is None:
        raise VaenasInputError(f"objectives: {needing[0]} needs labelled anomalies; add a task block "
                               "(task: {kind: anomaly, normal: [...]}) or drop the objective")


# ----------------------------------------------------------------------------- scores
def score_noise(latent_dim: int, samples: int) -> torch.Tensor:
    """The fixed ``(samples, latent_dim)`` standard-normal table every export of a score uses."""
    return torch.randn((samples, latent_dim), generator=torch.Generator().manual_seed(SCORE_SEED))


def _batch_scores(model, x: torch.Tensor, kind: str, eps: torch.Tensor | None) -> torch.Tensor:
    lik = model.likelihood
    mu, logvar = model.encode(x)
    if kind == "recon_error":
        m = lik.mean(model.decode(mu))
        return (m.flatten(1) - x.flatten(1)).pow(2).sum(1)
    k, b, d = eps.shape[0], len(x), mu.shape[1]
    z = mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * eps.unsqueeze(1)  # (k, b, d)
    out = model.decode(z.reshape(k * b, d))
    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
    log_px = lik.log_prob(out, xs).view(k, b)
    if kind == "recon_prob":
        return -log_px.mean(0)
    if kind == "neg_elbo":
        return -log_px.mean(0) + kl_std_normal(mu, logvar)
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    log_qz = -0.5 * (eps.pow(2).unsqueeze(1) + math.log(2 * math.pi) + logvar.unsqueeze(0)).sum(-1)
    return -(torch.logsumexp(log_px + log_pz - log_qz, 0) - math.log(k))


@torch.inference_mode()
def anomaly_scores(model, data: torch.Tensor, kind: str, samples: int | None = None,
                   batch_size: int = 500) -> np.ndarray:
    """Per-example score ``kind`` of ``data`` (model space), float64, with the fixed noise table."""
    if kind not in SCORES:
        raise ValueError(f"score {kind!r} is not one of {list(SCORES)}")
    k = 0 if SCORES[kind].samples == 0 else (samples or SCORES[kind].samples)
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    eps = score_noise(model.spec.latent_dim, k).to(device) if k else None
    rows = max(1, batch_size // max(1, k))
    out = [_batch_scores(model, data[i:i + rows].to(device, torch.float32), kind, eps).double().cpu()
           for i in range(0, len(data), rows)]
    model.train(was)
    return torch.cat(out).numpy()


# ----------------------------------------------------------------------------- metrics
def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels).astype(bool).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s) or y.all() or not y.any():
        raise ValueError("AUROC/AUPRC need as many scores as labels and both normal and anomalous examples")
    return y, s


def auroc(labels, scores) -> float:
    """Area under the ROC curve (anomaly = positive), ties counted half (scikit-learn's ``roc_auc_score``)."""
    y, s = _check(labels, scores)
    if not np.isfinite(s).all():
        return float("nan")
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average 1-based ranks
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _desc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At each distinct score (descending): true and false positives of ``score >= that score``."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tps = np.cumsum(y)[ends].astype(np.float64)
    return tps, (ends + 1) - tps, s[ends]


def auprc(labels, scores) -> float:
    """Average precision (scikit-learn's ``average_precision_score``): Σ (R_n − R_{n−1}) P_n."""
    y, s = _check(labels, scores)
    tps, fps, _ = _desc_counts(y, s)
    precision, recall = tps / (tps + fps), tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    y, s = _check(labels, scores)
    tps, fps, _ = _desc_counts(y, s)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


@dataclass(frozen=True)
class Threshold:
    value: float
    fpr: float  # on validation, of "score > value"
    tpr: float
    f1: float


def rates(labels, scores, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR, F1) of the rule ``score > threshold``."""
    y, s = _check(labels, scores)
    pred = s > threshold
    tp, fp = float((pred & y).sum()), float((pred & ~y).sum())
    fn = float((~pred & y).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return fp / float((~y).sum()), tp / float(y.sum()), f1


def choose_threshold(labels, scores, fpr: float | None) -> Threshold:
    """The shipped threshold: the lowest whose validation FPR is <= ``fpr`` (None: the best F1)."""
    y, s = _check(labels, scores)
    if fpr is not None:
        normal = np.sort(s[~y])
        allowed = int(math.floor(fpr * len(normal) + 1e-9))  # normals that may score above the threshold
        t = float(normal[len(normal) - allowed - 1])
    else:  # F1 of "score > each distinct score" from one sort: the groups above it are the predicted anomalies
        tps, fps, values = _desc_counts(y, s)
        tp, fp = np.r_[0.0, tps[:-1]], np.r_[0.0, fps[:-1]]
        f1 = 2 * tp / (tp + fp + float(y.sum()))
        t = float(values[np.flatnonzero(f1 == f1.max())[-1]])  # ties: the lowest threshold
    f, tp, f1 = rates(y, s, t)
    return Threshold(t, f, tp, f1)


# ----------------------------------------------------------------------------- a trained model's figures
def anomaly_figures(model, val: torch.Tensor, val_labels: torch.Tensor, task: AnomalyTask) -> dict:
    """Validation AUROC / AUPRC of every listed score; the best one's threshold. What a trial records."""
    y = val_labels.numpy().astype(bool)
    by_score, kept = {}, None
    for kind in task.scores:
        s = anomaly_scores(model, val, kind, task.samples_for(kind) or None)
        if not np.isfinite(s).all():
            by_score[kind] = float("nan")
            continue
        by_score[kind] = auroc(y, s)
        if kept is None or by_score[kind] > by_score[kept[0]]:
            kept = (kind, s)
    if kept is None:
        return {"auroc": float("nan"), "auprc": float("nan"), "score": task.scores[0], "val_auroc_by_score": by_score}
    kind, s = kept
    th = choose_threshold(y, s, task.fpr)
    return {"auroc": by_score[kind], "auprc": auprc(y, s), "score": kind, "samples": task.samples_for(kind),
            "threshold": th.value, "rule": task.rule, "val_fpr": th.fpr, "val_tpr": th.tpr, "val_f1": th.f1,
            "val_auroc_by_score": by_score}


def test_figures(model, test: torch.Tensor, test_labels: torch.Tensor, anomaly: dict) -> dict:
    """The test split's AUROC / AUPRC and the shipped threshold's FPR / TPR there (final reports only)."""
    y = test_labels.numpy().astype(bool)
    s = anomaly_scores(model, test, anomaly["score"], anomaly.get("samples") or None)
    f, t, f1 = rates(y, s, anomaly["threshold"])
    return {"test_auroc": auroc(y, s), "test_auprc": auprc(y, s), "test_fpr": f, "test_tpr": t, "test_f1": f1}


def export_section(fig: dict, task: AnomalyTask) -> dict:
    """What ``manifest.json`` says of the shipped score: what it means, its noise, its threshold and how that
    threshold does on validation."""
    return {
        "score": fig["score"], "meaning": SCORES[fig["score"]].doc, "samples": fig.get("samples", 0),
        "noise": (f"fixed: eps = torch.randn(({fig.get('samples', 0)}, latent), generator seeded {SCORE_SEED}); "
                  "z_k = mu + exp(logvar / 2) * eps[k]") if fig.get("samples") else "none (z = mu)",
        "noise_seed": SCORE_SEED, "higher_is_anomalous": True, "normal": list(task.normal),
        "threshold": fig["threshold"], "rule": fig["rule"],
        "validation": {"fpr": fig["val_fpr"], "tpr": fig["val_tpr"], "f1": fig["val_f1"], "auroc": fig["auroc"],
                       "auprc": fig["auprc"]},
        "api": {"c": ["float vae_score(const float *x)", "int vae_is_anomaly(const float *x)  /* score > threshold */"],
                "onnx": "score.onnx: x -> score (N,), is_anomaly (N,)"},
    }
