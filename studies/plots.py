"""Plots of a study (compute first, then draw): 2-D fronts, hypervolume vs trials, knee reconstructions."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from strategies.pareto import kendall_tau, non_dominated_mask  # noqa: E402
from search_space import ArchSpec, build_vae  # noqa: E402

from evaluator import LABELS  # noqa: E402 - the objectives' axis labels

from .report import StudyView, hypervolume_curve, reported_mask  # noqa: E402



# Colour = parameter-weighted mean weight bits (ArchSpec.mean_bits), one distinct colour per usual
# bit-width: 2, 3, 4, 6, 8, 16, 32 bits each get their own band (a 2-32 gradient made them all alike).
BIT_LEVELS = (2, 3, 4, 6, 8, 16, 32)
BIT_EDGES = (1.0, 2.5, 3.5, 5.0, 7.0, 12.0, 24.0, 33.0)
BIT_COLOURS = ("#1f77b4", "#17becf", "#2ca02c", "#bcbd22", "#ff7f0e", "#d62728", "#7f7f7f")
BITS_CMAP = matplotlib.colors.ListedColormap(BIT_COLOURS)
BITS_NORM = matplotlib.colors.BoundaryNorm(BIT_EDGES, BITS_CMAP.N)
BITS_LABEL = "mean weight bits, weighted by parameters"


def bits_colour(bits: float) -> str:
    """The colour of a parameter-weighted mean bit-width (the same bands as the PNG plots)."""
    i = int(np.searchsorted(BIT_EDGES, bits, side="right")) - 1
    return BIT_COLOURS[min(max(i, 0), len(BIT_COLOURS) - 1)]


def _bits_colorbar(fig, mappable, ax) -> None:
    cb = fig.colorbar(mappable, ax=ax, label=BITS_LABEL)
    cb.set_ticks([(a + b) / 2 for a, b in zip(BIT_EDGES[:-1], BIT_EDGES[1:])])
    cb.set_ticklabels([f"≈{b}" for b in BIT_LEVELS])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def front_plot(view: StudyView, x: str, y: str, path: Path) -> Path:
    df = view.trials
    xs, ys = df[x].to_numpy(float), df[y].to_numpy(float)
    bits = df["mean_bits"].to_numpy(float)
    ok = df["feasible"].to_numpy(bool) if "feasible" in df else np.ones(len(df), bool)
    base = reported_mask(df) if len(df) else ok  # measured trials where a supernet study has them
    est = df["neg_elbo_is_estimate"].fillna(False).to_numpy(bool) if "neg_elbo_is_estimate" in df \
        else np.zeros(len(df), bool)
    aside = ok & ~base  # supernet estimates shown beside a measured front
    on2d = np.zeros(len(df), bool)
    if base.any():
        on2d[base] = non_dominated_mask(np.stack([xs[base], ys[base]], 1))
    order = np.argsort(xs[on2d])
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if (~ok).any():
        ax.scatter(xs[~ok], ys[~ok], marker="x", color="grey", alpha=0.6, s=30,
                   label=f"infeasible: breaks the study's constraints ({int((~ok).sum())})")
    if aside.any():
        ax.scatter(xs[aside], ys[aside], facecolors="none", edgecolors="grey", alpha=0.5, s=25,
                   label=f"search trials, −ELBO ESTIMATED on the supernet ({int(aside.sum())})")
        if "remeasure_of" in df:
            by_trial = df.set_index("trial")
            for _, r in df[df["phase"] == "remeasure"].iterrows():
                src = int(r["remeasure_of"])
                if src in by_trial.index:
                    e = by_trial.loc[src]
                    ax.annotate("", xy=(r[x], r[y]), xytext=(e[x], e[y]),
                                arrowprops={"arrowstyle": "->", "color": "tab:red", "alpha": 0.5, "lw": 0.8})
    dom = ~on2d & base
    kind = "estimated" if (base & est).any() else "measured"
    ax.scatter(xs[dom], ys[dom], c=bits[dom], cmap=BITS_CMAP, norm=BITS_NORM, alpha=0.3, s=30,
               label=f"dominated, {kind} ({int(dom.sum())})")
    sc = ax.scatter(xs[on2d], ys[on2d], c=bits[on2d], cmap=BITS_CMAP, norm=BITS_NORM, s=70, edgecolors="black",
                    label=f"Pareto front, {kind} −ELBO ({int(on2d.sum())})", zorder=3)
    ax.step(xs[on2d][order], ys[on2d][order], where="post", color="black", lw=1, alpha=0.7, zorder=2)
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 30:
        log_axis(ax.xaxis)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(LABELS.get(y, y))
    tag = " [−ELBO ESTIMATED on a supernet]" if kind == "estimated" else \
        (" [front re-measured; arrows: estimate → measured]" if aside.any() else "")
    ax.set_title(f"{view.name}: {y} vs {x} ({len(df)} trials){tag}", fontsize=10)
    _bits_colorbar(fig, sc, ax)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def log_axis(axis) -> None:
    """A log-scaled axis labelled at 1, 2 and 5 (1 and 3; 1 over many decades) times powers of ten, in plain
    numbers, minor ticks unlabelled:
    over a decade or two matplotlib's default labels every minor tick (2x10^-2 3x10^-2 ...) and they print
    over each other."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.axes.set_xscale("log") if axis is axis.axes.xaxis else axis.axes.set_yscale("log")
    lo, hi = sorted(abs(v) for v in axis.get_data_interval())
    decades = math.log10(hi / lo) if lo > 0 else 9.0
    subs = (1.0, 2.0, 5.0) if decades <= 1.6 else ((1.0, 3.0) if decades <= 2.6 else (1.0,))
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def estimate_plot(view: StudyView, path: Path) -> Path | None:
    """Supernet studies: each re-measured spec's estimated vs measured −ELBO."""
    df = view.trials
    if "phase" not in df or not (df["phase"] == "remeasure").any():
        return None
    r = df[(df["phase"] == "remeasure") & df["estimate_neg_elbo"].notna()]
    meas, est = r["neg_elbo"].to_numpy(float), r["estimate_neg_elbo"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(meas, est, s=50, edgecolors="black", c=r["mean_bits"].to_numpy(float), cmap=BITS_CMAP, norm=BITS_NORM)
    _bits_colorbar(fig, sc, ax)
    lo, hi = float(min(meas.min(), est.min())), float(max(meas.max(), est.max()))
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1, label="estimate = measured")
    ax.set_xlabel("standalone-trained validation −ELBO (MEASURED)")
    cal = bool(r["estimate_neg_elbo_uncalibrated"].notna().any())
    ax.set_ylabel("supernet validation −ELBO (ESTIMATE" + (", depth-calibrated)" if cal else ")"))
    ax.set_title(f"{view.name}: {len(r)} front specs re-measured, Kendall τ {kendall_tau(est, meas):.2f}", fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def hv_plot(view: StudyView, path: Path) -> Path:
    xs, ys = hypervolume_curve(view)
    df = view.trials
    est = "neg_elbo_is_estimate" in df and bool(df["neg_elbo_is_estimate"].fillna(False).any())
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xs, ys, marker="o", ms=3,
            label="hypervolume of trials so far" + (" (−ELBO ESTIMATED on the supernet)" if est else ""))
    ax.set_xlabel("trial number")
    ax.set_ylabel("hypervolume (normalised, declared bounds)")
    ax.set_title(f"{view.name}: hypervolume over {', '.join(view.objectives)}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)


def recon_plot(checkpoint: Path, images: torch.Tensor, path: Path, title: str, n: int = 8, seed: int = 0) -> Path:
    """Test inputs, their reconstructions and samples from the prior (the likelihood's means at ``z``):
    an image grid (grey or colour) for image models, per-feature curves for vector models.
    ``images``: test data in model space (``Splits.test``)."""
    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    spec = ArchSpec.from_json(ck["spec"])
    model = build_vae(spec)
    model.load_state_dict(ck["state_dict"])
    model.eval()
    lik = model.likelihood
    x = images[:n].float()
    n = len(x)
    with torch.no_grad():
        mu, _ = model.encode(x)
        recon = lik.mean(model.decode(mu))
        z = torch.randn((n, spec.latent_dim), generator=torch.Generator().manual_seed(seed))
        samples = lik.mean(model.decode(z))
    if not spec.is_image:
        return _vector_plot(x, recon, samples, path, title, standardised="normalization" in ck)
    rows = [("input (test)", x), ("reconstruction (mean)", recon), ("samples from prior (mean)", samples)]
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 4.2), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        shown = lik.to_unit(imgs)
        for c in range(n):
            ax = axes[r, c]
            if shown.shape[1] == 1:
                ax.imshow(shown[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(shown[c].permute(1, 2, 0).numpy())  # RGB, values in [0, 1]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def samples_png(model, x: torch.Tensor, path: Path, standardised: bool = False, seed: int = 0) -> Path:
    """A trial's picture, cheap enough for every trial: inputs, reconstructions (means) and prior
    samples (means) as one image grid (rows; torchvision's ``save_image``), or per-feature curves for
    vector models. ``x``: a few validation examples in model space."""
    model.eval()
    lik = model.likelihood
    x = x.float().to(next(model.parameters()).device)
    with torch.no_grad():
        mu, _ = model.encode(x)
        recon = lik.mean(model.decode(mu))
        z = torch.randn((len(x), model.spec.latent_dim), generator=torch.Generator().manual_seed(seed)).to(x.device)
        samples = lik.mean(model.decode(z))
    x, recon, samples = x.cpu(), recon.cpu(), samples.cpu()
    if not model.spec.is_image:
        return _vector_plot(x, recon, samples, path, f"{model.spec.id}: inputs, reconstructions, samples",
                            standardised=standardised)
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    grid = torch.cat([lik.to_unit(x), lik.to_unit(recon), lik.to_unit(samples)]).clamp(0, 1)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    save_image(grid, str(tmp), nrow=len(x), padding=1, pad_value=0.5)
    tmp.replace(path)
    return path


def _vector_plot(x: torch.Tensor, recon: torch.Tensor, samples: torch.Tensor, path: Path, title: str,
                 standardised: bool, k: int = 4) -> Path:
    """Vector data: for ``k`` test examples, each feature's value and its reconstruction; below, the
    prior samples' means against the test examples' spread."""
    d = x.shape[1]
    feats = np.arange(d)
    unit = "standardised value" if standardised else "value"
    fig, axes = plt.subplots(k + 1, 1, figsize=(max(7.0, min(16.0, 0.25 * d)), 1.8 * (k + 1)), sharex=True)
    for i in range(min(k, len(x))):
        ax = axes[i]
        ax.plot(feats, x[i].numpy(), "o", ms=4, color="black", label="input (test)")
        ax.plot(feats, recon[i].numpy(), "-", color="tab:blue", label="reconstruction (mean)")
        ax.set_ylabel(f"example {i}\n{unit}", fontsize=8)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8, loc="upper right")
    ax = axes[-1]
    lo, hi = x.min(0).values.numpy(), x.max(0).values.numpy()
    ax.fill_between(feats, lo, hi, color="grey", alpha=0.25, label="range of the test examples shown")
    for j in range(len(samples)):
        ax.plot(feats, samples[j].numpy(), "-", lw=0.8, alpha=0.7, color="tab:orange",
                label="samples from prior (mean)" if j == 0 else None)
    ax.set_ylabel(unit, fontsize=8)
    ax.set_xlabel("feature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def make_plots(view: StudyView, out_dir: Path, images: torch.Tensor | None, knee_trial: int | None,
               checkpoint: Path | None, x: list[str] | None = None, y: str = "neg_elbo") -> list[Path]:
    paths = []
    task_y = [o for o in view.objectives if o in ("auroc", "auprc")]
    y = task_y[0] if task_y and y == "neg_elbo" else y  # an anomaly study: its score against each cost
    if len(view.trials):
        limits = list(view.study.user_attrs.get("config", {}).get("constraints") or {})
        xs = x or [o for o in view.objectives if o != y] or [k for k in limits if k in view.trials] or ["size_bytes"]
        for cost in xs:
            paths.append(front_plot(view, cost, y, out_dir / f"front_{cost}.png"))
        paths.append(hv_plot(view, out_dir / "hypervolume.png"))
        p = estimate_plot(view, out_dir / "estimate_vs_measured.png")
        if p is not None:
            paths.append(p)
    if images is not None and checkpoint is not None and checkpoint.exists():
        t = view.trials.set_index("trial").loc[knee_trial]
        bpd = t.get("bits_per_dim")
        bpd = f" ({bpd:.3f} bits/dim)" if bpd is not None and bpd == bpd else ""
        title = (f"{view.name}: knee trial {knee_trial} ({t['spec_id']}), −ELBO {t['neg_elbo']:.1f} nats{bpd}, "
                 + (f"AUROC {t['auroc']:.4f}, " if task_y else "") +
                 f"{int(t['size_bytes']):,} bytes, {t['mean_bits']:.1f} bits/weight")
        paths.append(recon_plot(checkpoint, images, out_dir / "knee_reconstructions.png", title))
    return paths


def anomaly_plots(view: StudyView, out_dir: Path, data, runs_dir, knee: int | None, load_model,
                  max_curves: int = 6) -> list[Path]:
    """An anomaly study's final pictures, on the TEST split: ROC curves of the knee and the front (``roc.png``)
    and each one's normal-vs-anomaly score histograms with its shipped threshold (``knee_scores.png``, the
    knee first). ``load_model(path)``: a trial's model from its checkpoint."""
    from evaluator.anomaly import anomaly_scores, auroc, roc_curve

    from .files import study_dir

    front = [int(t) for t in view.front["trial"]][:max_curves]
    trials = ([knee] if knee is not None else []) + [t for t in front if t != knee]
    y = data.test_labels.numpy().astype(bool)
    curves = []
    for n in trials:
        ck = study_dir(runs_dir, view.name) / "trials" / str(n) / "model.pt"
        info = _trial_anomaly(view, n)
        if not ck.is_file() or not info:
            continue
        s = anomaly_scores(load_model(ck), data.score_test, info["score"], info.get("samples") or None)
        curves.append((n, info, s))
    if not curves:
        return []
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for n, info, s in curves:
        fpr, tpr = roc_curve(y, s)
        size = view.trials.set_index("trial").loc[n, "size_bytes"]
        ax.plot(fpr, tpr, lw=2.2 if n == knee else 1.2,
                label=f"trial {n}{' (knee)' if n == knee else ''}: {info['score']}, {int(size):,} B, AUROC {auroc(y, s):.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("false-positive rate (normal flagged)")
    ax.set_ylabel("true-positive rate (anomalies caught)")
    ax.set_title(f"{view.name}: ROC on the test split", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    paths = [_save(fig, out_dir / "roc.png")]
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (n, info, s) in zip(axes.flat, curves):
        bins = np.histogram_bin_edges(s[np.isfinite(s)], bins=60)
        ax.hist(s[~y], bins=bins, alpha=0.6, density=True, label=f"normal ({int((~y).sum()):,})")
        ax.hist(s[y], bins=bins, alpha=0.6, density=True, label=f"anomalies ({int(y.sum()):,})")
        ax.axvline(info["threshold"], c="black", ls="--", label=f"threshold {info['threshold']:.4g} ({info['rule']})")
        ax.set_xlabel(f"score: {info['score']} (higher: more anomalous)")
        ax.set_ylabel("density")
        ax.set_title(f"trial {n}{' (knee)' if n == knee else ''}", fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(f"{view.name}: scores on the test split, knee and front", fontsize=10)
    paths.append(_save(fig, out_dir / "knee_scores.png"))
    return paths


def _trial_anomaly(view: StudyView, number: int) -> dict | None:
    from strategies.trial_record import trial_attrs

    t = next((t for t in view.study.get_trials(deepcopy=False) if t.number == number), None)
    return (trial_attrs(t).get("anomaly") or None) if t is not None else None
