"""The ``vaenas`` command line. Exit codes: 0 success, 1 failure, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from search_space import ArchSpec, SearchSpace, VaenasInputError
from strategies import optuna_private

from .invocation import prog

SEED_MLP = ArchSpec.mlp((400, 400), 20)
TRAIN_FILES = ["model.pt", "weights.packed.bin", "arch.json", "report.json"]
RETRAIN_FILES = TRAIN_FILES + ["reconstructions.png"]


class CliError(VaenasInputError):
    pass


def _load_arch(path: str) -> ArchSpec:
    """An arch spec JSON, or an exported arch file (``vaenas export``) that wraps one."""
    return _load_arch_doc(path)[0]


def _load_arch_doc(path: str) -> tuple[ArchSpec, dict | None]:
    """The spec of an arch file and, for an exported one, the whole export document."""
    p = Path(path)
    if not p.is_file():
        raise CliError(f"--arch: file {path!r} does not exist")
    try:
        text = p.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise CliError(f"--arch: {path!r} is not a readable text file ({type(e).__name__}); give an arch JSON") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--arch: {path!r} is not valid JSON ({e})") from None
    if isinstance(d, dict) and isinstance(d.get("spec"), dict):  # an exported arch file wraps the spec
        return ArchSpec.from_dict(d["spec"]), d
    return ArchSpec.from_dict(d), None


def _dataset_arg(value: str | None):
    """``--dataset``: a shorthand name, or a dataset block as inline YAML/JSON ('{source: folder, ...}')."""
    if value is None or not value.lstrip().startswith("{"):
        return value
    import yaml

    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise CliError(f"--dataset: not a valid mapping ({str(e).splitlines()[0]}); e.g. "
                       "'{source: folder, path: photos, likelihood: discretized_logistic}'") from None


def cmd_train(args: argparse.Namespace) -> int:
    from evaluator import TrainConfig, evaluate_neg_elbo, iwae_nll, load_data, seeded_model, train
    from search_space import pack_model

    from .retrain import check_spec_fits
    from .files import data_meta

    spec = _load_arch(args.arch) if args.arch else None
    if args.bits is not None:  # a bad bit-width is one line before any data is read
        (spec or SEED_MLP).replace(weight_bits=(args.bits,) * len((spec or SEED_MLP).weight_bits))
    if args.iwae_k < 0:
        raise CliError(f"--iwae-k: must be >= 0 (0 skips it), got {args.iwae_k}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, lr_schedule=args.lr_schedule)
    from .outputs import check_output_dir

    out = check_output_dir(args.out, TRAIN_FILES, force=args.force)
    data = load_data(_dataset_arg(args.dataset), args.data_root, n_train=args.n_train)
    if spec is None:  # the seed MLP VAE, for this data's shape and likelihood
        spec = SEED_MLP.replace(input_shape=data.input_shape, likelihood=data.likelihood)
    check_spec_fits(spec, data, "--arch")
    if args.bits is not None:
        spec = spec.replace(weight_bits=(args.bits,) * len(spec.weight_bits))
    model = seeded_model(spec, args.seed, args.device)
    print(data.describe(), flush=True)
    print(f"training {spec.id} ({spec.family}, latent {spec.latent_dim}, bits {list(spec.weight_bits)}, "
          f"{spec.likelihood}) on {data.name} for {args.epochs:g} epochs", flush=True)
    res = train(model, data.train, cfg, progress=sys.stderr.isatty())
    test = evaluate_neg_elbo(model, data.test)
    meta = data_meta(data)
    report = {
        "spec": spec.to_dict(), "spec_id": spec.id, **meta, "train": cfg.to_dict(),
        "train_seconds": res.seconds, "steps": res.steps, "test_neg_elbo": test["neg_elbo"], "test_kl": test["kl"],
        "params": model.num_params(),
    }
    if "bits_per_dim" in test:
        report["test_bits_per_dim"] = test["bits_per_dim"]
    packed = pack_model(model)
    report["packed_bytes"] = len(packed)
    if args.iwae_k:
        report[f"test_iwae{args.iwae_k}_nll"] = iwae_nll(model, data.test, k=args.iwae_k)
    from .files import atomic_write, save_checkpoint

    save_checkpoint(out / "model.pt", model, spec, meta)
    atomic_write(out / "weights.packed.bin", packed)
    atomic_write(out / "arch.json", spec.to_json(indent=2).encode())
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
    bpd = f" ({test['bits_per_dim']:.4f} bits/dim)" if "bits_per_dim" in test else ""
    print(f"test -ELBO {test['neg_elbo']:.2f} nats{bpd} | params {report['params']:,} | packed {len(packed):,} bytes | "
          f"train {res.seconds:.1f}s")
    if args.iwae_k:
        print(f"test IWAE-{args.iwae_k} NLL {report[f'test_iwae{args.iwae_k}_nll']:.2f} nats")
    print(f"wrote {out}/model.pt, weights.packed.bin, arch.json, report.json")
    return 0


# how `show` prints each column: −ELBO in nats to 2 decimals, bits/dim to 4, counts whole
_FORMATS = {"neg_elbo": "{:.2f}", "estimate_neg_elbo": "{:.2f}", "bits_per_dim": "{:.4f}", "mean_bits": "{:.2f}",
            "size_bytes": "{:,.0f}", "params": "{:,.0f}", "flops": "{:,.0f}", "bitops": "{:,.0f}",
            "latency_ms": "{:.4f}", "ram_bytes": "{:,.0f}", "flash_bytes": "{:,.0f}"}


def _fmt(col: str):
    import numpy as np

    f = _FORMATS.get(col, "{:.4g}")
    def fmt(v) -> str:
        if v is None or v != v:  # missing, NaN
            return ""
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
            return str(bool(v)) if isinstance(v, np.bool_) else str(v)
        return f.format(v)

    return fmt


def _print_front(view, limit: int | None = None, every: bool = False) -> None:
    """The Pareto front as a table (``every``: all complete trials, sorted by the first objective,
    with an ``on_front`` column). mean_bits is weighted by each layer's parameter count."""
    import pandas as pd

    cols = ["trial", "spec_id", "family", "latent_dim", "mean_bits", *view.objectives]
    cols += [c for c in ("size_bytes", "flops", "latency_ms") if c not in cols]
    if "bits_per_dim" in view.trials and view.trials["bits_per_dim"].notna().any():
        cols.insert(cols.index("neg_elbo") + 1 if "neg_elbo" in cols else len(cols), "bits_per_dim")
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
        table = view.trials.sort_values([view.objectives[0], "trial"])
        cols.append("on_front")
        header = f"all {len(table)} complete trials (on_front: on the Pareto front):"
    else:
        table = front
        header = f"Pareto front: {len(front)} of {len(view.trials)} complete trials (`show --all` lists every trial):"
    if "flash_bytes" in cols:
        print("flash_bytes is an ESTIMATE: packed weights (exact) + estimated C code (see evaluator/deploy/memory.py)")
    if "latency_ms" in cols and "latency_path" in table and len(table) and table["latency_path"].iloc[0]:
        print(f"latency_ms measured on: {table['latency_path'].iloc[0]}")
    print(header)
    with pd.option_context("display.max_columns", 30, "display.width", 220):
        print(table[cols].head(limit).to_string(index=False, formatters={c: _fmt(c) for c in cols}))


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
    _print_front(view)
    knee = pick_trial(view, pick="knee")
    out = _run_dir(args.runs_dir, cfg.name)
    plots = _plots(view, args.runs_dir, cfg.data_root, knee)
    from .report import export_trial

    doc = export_trial(view, knee, out / "export" / "knee.json")
    print(f"plots: {', '.join(str(p) for p in plots)}")
    print(f"exported winner (knee, trial {knee}): {out / 'export' / 'knee.json'}")
    _deploy_knee(view, knee, args.runs_dir, out / "export" / "knee", cfg.data_root, doc)
    print(f"retrain it: {doc['retrain_command']}")
    return 0


