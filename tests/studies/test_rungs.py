"""Multi-fidelity early stopping (``budget.rungs``): promotion rule, storage, workers, resume."""

import itertools
import math
import random
import time

import numpy as np
import optuna
import pytest

from search_space import VaenasInputError
import yaml

from evaluator import Stopped
from strategies.pareto import Bound, hypervolume, promoted, promotion_order
from studies.cli import main
from studies.config import StudyConfig
from studies.report import load_view
from studies.rungs import RUNGS_ATTR, StudyRungs, is_stopped
from studies.trials import is_finished

from studies.run import run_search

from conftest import small_config

BOUNDS = [Bound(0.0, 10.0), Bound(1.0, 1000.0, log=True)]


# ------------------------------------------------------------------ brute-force reference
def _dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def _box_volume(points, bounds) -> float:
    """Hypervolume by brute force: the union of boxes, exact on the grid of the points' coordinates."""
    norm = [[min(1.0, max(0.0, (math.log10(max(v, b.lo)) - math.log10(b.lo)) / (math.log10(b.hi) - math.log10(b.lo))
                          if b.log else (v - b.lo) / (b.hi - b.lo))) for v, b in zip(p, bounds)] for p in points]
    axes = [sorted({p[d] for p in norm} | {1.0}) for d in range(len(bounds))]
    vol = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = [axes[d][c] for d, c in enumerate(cell)]
        if any(all(p[d] <= lo[d] for d in range(len(bounds))) for p in norm):
            vol += np.prod([axes[d][c + 1] - axes[d][c] for d, c in enumerate(cell)])
    return vol


def _reference_order(points, bounds) -> list[int]:
    rest, order = list(range(len(points))), []
    while rest:
        front = [i for i in rest if not any(_dominates(points[j], points[i]) for j in rest)]
        total = _box_volume([points[i] for i in front], bounds)
        contrib = {i: total - _box_volume([points[j] for j in front if j != i], bounds) for i in front}
        order += sorted(front, key=lambda i: (-round(contrib[i], 12), i))
        rest = [i for i in rest if i not in front]
    return order


def _reference_promoted(i, points, bounds, keep) -> bool:
    return _reference_order(points, bounds).index(i) < math.ceil(keep * len(points) - 1e-9)


def _random_points(rng, n):
    pts = [[rng.uniform(-1, 11), 10 ** rng.uniform(-0.2, 3.2)] for _ in range(n)]
    for _ in range(n // 4):  # exact duplicates and shared coordinates: ties must be broken the same way
        a, b = rng.randrange(n), rng.randrange(n)
        pts[a] = list(pts[b]) if rng.random() < 0.5 else [pts[b][0], pts[a][1]]
    return pts


def test_box_volume_reference_agrees_with_hypervolume():
    rng = random.Random(0)
    for _ in range(30):
        pts = _random_points(rng, rng.randint(1, 7))
        assert _box_volume(pts, BOUNDS) == pytest.approx(hypervolume(pts, BOUNDS), abs=1e-12)


def test_promotion_matches_brute_force():
    rng = random.Random(1)
    checked = 0
    for _ in range(60):
        pts = _random_points(rng, rng.randint(1, 12))
        keep = rng.choice([0.2, 1 / 3, 0.5, 0.75])
        order = promotion_order(pts, BOUNDS)
        assert order == _reference_order(pts, BOUNDS)
        for i in range(len(pts)):
            assert promoted(i, pts, BOUNDS, keep) == _reference_promoted(i, pts, BOUNDS, keep)
            checked += 1
    assert checked > 300


def test_promotion_keeps_the_best_fraction_and_a_lone_trial():
    assert promoted(0, [[5.0, 10.0]], BOUNDS, 0.33)  # one of one is in the best third
    pts = [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0], [5.0, 5.0], [6.0, 6.0]]  # a chain: ranks are fronts
    assert [promoted(i, pts, BOUNDS, 0.33) for i in range(6)] == [True, True, False, False, False, False]
    # two non-dominated points, one slot: the larger hypervolume contribution goes on
    two = [[1.0, 900.0], [2.0, 2.0]]
    assert [promoted(i, two, BOUNDS, 0.5) for i in range(2)] == [False, True]


