"""``vaenas export``: a trial (or a checkpoint) as an arch JSON or as deployable formats with a
manifest; and the end of ``search``: the knee, deployable (:func:`deploy_knee`)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from search_space import ArchSpec, VaenasInputError

from .files import atomic_write, study_dir
from .invocation import CliError


def cmd_export(args: argparse.Namespace) -> int:
    from .outputs import check_output_file
    from .report import export_trial, load_view, pick_trial

    if args.model or args.format is not None:
        return _export_formats(args)
    if not args.study:
        raise CliError("export: name a STUDY (or --model RUN_DIR/model.pt with --format)")
    if args.out:
        check_output_file(args.out, force=args.force)
    view = load_view(args.study, args.runs_dir, args.storage)
    n = pick_trial(view, trial=args.trial, pick=args.pick, max_constraints=args.max)
    out = Path(args.out) if args.out else study_dir(args.runs_dir, view.name) / "export" / _export_name(args, n)
    check_output_file(out, force=args.force or (not args.out and _same_export(out, view.name, n)))
    doc = export_trial(view, n, out)
    print(f"exported trial {n} ({doc['spec_id']}): {out}")
    print(f"retrain it: {doc['retrain_command']}")
    return 0


def _export_formats(args: argparse.Namespace) -> int:
    """``--format``: a folder with the chosen deployable formats and manifest.json, from a study's
    trial (its trained weights) or a checkpoint (``--model``)."""
    from evaluator.deploy import check_formats_available

    from .deploy import export_weights, parse_formats, temp_dir

    formats = parse_formats(args.format or ["arch"])
    check_formats_available(formats)
    if bool(args.model) == bool(args.study):
        raise CliError("export: give either a STUDY or --model RUN_DIR/model.pt, not both" if args.model
                       else "export: name a STUDY or --model RUN_DIR/model.pt")
    with temp_dir() as tmp:
        source = _from_checkpoint(args, formats) if args.model else _from_trial(args, formats, Path(tmp))
        model, meta, arch_doc, out, what = source
        if model is None:
            return _write_arch_only(out, arch_doc, meta, what)
        doc = export_weights(model, out, formats, meta, arch_doc, data_root=getattr(args, "data_root", None))
    _print_exported(out, formats, model.spec, doc, what)
    return 0


def _from_checkpoint(args: argparse.Namespace, formats: tuple[str, ...]):
    from evaluator.deploy import files_for

    from .outputs import check_output_dir
    from .retrain import load_checkpoint

    if args.trial is not None or args.pick or args.max:
        raise CliError("--trial/--pick/--max choose a study's trial; --model exports that checkpoint itself")
    ck = Path(args.model)
    out = check_output_dir(Path(args.out) if args.out else ck.parent / "deploy", files_for(formats), force=args.force)
    model, meta = load_checkpoint(ck, "--model", with_meta=True)
    meta["source"] = str(ck)
    return model, meta, None, out, f"{ck}"


def _from_trial(args: argparse.Namespace, formats: tuple[str, ...], tmp: Path):
    from evaluator.deploy import files_for

    from .deploy import trial_checkpoint
    from .outputs import check_output_dir
    from .report import export_trial, load_view, pick_trial
    from .retrain import load_checkpoint

    view = load_view(args.study, args.runs_dir, args.storage)
    n = pick_trial(view, trial=args.trial, pick=args.pick, max_constraints=args.max)
    stem = _export_name(args, n)[:-len(".json")]
    out = Path(args.out) if args.out else study_dir(args.runs_dir, view.name) / "export" / stem
    out = check_output_dir(out, files_for(formats), force=args.force or (not args.out and _same_export(
        out / "arch.json", view.name, n)))
    model, meta = None, {}
    if formats != ("arch",):
        model, meta = load_checkpoint(trial_checkpoint(view, n, args.runs_dir, tmp), f"trial {n}", with_meta=True)
    arch_doc = export_trial(view, n, tmp / "arch.json")
    arch_doc["retrain_command"] = arch_doc["retrain_command"].replace(str(tmp / "arch.json"), str(out / "arch.json"))
    meta.update({"study": view.name, "trial": n})
    return model, meta, arch_doc, out, f"trial {n} of {view.name}"


def _write_arch_only(out: Path, arch_doc: dict, meta: dict, what: str) -> int:
    """Arch only: the spec's export document and a manifest naming it."""
    spec = ArchSpec.from_dict(arch_doc["spec"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "arch.json", json.dumps(arch_doc, indent=2).encode())
    atomic_write(out / "manifest.json", json.dumps({
        "format": "vaenas.export", "version": 1, "spec_id": spec.id, "spec": spec.to_dict(),
        "formats": {"arch": ["arch.json"]}, "files": {"arch.json": (out / "arch.json").stat().st_size},
        **{k: meta[k] for k in ("study", "trial") if k in meta}}, indent=2).encode())
    print(f"exported {what} ({spec.id}) as arch: {out}")
    print(f"retrain it: {arch_doc['retrain_command']}")
    return 0


def _print_exported(out: Path, formats: tuple[str, ...], spec: ArchSpec, doc: dict, what: str) -> None:
    from .deploy import NotBuilt, build_and_size, how_to_run

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
    if args.trial is not None:
        stem = f"trial{n}"
    else:
        stem = (args.pick or "knee").replace(":", "_")
    for m in (args.max or []) if args.trial is None else []:
        stem += "_max_" + m.replace("=", "-")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem) + ".json"


def deploy_knee(view, knee: int, runs_dir: str, out: Path, data_root: str | None, arch_doc: dict) -> None:
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
    doc = export_weights(model, out, formats, meta, arch_doc, data_root=data_root)
    try:
        from evaluator import load_data

        from .report import study_data

        task = study_data(view).get("task")
        d = load_data(study_data(view)["dataset"], data_root, n_train=1, n_eval=1, task=task)
        x = (d.score_val if task else d.val)[0]  # an anomaly model reads what a device sees (grey levels)
        (out / "input.txt").write_text(" ".join(f"{v:.9g}" for v in x.reshape(-1).tolist()) + "\n")
    except Exception:  # the example input is a convenience
        pass
    built = ""
    try:
        sz = build_and_size(out)
        built = f"; C built: size text+data {sz['flash_bytes_measured']:,} bytes, bss {sz['bss']:,} bytes" if sz else ""
    except NotBuilt as e:
        built = f"; {e}"
    kind = ("an INTEGER C library (int8 activations, int32 accumulation, fixed-point requantisation)"
            if model.spec.is_integer else "a float C library")
    print(f"deployable winner (arch, onnx, c: {kind}): {out} - packed {doc['weights']['packed_bytes']:,} bytes, "
          f"RAM {doc['ram_bytes']:,} bytes{built}")
    for line in how_to_run(out, formats, model.spec):
        print("  " + line)


def export_parser(sub, study_args) -> None:
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
    ex.add_argument("--data-root", help="torchvision data root of an anomaly task's data (its threshold is chosen "
                                        "on the validation split); default $VAENAS_DATA or ~/.cache/vaenas/data")
    ex.add_argument("--force", action="store_true", help="replace an earlier export at --out")
    ex.set_defaults(func=cmd_export)
