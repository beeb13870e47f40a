"""The study commands: ``search``, ``worker``, ``list``, ``show``, ``report``, ``dashboard``, ``pareto``,
``space`` (``export`` is :mod:`studies.export_cmd`; ``train`` and ``retrain`` :mod:`studies.train_cmd`)."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from search_space import SearchSpace
from strategies import optuna_private

from .export_cmd import deploy_knee
from .files import study_dir
from .invocation import CliError, prog
from .tables import print_front, printable, rung_lines, screening_lines


def cmd_search(args: argparse.Namespace) -> int:
    from .config import StudyConfig
    from .report import load_view, pick_trial
    from .run import run_search

    cfg = StudyConfig.load(args.config)
    if args.storage:
        cfg.storage = args.storage
    if args.strategy and args.strategy != cfg.strategy:
        from strategies import REGISTRY

        if args.strategy not in REGISTRY:
            raise CliError(f"--strategy: {args.strategy!r} is unknown; registered strategies are "
                                  f"{sorted(REGISTRY)}")
        cfg.strategy, cfg.strategy_options = args.strategy, {}  # the YAML's options belong to its own strategy
    summary = run_search(cfg, runs_dir=args.runs_dir, resume=args.resume, n_trials=args.n_trials,
                         timeout_s=args.timeout, progress=not args.quiet, jobs=args.jobs)
    state = "interrupted" if summary.interrupted else "done"
    print(f"study {summary.study_name}: {state}, {summary.finished} finished trials ({summary.new_trials} this run, "
          f"{summary.seconds:.0f}s), front size {summary.front_size}, hypervolume {summary.hypervolume:.4f}"
          + (f"; {summary.remeasured} front specs re-measured standalone" if summary.estimated else ""))
    if summary.interrupted:
        print(f"resume with: {prog()} search {args.config} --resume")
        return 1
    view = load_view(cfg.name, args.runs_dir, cfg.storage)
    if len(view.trials) == 0 or not view.trials["feasible"].astype(bool).any():
        print("no feasible trial completed; nothing to plot or export")
        return 1
    print_front(view)
    for line in screening_lines(view) + rung_lines(view):
        print(line)
    knee = pick_trial(view, pick="knee")
    out = study_dir(args.runs_dir, cfg.name)
    plots = _plots(view, args.runs_dir, cfg.data_root, knee)
    from .report import export_trial

    doc = export_trial(view, knee, out / "export" / "knee.json")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    what = "best feasible" if len(view.objectives) == 1 else "knee"
    print(f"exported winner ({what}, trial {knee}): {out / 'export' / 'knee.json'}")
    deploy_knee(view, knee, args.runs_dir, out / "export" / "knee", cfg.data_root, doc)
    print(f"retrain it: {doc['retrain_command']}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from .config import StudyConfig
    from .run import run_search

    cfg = StudyConfig.load(args.config)
    if args.storage:
        cfg.storage = args.storage
    summary = run_search(cfg, runs_dir=args.runs_dir, worker=True, n_trials=args.n_trials, timeout_s=args.timeout,
                         progress=not args.quiet)
    state = "interrupted" if summary.interrupted else "done"
    print(f"worker on study {summary.study_name} ({summary.storage}): {state}; {summary.new_trials} trials run here, "
          f"{summary.finished} finished in the study, front size {summary.front_size}, "
          f"hypervolume {summary.hypervolume:.4f}")
    print(f"inspect: {prog()} show {cfg.name}" + (f" --storage '{summary.storage}'" if cfg.storage else ""))
    return 1 if summary.interrupted else 0


def _plots(view, runs_dir: str, data_root: str | None, knee: int, x=None) -> list[Path]:
    from evaluator import load_data

    from .plots import make_plots

    from .report import study_data

    cfg = view.study.user_attrs.get("config", {})
    images = load_data(study_data(view)["dataset"], data_root or cfg.get("data_root"), n_train=1, n_eval=16).test
    ck = study_dir(runs_dir, view.name) / "trials" / str(knee) / "model.pt"
    paths = make_plots(view, study_dir(runs_dir, view.name) / "plots", images, knee, ck, x=x)
    task = study_data(view).get("task")
    if task:  # an anomaly study: ROC curves and score histograms on the test split
        from .plots import anomaly_plots
        from .retrain import load_checkpoint

        data = load_data(study_data(view)["dataset"], data_root or cfg.get("data_root"), n_train=1, task=task)
        paths += anomaly_plots(view, study_dir(runs_dir, view.name) / "plots", data, runs_dir, knee, load_checkpoint)
    return paths


def cmd_list(args: argparse.Namespace) -> int:
    from .report import list_studies

    df = list_studies(args.runs_dir, args.storage)
    for col in ("study", "storage"):  # stored names are anyone's text: no terminal escapes
        df[col] = df[col].map(printable)
    print(df.to_string(index=False) if len(df) else f"no studies under {printable(args.runs_dir)}/")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .outputs import check_output_file
    from .report import load_view, study_hypervolume

    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if path:
            check_output_file(path, force=args.force, flag=flag)
    view = load_view(args.study, args.runs_dir, args.storage)
    states = view.all_trials["state"] if len(view.all_trials) else []
    fails = view.all_trials[states == "FAIL"] if len(view.all_trials) else view.all_trials
    running = view.all_trials[states == "RUNNING"] if len(view.all_trials) else view.all_trials
    n_inf = int((~view.trials["feasible"].astype(bool)).sum()) if len(view.trials) else 0
    stopped = view.all_trials["stopped_at_rung"].notna().to_numpy() if len(view.all_trials) else []
    repeats = view.all_trials["reused_from_trial"].notna().to_numpy() if len(view.all_trials) else []
    n_stop = int(((states == "PRUNED") & stopped & ~repeats).sum()) if len(view.all_trials) else 0
    n_rej = int(((states == "PRUNED") & ~stopped).sum()) if len(view.all_trials) else 0
    n_rep = int(repeats.sum()) if len(view.all_trials) else 0
    extra = f" ({n_inf} infeasible)" if n_inf else ""
    extra += f"; {n_stop} stopped early at a rung (partial figures, never on the front)" if n_stop else ""
    extra += f"; {n_rej} proposals rejected untrained (over a static limit)" if n_rej else ""
    extra += f"; {n_rep} repeats of a measured spec (reused, not counted)" if n_rep else ""
    print(f"study {view.name} ({view.storage}): {len(view.trials)} complete{extra}, {len(fails)} failed, "
          f"{len(running)} running; objectives {view.objectives}; hypervolume {study_hypervolume(view):.4f}; "
          f"front size {len(view.front) if len(view.trials) else 0}")
    if len(view.trials):
        print_front(view, every=args.all)
        for line in screening_lines(view) + rung_lines(view):
            print(line)
    else:
        print("no completed trial yet" + (": the failures below say why" if len(fails) else ""))
    for _, r in running.iterrows():
        print(f"  trial {r['number']} RUNNING" + (f" on {r['worker']}" if r.get("worker") else ""))
    for _, r in fails.iterrows():
        print(f"  trial {r['number']} FAIL: {r['fail_reason']}")
    if args.csv:
        from .files import atomic_write

        atomic_write(Path(args.csv), view.trials.to_csv(index=False).encode())
        print(f"wrote {args.csv}")
    if args.json:
        from .files import atomic_write

        atomic_write(Path(args.json), view.trials.to_json(orient="records", indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML page of the study (studies/html_report.py)."""
    from .html_report import build_report
    from .outputs import check_output_file
    from .report import load_view
    from .files import atomic_write

    if args.out:
        check_output_file(args.out, force=args.force)
    view = load_view(args.study, args.runs_dir, args.storage)
    out = Path(args.out) if args.out else study_dir(args.runs_dir, view.name) / "report.html"
    tdir = study_dir(args.runs_dir, view.name) / "trials"
    front = view.front["trial"].tolist() if len(view.trials) else []
    images = None
    if any(not (tdir / str(n) / "samples.png").is_file() and (tdir / str(n) / "model.pt").is_file() for n in front):
        from evaluator import load_data

        from .report import study_data

        cfg = view.study.user_attrs.get("config", {})
        images = load_data(study_data(view)["dataset"], args.data_root or cfg.get("data_root"), n_train=1,
                           n_eval=16).val
    atomic_write(out, build_report(view, args.runs_dir, images).encode())
    print(f"wrote {out} ({out.stat().st_size:,} bytes; self-contained, opens offline in any browser)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study, with its artifact store: every trial's arch.json, model.pt and
    samples.png are listed (and images shown) on the trial's page."""
    from .artifacts import open_store, resolve
    from .report import load_view

    view = load_view(args.study, args.runs_dir, args.storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise CliError("dashboard: optuna-dashboard is not installed; install it with "
                       "`pip install -e '.[dashboard]'`") from None
    desc = resolve(view.study.user_attrs.get("artifact_store"), study_dir(args.runs_dir, view.name))
    store = open_store(desc, create=False) if desc else None
    where = desc.get("path") or desc.get("bucket") if desc else "none (a study made before artifacts, or artifacts: false)"
    print(f"optuna-dashboard: http://{args.host}:{args.port}/dashboard/studies/{optuna_private.study_id(view.study)} "
          f"(study {view.name}, {view.storage}; artifacts: {where}); Ctrl-C stops it", flush=True)
    try:
        optuna_dashboard.run_server(optuna_private.storage_of(view.study), host=args.host, port=args.port, artifact_store=store)
    except OSError as e:
        raise CliError(f"dashboard: cannot serve on {args.host}:{args.port} ({e.strerror or e}); choose another "
                       "--port") from None
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a dashboard is stopped
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from evaluator import OBJECTIVES

    from .report import load_view, pick_trial

    view = load_view(args.study, args.runs_dir, args.storage)
    for name in (args.x or []) + [args.y]:
        if name not in OBJECTIVES:
            raise CliError(f"--x/--y: {name!r} is not an objective; use one of {list(OBJECTIVES)}")
    knee = pick_trial(view, pick="knee")
    for p in _plots(view, args.runs_dir, args.data_root, knee, x=args.x):
        print(p)
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    space = SearchSpace.load(args.space)
    print(f"space {space.name!r}: {space.size():,} distinct specs (10^{space.log10_size():.1f}), "
          f"{len(space.dimensions())} named decisions")
    rng = random.Random(args.seed)
    for _ in range(args.sample):
        s = space.sample(rng)
        print(s.id, s.to_json())
    return 0


def study_args(p, study=True):
    if study:
        p.add_argument("study", metavar="STUDY", help="study name")
    p.add_argument("--runs-dir", default="runs", help="where studies live (default runs/)")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///runs/<study>/study.db)")


def study_parsers(sub) -> None:
    se = sub.add_parser("search", help="run (or --resume) a study from a YAML config")
    se.add_argument("config")
    se.add_argument("--resume", action="store_true", help="continue an existing study to its budget")
    se.add_argument("--n-trials", type=int, help="override budget.trials")
    se.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    se.add_argument("--quiet", action="store_true", help="no progress bar")
    se.add_argument("--jobs", type=int, default=1, metavar="N",
                    help="run N worker processes on this machine (this one and N-1 more; default 1); they share the "
                         "cores, so measured latencies are taken under load")
    se.add_argument("--strategy", help="override the config's strategy (its YAML options are then dropped)")
    study_args(se, study=False)
    se.set_defaults(func=cmd_search)

    wo = sub.add_parser("worker", help="join a study (created if missing) as one more worker on a shared storage")
    wo.add_argument("config")
    wo.add_argument("--n-trials", type=int, help="override budget.trials (the study's total, shared by workers)")
    wo.add_argument("--timeout", type=float, help="stop starting new trials after this many seconds")
    wo.add_argument("--quiet", action="store_true", help="no progress bar")
    study_args(wo, study=False)
    wo.set_defaults(func=cmd_worker)

    li = sub.add_parser("list", help="list studies with their trial counts")
    study_args(li, study=False)
    li.set_defaults(func=cmd_list)

    sh = sub.add_parser("show", help="a study's Pareto front as a table; --csv/--json export every trial")
    study_args(sh)
    sh.add_argument("--csv", help="write every trial as CSV to this file")
    sh.add_argument("--json", help="write every trial as JSON to this file")
    sh.add_argument("--force", action="store_true", help="replace an existing --csv/--json file of yours")
    sh.add_argument("--all", action="store_true", help="list every complete trial, not only the Pareto front")
    sh.set_defaults(func=cmd_show)

    rp = sub.add_parser("report", help="one self-contained HTML page: interactive front, hypervolume, every trial")
    study_args(rp)
    rp.add_argument("--out", help="HTML file (default runs/<study>/report.html)")
    rp.add_argument("--force", action="store_true", help="replace an existing --out file of yours")
    rp.add_argument("--data-root", help="dataset folder, to draw pictures missing from older studies")
    rp.set_defaults(func=cmd_report)

    db = sub.add_parser("dashboard", help="optuna-dashboard on a study, with every trial's files (artifacts)")
    study_args(db)
    db.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from other machines)")
    db.add_argument("--port", type=int, default=8080, help="port to serve on")
    db.set_defaults(func=cmd_dashboard)

    pa = sub.add_parser("pareto", help="PNG plots: 2-D fronts, hypervolume vs trials, knee reconstructions")
    study_args(pa)
    pa.add_argument("--x", action="append", help="cost objective(s) on the x axis (default: the study's)")
    pa.add_argument("--y", default="neg_elbo")
    pa.add_argument("--data-root")
    pa.set_defaults(func=cmd_pareto)


def space_parser(sub) -> None:
    s = sub.add_parser("space", help="describe a search-space YAML: its size, and optionally sampled specs")
    s.add_argument("space")
    s.add_argument("--sample", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_space)
