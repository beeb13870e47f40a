"""How the command line prints a study's trials: one format per column (the objectives' own from their
registry, :data:`evaluator.OBJECTIVES`), and the Pareto front as a table."""

from __future__ import annotations

from evaluator import OBJECTIVES

def printable(text) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage returns, bells) shown
    as Python escapes, never sent raw."""
    s = str(text)
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in s)


# columns beyond the objectives: −ELBO-like in nats to 2 decimals, bits/dim to 4
_FORMATS = {**{name: o.fmt for name, o in OBJECTIVES.items()}, "estimate_neg_elbo": "{:.2f}",
            "bits_per_dim": "{:.4f}", "mean_bits": "{:.2f}"}


def column_format(col: str):
    import numpy as np

    f = _FORMATS.get(col, "{:.4g}")
    def fmt(v) -> str:
        if v is None or v != v:  # missing, NaN
            return ""
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            return str(bool(v)) if isinstance(v, np.bool_) else str(v)
        return f.format(v)

    return fmt


def print_front(view, limit: int | None = None, every: bool = False) -> None:
    """The Pareto front as a table (``every``: all complete trials, sorted by the first objective,
    with an ``on_front`` column). mean_bits is weighted by each layer's parameter count."""
    import pandas as pd

    cols = ["trial", "spec_id", "family", "latent_dim", "mean_bits", *view.objectives]
    cols += [c for c in ("size_bytes", "flops", "latency_ms") if c not in cols]
    if "bits_per_dim" in view.trials and view.trials["bits_per_dim"].notna().any():
        cols.insert(cols.index("neg_elbo") + 1 if "neg_elbo" in cols else len(cols), "bits_per_dim")
    if "score" in view.trials and view.trials["score"].notna().any():  # an anomaly study: which score each kept
        cols.insert(cols.index("mean_bits") + 1, "score")
        cols += [c for c in ("auroc", "neg_elbo") if c not in cols]
    front = view.front
    if "neg_elbo_is_estimate" in front and front["neg_elbo_is_estimate"].any():
        print("NOTE: −ELBO values below are ESTIMATES from supernet-inherited weights (not re-measured)")
        cols.append("neg_elbo_is_estimate")
    elif "phase" in view.trials and (view.trials["phase"] == "remeasure").any():
        n_est = int(view.trials["neg_elbo_is_estimate"].sum())
        print(f"front re-measured by standalone training ({int((view.trials['phase'] == 'remeasure').sum())} specs); "
              f"the {n_est} search trials' −ELBO were supernet ESTIMATES")
        cols += ["estimate_neg_elbo"]
    if every:
        table = view.trials.sort_values([view.objectives[0], "trial"],
                                        ascending=[OBJECTIVES[view.objectives[0]].direction == "minimize", True])
        cols.append("on_front")
        header = f"all {len(table)} complete trials (on_front: on the Pareto front):"
    elif len(view.objectives) == 1:
        table = front
        header = (f"budget mode: the best feasible of {len(view.trials)} complete trials ({view.objectives[0]}; "
                  "`show --all` lists every trial):")
    else:
        table = front
        header = f"Pareto front: {len(front)} of {len(view.trials)} complete trials (`show --all` lists every trial):"
    if "flash_bytes" in cols:
        exact = "flash_is_estimate" in table and len(table) and not table["flash_is_estimate"].fillna(True).astype(bool).any()
        print("flash_bytes and ram_bytes are measured on the Cortex-M build (arm-none-eabi-size, emulated stack)" if exact
              else "flash_bytes is an ESTIMATE: packed weights (exact) + estimated C code (see evaluator/deploy/memory.py)")
    if "latency_ms" in cols and "latency_path" in table and len(table) and table["latency_path"].iloc[0]:
        est = "latency_is_estimate" in table and bool(table["latency_is_estimate"].fillna(False).astype(bool).any())
        print(f"latency_ms {'is an ESTIMATE from' if est else 'measured on'}: {table['latency_path'].iloc[0]}")
    print(header)
    limits = view.study.user_attrs.get("config", {}).get("constraints") or {}
    cols += [k for k in limits if k in table and k not in cols]
    with pd.option_context("display.max_columns", 30, "display.width", 220):
        print(table[cols].head(limit).to_string(index=False, formatters={c: column_format(c) for c in cols}))
    if limits and len(view.objectives) == 1 and len(front):
        best = front.iloc[0]
        print("how close it sits to each limit: " + "; ".join(
            f"{k} {column_format(k)(best[k])} of {lim:,g} ({100 * float(best[k]) / float(lim):.1f} %)"
            for k, lim in limits.items() if k in best and best[k] == best[k]))


def screening_lines(view) -> list[str]:
    """A screened study's predictor, judged on the trials it chose: Kendall τ of each predicted objective
    (predicted before the trial trained, so held out) against the measured value. No lines otherwise."""
    from optuna.trial import TrialState

    from strategies.screening import held_out_tau, screened_pairs
    from strategies.trial_record import SCREEN, trial_attrs

    trials = view.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in trials if SCREEN in trial_attrs(t) and t.values is not None]
    if not done:
        return []
    pools = sorted({trial_attrs(t)[SCREEN]["pool"] for t in done})
    taus = []
    for name in view.objectives:
        pairs = screened_pairs(done, view.objectives, name)
        tau = held_out_tau(pairs)
        if pairs and tau == tau:
            taus.append(f"{name} {tau:.2f} ({len(pairs)} trials)")
    return [f"screening: {len(done)} trials each trained the best-predicted of a pool of "
            f"{'/'.join(map(str, pools))} proposals; Kendall τ of predicted vs measured (each prediction made "
            f"before its trial trained): {', '.join(taus) or 'too few trials'}"]


def rung_lines(view) -> list[str]:
    """A study with rungs: how well each rung's −ELBO ranked the trials that finished (Kendall τ against
    their final −ELBO); no lines otherwise."""
    from .rungs import rung_taus

    taus = rung_taus(view.study.get_trials(deepcopy=False))
    if not taus:
        return []
    return ["rungs: Kendall τ of the −ELBO at each rung vs the final −ELBO, on the trials that finished: " + "; ".join(
        f"rung {r + 1} (after {f:g} of training) {tau:.2f} over {n} trials" for r, f, n, tau in taus)
        + " (near 1: the rung ranks as the end would; benchmarks/rung_correlation.py measures it per epoch)"]