# ------------------------------------------------------------------ the gate on synthetic curves
class _Curves:
    """Synthetic learning curves: trial j's −ELBO after fraction f is a_j + b_j / f; its size is fixed."""

    def __init__(self, seed, n):
        rng = random.Random(seed)
        self.a = [rng.uniform(1, 6) for _ in range(n)]
        self.b = [rng.uniform(0.05, 1.5) for _ in range(n)]
        self.size = [10 ** rng.uniform(0.5, 2.8) for _ in range(n)]

    def partial(self, j, f):
        return {"neg_elbo": self.a[j] + self.b[j] / f, "size_bytes": self.size[j]}


def _run_synthetic(study, curves, n, fractions, keep, order=None):
    """Trials ask and train in ``order`` (default: one after another); each goes through its rungs."""
    reached = {}
    for j in order or range(n):
        trial = study.ask()
        gate = StudyRungs(study, trial, fractions, keep, ["neg_elbo", "size_bytes"], BOUNDS)
        r = 0
        while r < len(fractions) and gate.decide(r, fractions[r], curves.partial(j, fractions[r])):
            r += 1
        reached[trial.number] = r
        study.tell(trial, [curves.partial(j, 1.0)["neg_elbo"], curves.size[j]] if r == len(fractions) else None,
                   state=None if r == len(fractions) else optuna.trial.TrialState.PRUNED)
    return reached


def test_gate_decisions_equal_a_replay_on_synthetic_curves():
    n, fractions, keep = 30, (0.1, 0.3), 0.34
    curves = _Curves(3, n)
    study = optuna.create_study(directions=["minimize", "minimize"])
    reached = _run_synthetic(study, curves, n, fractions, keep)
    # replay by brute force: trial j at rung r is compared with every earlier trial that reached rung r
    seen = {r: [] for r in range(len(fractions))}
    expect = {}
    for j in range(n):
        r = 0
        while r < len(fractions):
            p = [curves.partial(j, fractions[r])["neg_elbo"], curves.size[j]]
            pts = seen[r] + [p]
            seen[r].append(p)
            if not _reference_promoted(len(pts) - 1, pts, BOUNDS, keep):
                break
            r += 1
        expect[j] = r
    assert reached == expect
    assert 0 < sum(r == len(fractions) for r in reached.values()) < n  # some stopped, some finished
    counts = [sum(r >= k for r in reached.values()) for k in range(len(fractions) + 1)]
    assert counts == sorted(counts, reverse=True) and counts[0] == n


# ------------------------------------------------------------------ studies with rungs
def _check_decisions_from_storage(trials, bounds, keep):
    """Every recorded decision recomputed by brute force from the points the storage holds."""
    by_number = {t.number: t for t in trials}
    n = 0
    for t in trials:
        for rec in t.user_attrs.get(RUNGS_ATTR, ()):
            others = []
            for m in rec["compared_with"]:
                other = next(x for x in by_number[m].user_attrs[RUNGS_ATTR] if x["rung"] == rec["rung"])
                others.append((m, other["point"]))
            numbers = sorted([t.number] + [m for m, _ in others])
            pts = [rec["point"] if m == t.number else dict(others)[m] for m in numbers]
            assert rec["promoted"] == _reference_promoted(numbers.index(t.number), pts, bounds, keep), (t.number, rec)
            n += 1
    return n


def _rung_config(tmp_path, data_root, name, trials=10, **over):
    return StudyConfig.load(small_config(tmp_path, data_root, name=name, trials=trials, budget={
        "trials": trials, "rungs": [0.3, 0.6, 1.0], "keep": 0.5}, **over))