def _deploy_knee(view, knee: int, runs_dir: str, out: Path, data_root: str | None, arch_doc: dict) -> None:
    """The end of a search: the knee as ONNX and C (with input.txt, the first validation example in
    model space) in export/knee/, the C one built; a knee without weights of its own is said, not failed."""
    from .deploy import NotBuilt, build_and_size, export_weights, how_to_run, temp_dir, trial_checkpoint
    from .retrain import load_checkpoint

    formats = ("arch", "onnx", "c")
    with temp_dir() as tmp:
        try:
            model, meta = load_checkpoint(trial_checkpoint(view, knee, runs_dir, Path(tmp)), f"trial {knee}",
                                          with_meta=True)
        except VaenasInputError as e:
            print(f"deployable export skipped: {e}")
            return
    meta.update({"study": view.name, "trial": knee})
    arch_doc = {**arch_doc, "retrain_command": arch_doc["retrain_command"].replace("knee.json", "knee/arch.json")}
    doc = export_weights(model, out, formats, meta, arch_doc)
    try:
        from evaluator import load_data

        from .report import study_data

        x = load_data(study_data(view)["dataset"], data_root, n_train=1, n_eval=1).val[0]
        (out / "input.txt").write_text(" ".join(f"{v:.9g}" for v in x.reshape(-1).tolist()) + "\n")
    except Exception:  # the example input is a convenience
        pass
    built = ""
    try:
        sz = build_and_size(out)
        built = f"; C built: size text+data {sz['flash_bytes_measured']:,} bytes, bss {sz['bss']:,} bytes" if sz else ""
    except NotBuilt as e:
        built = f"; {e}"
    print(f"deployable winner (arch, onnx, c): {out} - packed {doc['weights']['packed_bytes']:,} bytes, "
          f"RAM {doc['ram_bytes']:,} bytes{built}")
    for line in how_to_run(out, formats, model.spec):
        print("  " + line)


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