def test_stopped_trials_count_but_never_reach_the_front_or_export(tmp_path, data_root, capsys):
    cfg = _rung_config(tmp_path, data_root, "rungs", trials=12)
    s = run_search(cfg, runs_dir=tmp_path / "runs", progress=False)
    assert s.finished == 12
    study = optuna.load_study(study_name="rungs", storage=f"sqlite:///{tmp_path / 'runs' / 'rungs' / 'study.db'}")
    trials = study.get_trials()
    stopped = [t for t in trials if is_stopped(t)]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert stopped and complete and sum(is_finished(t) for t in trials) == 12
    for t in stopped:
        assert t.values is None and "neg_elbo" not in t.user_attrs  # figures only under `partial`
        p = t.user_attrs["partial"]
        assert "PARTIAL" in p["note"] and math.isfinite(p["neg_elbo"])
        assert t.user_attrs["rungs"][-1]["promoted"] is False
        assert t.user_attrs["stopped_at_fraction"] in (0.3, 0.6)
    for t in complete:
        assert all(r["promoted"] for r in t.user_attrs["rungs"]) and len(t.user_attrs["rungs"]) == 2
    assert _check_decisions_from_storage(trials, cfg.bounds, cfg.keep) >= 12
    view = load_view("rungs", tmp_path / "runs")
    front = set(view.front["trial"])
    assert front and not front & {t.number for t in stopped}
    assert set(view.trials["trial"]) == {t.number for t in complete}
    pts = [[t.values[0], t.values[1]] for t in complete]
    assert s.hypervolume == pytest.approx(hypervolume(pts, cfg.bounds))
    # a stopped trial's partial point where the front would take it: still not on it, and export refuses it
    capsys.readouterr()
    assert main(["export", "rungs", "--runs-dir", str(tmp_path / "runs"), "--trial", str(stopped[0].number),
                 "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stopped" in err[0] and not (tmp_path / "x.json").exists()
    assert main(["show", "rungs", "--runs-dir", str(tmp_path / "runs")]) == 0
    assert f"{len(stopped)} stopped early at a rung" in capsys.readouterr().out
    from strategies.pareto import kendall_tau
    from studies.rungs import rung_taus
    from studies.tables import rung_lines

    taus = rung_taus(trials)  # each rung's −ELBO against the final one, over the trials that finished
    assert [(r, f, n) for r, f, n, _ in taus] == [(0, 0.3, len(complete)), (1, 0.6, len(complete))]
    for r, _, _, tau in taus:
        early = [t.user_attrs["rungs"][r]["partial_neg_elbo"] for t in complete]
        assert tau == pytest.approx(kendall_tau(early, [t.user_attrs["neg_elbo"] for t in complete]))
    assert f"rung 1 (after 0.3 of training) {taus[0][3]:.2f} over {len(complete)} trials" in rung_lines(view)[0]


def test_resume_in_the_middle_of_a_rung(tmp_path, data_root, monkeypatch):
    cfg = _rung_config(tmp_path, data_root, "rungres", trials=9)
    calls = {"n": 0}
    real = StudyRungs.decide

    def interrupt_on_the_7th(self, rung, fraction, partial):
        calls["n"] += 1
        if calls["n"] == 7:
            real(self, rung, fraction, partial)  # its point is stored, then Ctrl-C
            raise KeyboardInterrupt
        return real(self, rung, fraction, partial)

    monkeypatch.setattr(StudyRungs, "decide", interrupt_on_the_7th)
    s = run_search(cfg, runs_dir=tmp_path / "runs", progress=False)
    assert s.interrupted and s.finished < 9
    monkeypatch.setattr(StudyRungs, "decide", real)
    s = run_search(cfg, runs_dir=tmp_path / "runs", progress=False, resume=True)
    assert not s.interrupted and s.finished == 9
    study = optuna.load_study(study_name="rungres", storage=f"sqlite:///{tmp_path / 'runs' / 'rungres' / 'study.db'}")
    trials = study.get_trials()
    cut = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["fail_reason"] == "interrupted" and not is_finished(cut[0])
    assert sum(is_finished(t) for t in trials) == 9
    # the interrupted trial's rung point stays in the storage, and trials after the resume compared with it
    later = [t for t in trials if t.number > cut[0].number and t.user_attrs.get(RUNGS_ATTR)]
    r = cut[0].user_attrs[RUNGS_ATTR][-1]["rung"]
    assert any(cut[0].number in rec["compared_with"] for t in later for rec in t.user_attrs[RUNGS_ATTR]
               if rec["rung"] == r)
    _check_decisions_from_storage(trials, cfg.bounds, cfg.keep)


def test_two_workers_promote_from_one_storage(tmp_path, data_root, monkeypatch):
    import studies.run as run_mod

    cfg = _rung_config(tmp_path, data_root, "rungjobs", trials=14, n_train=4000,
                       train={"epochs": 2, "batch_size": 100, "lr": 0.002, "device": "cpu"})
    real_run_trial, waited = run_mod.run_trial, []

    def run_trial_after_the_worker_joined(study, *args, **kwargs):
        """This process's first trial waits until the spawned worker has started one: on a fast machine
        (16 cores: 14 trials in about 5 s) this process otherwise ran the whole budget before its worker
        had imported torch, and the check below that both ran trials failed."""
        if not waited:
            waited.append(True)
            deadline = time.time() + 240
            while not any(t.user_attrs.get("worker") not in (None, run_mod.WORKER_ID)
                          for t in study.get_trials(deepcopy=False)):
                assert time.time() < deadline, "the spawned worker process started no trial in 240 s"
                time.sleep(0.1)
        return real_run_trial(study, *args, **kwargs)

    monkeypatch.setattr(run_mod, "run_trial", run_trial_after_the_worker_joined)
    s = run_search(cfg, runs_dir=tmp_path / "runs", progress=False, jobs=2)
    assert s.finished == 14 and not s.interrupted
    study = optuna.load_study(study_name="rungjobs", storage=f"sqlite:///{tmp_path / 'runs' / 'rungjobs' / 'study.db'}")
    trials = study.get_trials()
    assert len({t.user_attrs.get("worker") for t in trials}) == 2  # both processes ran trials
    assert sum(is_finished(t) for t in trials) == 14
    # decisions read the other worker's points from the shared storage
    workers = {t.number: t.user_attrs["worker"] for t in trials}
    cross = [m for t in trials for rec in t.user_attrs.get(RUNGS_ATTR, ()) for m in rec["compared_with"]
             if workers[m] != workers[t.number]]
    assert cross
    assert _check_decisions_from_storage(trials, cfg.bounds, cfg.keep) >= 14


def test_rung_config_errors(tmp_path, data_root, capsys):
    base = yaml.safe_load(small_config(tmp_path, data_root).read_text())
    for budget, needle in (({"trials": 3, "rungs": [0.5, 0.2]}, "increase"),
                           ({"trials": 3, "rungs": [1.0]}, "below 1"),
                           ({"trials": 3, "keep": 0.5}, "only means something"),
                           ({"trials": 3, "rungs": [0.3, 1.0], "keep": 1.5}, "budget.keep")):
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({**base, "budget": budget}))
        assert main(["search", str(p), "--runs-dir", str(tmp_path / "runs")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0]
    p.write_text(yaml.safe_dump({**base, "budget": {"trials": 3, "rungs": [0.3, 1.0]}, "supernet": {"epochs": 1}}))
    assert main(["search", str(p), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "supernet" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_auto_rungs_decide_once_where_the_measured_tau_is_high():
    from studies.rungs import auto_rungs

    assert auto_rungs(2) == [0.25, 1.0] and auto_rungs(1) == [0.5, 1.0]  # at 0.5 epoch
    assert auto_rungs(10) == [0.1, 1.0] and auto_rungs(30) == [1 / 30, 1.0]  # at 1 epoch
    assert auto_rungs(0.8) == [] and auto_rungs(1.5) == [0.5 / 1.5, 1.0]
    d = {"name": "a", "space": {"family": ["mlp"], "latent_dim": [4], "mlp": {"depth": [1], "width": [16]}},
         "objectives": ["neg_elbo", "size_bytes"],
         "bounds": {"neg_elbo": [80, 300], "size_bytes": [1, 1e6]}, "train": {"epochs": 10},
         "budget": {"trials": 4, "rungs": "auto"}}
    from studies.config import StudyConfig

    assert StudyConfig.from_dict(d).rungs == (0.1,)
    with pytest.raises(VaenasInputError, match="auto puts its one rung at 0.5 epoch or later"):
        StudyConfig.from_dict({**d, "train": {"epochs": 0.8}})


def test_stopped_is_what_the_evaluator_returns_when_the_gate_says_stop(mnist_small):
    from evaluator import Evaluator, LatencyConfig, TrainConfig
    from search_space import ArchSpec

    class Gate:
        fractions, needs = (0.25, 0.5), ("neg_elbo", "latency_ms")

        def __init__(self):
            self.seen = []

        def decide(self, rung, fraction, partial):
            self.seen.append((rung, fraction, dict(partial)))
            return rung == 0

    spec = ArchSpec(family="mlp", latent_dim=4, enc_hidden=(32,), dec_hidden=(32,), weight_bits=(4, 4, 4, 4))
    gate = Gate()
    ev = Evaluator(mnist_small, TrainConfig(epochs=1, batch_size=100), LatencyConfig(repeats=3, warmup=1))
    res, model = ev.evaluate_with_model(spec, 0, gate)
    assert isinstance(res, Stopped) and model is None and res.rung == 1 and res.fraction == 0.5
    assert [s[:2] for s in gate.seen] == [(0, 0.25), (1, 0.5)]
    assert res.epochs == pytest.approx(0.5) and res.partial == gate.seen[-1][2]
    assert gate.seen[0][2]["latency_ms"] == gate.seen[1][2]["latency_ms"] > 0  # measured once, at the first rung
    assert gate.seen[1][2]["neg_elbo"] < gate.seen[0][2]["neg_elbo"]  # it learned between the rungs