def _run_dir(runs_dir: str, name: str) -> Path:
    from .files import study_dir

    return study_dir(runs_dir, name)


def _plots(view, runs_dir: str, data_root: str | None, knee: int, x=None) -> list[Path]:
    from evaluator import load_data

    from .plots import make_plots

    from .report import study_data

    cfg = view.study.user_attrs.get("config", {})
    images = load_data(study_data(view)["dataset"], data_root or cfg.get("data_root"), n_train=1, n_eval=16).test
    ck = _run_dir(runs_dir, view.name) / "trials" / str(knee) / "model.pt"
    return make_plots(view, _run_dir(runs_dir, view.name) / "plots", images, knee, ck, x=x)


def cmd_list(args: argparse.Namespace) -> int:
    from .report import list_studies

    df = list_studies(args.runs_dir, args.storage)
    print(df.to_string(index=False) if len(df) else f"no studies under {args.runs_dir}/")
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
        _print_front(view, every=args.all)
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
    out = Path(args.out) if args.out else _run_dir(args.runs_dir, view.name) / "report.html"
    tdir = _run_dir(args.runs_dir, view.name) / "trials"
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
    from .artifacts import open_store
    from .report import load_view

    view = load_view(args.study, args.runs_dir, args.storage)
    try:
        import optuna_dashboard
    except ImportError:
        raise CliError("dashboard: optuna-dashboard is not installed; install it with "
                       "`pip install -e '.[dashboard]'`") from None
    desc = view.study.user_attrs.get("artifact_store")
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


def cmd_export(args: argparse.Namespace) -> int:
    from .report import export_trial, load_view, pick_trial

    from .outputs import check_output_file

    if args.model or args.format is not None:
        return _export_formats(args)
    if not args.study:
        raise CliError("export: name a STUDY (or --model RUN_DIR/model.pt with --format)")
    if args.out:
        check_output_file(args.out, force=args.force)
    view = load_view(args.study, args.runs_dir, args.storage)
    n = pick_trial(view, trial=args.trial, pick=args.pick, max_constraints=args.max)
    out = Path(args.out) if args.out else _run_dir(args.runs_dir, view.name) / "export" / _export_name(args, n)
    check_output_file(out, force=args.force or (not args.out and _same_export(out, view.name, n)))
    doc = export_trial(view, n, out)
    print(f"exported trial {n} ({doc['spec_id']}): {out}")
    print(f"retrain it: {doc['retrain_command']}")
    return 0


def _export_formats(args: argparse.Namespace) -> int:
    """``--format``: a folder with the chosen deployable formats and manifest.json, from a study's
    trial (its trained weights) or a checkpoint (``--model``)."""
    from .deploy import NotBuilt, build_and_size, export_weights, how_to_run, parse_formats, temp_dir, trial_checkpoint
    from .outputs import check_output_dir
    from .retrain import load_checkpoint
    from evaluator.deploy import check_formats_available, files_for

    formats = parse_formats(args.format or ["arch"])
    check_formats_available(formats)
    if bool(args.model) == bool(args.study):
        raise CliError("export: give either a STUDY or --model RUN_DIR/model.pt, not both" if args.model
                       else "export: name a STUDY or --model RUN_DIR/model.pt")
    with temp_dir() as tmp:
        arch_doc, meta = None, {}
        if args.model:
            if args.trial is not None or args.pick or args.max:
                raise CliError("--trial/--pick/--max choose a study's trial; --model exports that checkpoint itself")
            ck = Path(args.model)
            out = Path(args.out) if args.out else ck.parent / "deploy"
            out = check_output_dir(out, files_for(formats), force=args.force)
            model, meta = load_checkpoint(ck, "--model", with_meta=True)
            meta["source"] = str(ck)
            what = f"{ck}"
        else:
            from .report import export_trial, load_view, pick_trial

            view = load_view(args.study, args.runs_dir, args.storage)
            n = pick_trial(view, trial=args.trial, pick=args.pick, max_constraints=args.max)
            stem = _export_name(args, n)[:-len(".json")]
            out = Path(args.out) if args.out else _run_dir(args.runs_dir, view.name) / "export" / stem
            out = check_output_dir(out, files_for(formats), force=args.force or (not args.out and _same_export(
                out / "arch.json", view.name, n)))
            if formats != ("arch",):
                model, meta = load_checkpoint(trial_checkpoint(view, n, args.runs_dir, Path(tmp)), f"trial {n}",
                                              with_meta=True)
            else:
                model = None
            arch_doc = export_trial(view, n, Path(tmp) / "arch.json")
            arch_doc["retrain_command"] = arch_doc["retrain_command"].replace(str(Path(tmp) / "arch.json"),
                                                                              str(out / "arch.json"))
            meta.update({"study": view.name, "trial": n})
            what = f"trial {n} of {view.name}"
        if model is None:  # arch only: the spec and its export document
            spec = ArchSpec.from_dict(arch_doc["spec"])
            out.mkdir(parents=True, exist_ok=True)
            from .files import atomic_write

            atomic_write(out / "arch.json", json.dumps(arch_doc, indent=2).encode())
            atomic_write(out / "manifest.json", json.dumps({
                "format": "vaenas.export", "version": 1, "spec_id": spec.id, "spec": spec.to_dict(),
                "formats": {"arch": ["arch.json"]}, "files": {"arch.json": (out / "arch.json").stat().st_size},
                **{k: meta[k] for k in ("study", "trial") if k in meta}}, indent=2).encode())
            print(f"exported {what} ({spec.id}) as arch: {out}")
            print(f"retrain it: {arch_doc['retrain_command']}")
            return 0
        doc = export_weights(model, out, formats, meta, arch_doc)
    spec = model.spec
    print(f"exported {what} ({spec.id}) as {', '.join(formats)}: {out}")
    print(f"  packed weights {doc['weights']['packed_bytes']:,} bytes | RAM (C arena) {doc['ram_bytes']:,} bytes | "
          f"flash {doc['flash_bytes']:,} bytes (estimate)")
    if "c" in formats:
        try:
            sz = build_and_size(out)
            if sz:
                print(f"  built {out / 'vae_demo'}: size vae_model.o text+data {sz['flash_bytes_measured']:,} bytes "
                      f"(flash), bss {sz['bss']:,} bytes (RAM)")
        except NotBuilt as e:
            for line in how_to_run(out, formats, spec):
                print("  " + line)
            raise e
    for line in how_to_run(out, formats, spec):
        print("  " + line)
    return 0


def _same_export(path: Path, study: str, trial: int) -> bool:
    """Is ``path`` an export of this very trial (e.g. the knee.json `search` wrote)? Rewriting it loses
    nothing, so it needs no --force."""
    try:
        prov = json.loads(path.read_text()).get("provenance") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return prov.get("study") == study and prov.get("trial") == trial


def _export_name(args: argparse.Namespace, n: int) -> str:
    """The default export file, named after what was asked: ``knee.json`` (as ``search`` writes),
    ``best_neg_elbo.json``, ``trial7.json``; ``--max`` limits are part of the name."""
    import re

    if args.trial is not None:
        stem = f"trial{n}"
    else:
        stem = (args.pick or "knee").replace(":", "_")
    for m in (args.max or []) if args.trial is None else []:
        stem += "_max_" + m.replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + ".json"


def cmd_retrain(args: argparse.Namespace) -> int:
    from .retrain import retrain

    from .outputs import check_output_dir

    from evaluator.deploy import check_formats_available, files_for, parse_formats

    formats = () if args.formats.strip() == "none" else tuple(
        f for f in parse_formats(args.formats, "--formats") if f != "arch")  # arch.json is always written
    check_formats_available(formats)
    spec, doc = _load_arch_doc(args.arch)
    # each arch file its own folder: two exports retrained side by side never share one
    out = check_output_dir(args.out or Path(args.arch).parent / f"retrain_{Path(args.arch).stem}",
                           RETRAIN_FILES + (files_for(formats) if formats else []), force=args.force)
    dataset = _dataset_arg(args.dataset)
    if dataset is None:  # the dataset the export was searched on, else MNIST
        dataset = ((doc or {}).get("provenance") or {}).get("dataset") or "mnist"
    report = retrain(spec, epochs=args.epochs, dataset=dataset, data_root=args.data_root,
                     out=out,
                     teacher=args.teacher, distill_weight=args.distill_weight, seed=args.seed, lr=args.lr,
                     batch_size=args.batch_size, iwae_k=args.iwae_k, device=args.device, n_train=args.n_train,
                     lr_warmup_steps=args.lr_warmup_steps, formats=formats)
    bpd = (f" ({report['test_bits_per_dim']:.4f} bits/dim)" if "test_bits_per_dim" in report else "")
    print(f"test -ELBO {report['test_neg_elbo']:.2f} nats{bpd} | IWAE-{report['iwae_k']} NLL {report['test_iwae_nll']:.2f} | "
          f"params {report['params']:,} | {report['size_bytes']:,} bytes | {report['flops']:,} FLOPs | "
          f"latency {report['latency_ms']:.4f} ms")
    print(f"wrote {report['out_dir']}: " + ", ".join(report["files"]))
    if isinstance(report.get("c_size"), dict):
        sz = report["c_size"]
        print(f"C build: size vae_model.o text+data {sz['flash_bytes_measured']:,} bytes (flash), bss {sz['bss']:,} "
              "bytes (RAM)")
    elif report.get("c_size"):
        print(report["c_size"])
    for line in report.get("how_to_run", []):
        print(line)
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


class _HelpWithDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default (when it has one that says something)."""

    def _get_help_string(self, action):
        h = action.help or ""
        if (action.option_strings and "%(default)" not in h and "default" not in h
                and not any(action.default is v for v in (None, False, argparse.SUPPRESS))):
            h += " (default: %(default)s)"
        return h


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vaenas", description="Search for small, fast, low-bit VAEs.",
                                 formatter_class=_HelpWithDefaults)
    sub = ap.add_subparsers(dest="command", required=True)
    _add = sub.add_parser
    sub.add_parser = lambda *a, **kw: _add(*a, formatter_class=_HelpWithDefaults, **kw)  # type: ignore[method-assign]

    t = sub.add_parser("train", help="train one architecture (default: the seed MLP VAE 784-400-400-20) and report")
    t.add_argument("--arch", help="arch spec JSON (or an exported arch file); default the seed MLP VAE")
    t.add_argument("--bits", type=int, help="override: every weight layer at this bit-width")
    t.add_argument("--dataset", default="mnist",
                   help="mnist | fashion_mnist | a dataset block as YAML, e.g. '{source: array, path: x.npy, "
                        "likelihood: gaussian}'")
    t.add_argument("--data-root", help="dataset folder (default $VAENAS_DATA or ~/.cache/vaenas/data)")
    t.add_argument("--epochs", type=float, default=1.0, help="training epochs (fractions allowed)")
    t.add_argument("--batch-size", type=int, default=100, help="training batch size")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    t.add_argument("--lr-schedule", default="constant", help="constant | cosine")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and binarisation")
    t.add_argument("--n-train", type=int, help="train on the first N training images only")
    t.add_argument("--iwae-k", type=int, default=0, help="also report the IWAE-k NLL (0: skip)")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--out", default="runs/train", help="output folder")
    t.add_argument("--force", action="store_true", help="replace the outputs of an earlier run in --out")
    t.set_defaults(func=cmd_train)

    def study_args(p, study=True):
        if study:
            p.add_argument("study", metavar="STUDY", help="study name")
        p.add_argument("--runs-dir", default="runs", help="where studies live (default runs/)")
        p.add_argument("--storage", help="Optuna storage URL (default sqlite:///runs/<study>/study.db)")

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

    ex = sub.add_parser("export", help="write a trial (or a checkpoint) as an arch JSON or as deployable formats "
                                       "(ONNX, C, ExecuTorch) with a manifest")
    study_args(ex, study=False)
    ex.add_argument("study", metavar="STUDY", nargs="?", help="study name (or use --model)")
    ex.add_argument("--model", help="a checkpoint (e.g. RUN_DIR/model.pt from retrain) to export instead of a trial")
    ex.add_argument("--format", action="append",
                    help="arch | onnx | c | executorch | all, comma-separated or repeated; with --format, --out is a "
                         "folder (default runs/<study>/export/<pick>/, or deploy/ beside --model). Without it: the "
                         "arch JSON file alone")
    ex.add_argument("--trial", type=int, help="export this trial number")
    ex.add_argument("--pick", help="knee (default) | best:OBJECTIVE")
    ex.add_argument("--max", action="append", help="OBJECTIVE=VALUE upper limit, e.g. size_bytes=20000")
    ex.add_argument("--out", help="export file, or folder with --format (default runs/<study>/export/ named after the "
                         "pick: knee.json, best_neg_elbo.json, trial<N>.json; knee/ etc. with --format)")
    ex.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    ex.set_defaults(func=cmd_export)

    rt = sub.add_parser("retrain", help="train an exported architecture from scratch (QAT), optionally distilled")
    rt.add_argument("arch", help="exported arch JSON (or a bare spec JSON)")
    rt.add_argument("--epochs", type=float, required=True, help="training epochs (required; the README uses 30)")
    rt.add_argument("--teacher", help="teacher VAE checkpoint (model.pt) for knowledge distillation")
    rt.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term (with --teacher)")
    rt.add_argument("--dataset", help="mnist | fashion_mnist | a dataset block as YAML (default: the dataset "
                                      "recorded in the exported arch file, else mnist)")
    rt.add_argument("--data-root", help="dataset folder (default $VAENAS_DATA or ~/.cache/vaenas/data)")
    rt.add_argument("--n-train", type=int, help="train on the first N training examples only (default: all)")
    rt.add_argument("--batch-size", type=int, default=100, help="training batch size")
    rt.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine schedule)")
    rt.add_argument("--lr-warmup-steps", type=int, default=100,
                    help="linear lr warm-up steps; keeps the first Adam steps from killing a ReLU layer")
    rt.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and binarisation")
    rt.add_argument("--iwae-k", type=int, default=100, help="importance samples of the test IWAE NLL")
    rt.add_argument("--device", default="auto", help="auto | cpu | cuda")
    rt.add_argument("--formats", default="onnx,c",
                    help="deployable formats written beside the checkpoint: onnx, c, executorch, all, or none")
    rt.add_argument("--out", help="output folder (default: retrain_<arch file name>/ beside the arch file)")
    rt.add_argument("--force", action="store_true", help="replace the outputs of an earlier retrain in --out")
    rt.set_defaults(func=cmd_retrain)

    s = sub.add_parser("space", help="describe a search-space YAML: its size, and optionally sampled specs")
    s.add_argument("space")
    s.add_argument("--sample", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_space)
    return ap


def _sigterm(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler's stop) is handled like Ctrl-C: the trial is marked interrupted


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)
    try:
        return args.func(args)
    except VaenasInputError as e:
        print(f"vaenas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaenas: interrupted", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `vaenas show ... | head`: the reader left; nothing to report
        sys.stderr = open(os.devnull, "w")
        return 0
    except Exception as e:  # a failure, not bad input: one line, exit 1
        plain = getattr(e, "plain", False)  # a failure that names itself (e.g. "database unreachable: ...")
        print(f"vaenas: {e}" if plain else f"vaenas: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
