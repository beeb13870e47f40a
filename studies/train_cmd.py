"""``vaenas train`` and ``vaenas retrain``: one architecture trained through the one pipeline
(:func:`studies.retrain.fit`); ``train`` is ``retrain`` without distillation, latency and reconstructions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from search_space import ArchSpec
from search_space.errors import read_text
from search_space.plan import check_param_cap

from .invocation import CliError

SEED_MLP = ArchSpec.mlp((400, 400), 20)
TRAIN_FILES = ["model.pt", "weights.packed.bin", "arch.json", "report.json"]
RETRAIN_FILES = TRAIN_FILES + ["reconstructions.png"]


def load_arch(path: str) -> ArchSpec:
    """An arch spec JSON, or an exported arch file (``vaenas export``) that wraps one."""
    return load_arch_doc(path)[0]


def load_arch_doc(path: str) -> tuple[ArchSpec, dict | None]:
    """The spec of an arch file and, for an exported one, the whole export document."""
    text = read_text(path, f"--arch: file {path!r} does not exist",
                     lambda e: f"--arch: {path!r} is not a readable text file ({type(e).__name__}); give an arch JSON",
                     CliError)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"--arch: {path!r} is not valid JSON ({e})") from None
    spec, doc = (ArchSpec.from_dict(d["spec"]), d) if isinstance(d, dict) and isinstance(d.get("spec"), dict) \
        else (ArchSpec.from_dict(d), None)  # an exported arch file wraps the spec
    check_param_cap(spec, "--arch")  # counted before anything is built
    return spec, doc


def task_arg(value: str | None):
    """``--task``: an anomaly task block as inline YAML/JSON ('{kind: anomaly, normal: [0]}')."""
    if value is None:
        return None
    import yaml

    try:
        v = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise CliError(f"--task: not a valid mapping ({str(e).splitlines()[0]}); e.g. '{{kind: anomaly, normal: [0]}}'") \
            from None
    from evaluator.anomaly import AnomalyTask

    return AnomalyTask.parse(v).to_config()


def dataset_arg(value: str | None):
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
    from evaluator import TrainConfig, iwae_nll, load_data
    from search_space import pack_model

    from .files import atomic_write
    from .outputs import check_output_dir
    from .retrain import fit, write_weights

    spec = load_arch(args.arch) if args.arch else None
    if args.bits is not None:  # a bad bit-width is one line before any data is read
        (spec or SEED_MLP).replace(weight_bits=(args.bits,) * len((spec or SEED_MLP).weight_bits))
    if args.iwae_k < 0:
        raise CliError(f"--iwae-k: must be >= 0 (0 skips it), got {args.iwae_k}")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, lr_schedule=args.lr_schedule)
    out = check_output_dir(args.out, TRAIN_FILES, force=args.force)
    data = load_data(dataset_arg(args.dataset), args.data_root, n_train=args.n_train, task=task_arg(args.task))
    if spec is None:  # the seed MLP VAE, for this data's shape and likelihood
        spec = SEED_MLP.replace(input_shape=data.input_shape, likelihood=data.likelihood)
    if args.bits is not None:
        spec = spec.replace(weight_bits=(args.bits,) * len(spec.weight_bits))
    model, res, test, meta = fit(spec, data, cfg, out, what="--arch", announce=(
        f"training {spec.id} ({spec.family}, latent {spec.latent_dim}, bits {list(spec.weight_bits)}, "
        f"{spec.likelihood}) on {data.name} for {args.epochs:g} epochs"))
    report = {"spec": spec.to_dict(), "spec_id": spec.id, **meta, "train": cfg.to_dict(),
              "train_seconds": res.seconds, "steps": res.steps, "test_neg_elbo": test["neg_elbo"],
              "test_kl": test["kl"], "params": model.num_params()}
    if "bits_per_dim" in test:
        report["test_bits_per_dim"] = test["bits_per_dim"]
    packed = pack_model(model)
    report["packed_bytes"] = len(packed)
    if args.iwae_k:
        report[f"test_iwae{args.iwae_k}_nll"] = iwae_nll(model, data.test, k=args.iwae_k)
    if data.task is not None:
        from .retrain import anomaly_report

        report["anomaly"] = anomaly_report(model, data)
    write_weights(out, spec, packed)
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
    bpd = f" ({test['bits_per_dim']:.4f} bits/dim)" if "bits_per_dim" in test else ""
    print(f"test -ELBO {test['neg_elbo']:.2f} nats{bpd} | params {report['params']:,} | packed {len(packed):,} bytes | "
          f"train {res.seconds:.1f}s")
    if args.iwae_k:
        print(f"test IWAE-{args.iwae_k} NLL {report[f'test_iwae{args.iwae_k}_nll']:.2f} nats")
    print(f"wrote {out}/model.pt, weights.packed.bin, arch.json, report.json")
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from evaluator.deploy import check_formats_available, files_for, parse_formats

    from .outputs import check_output_dir
    from .retrain import retrain

    formats = () if args.formats.strip() == "none" else tuple(
        f for f in parse_formats(args.formats, "--formats") if f != "arch")  # arch.json is always written
    check_formats_available(formats)
    spec, doc = load_arch_doc(args.arch)
    # each arch file its own folder: two exports retrained side by side never share one
    out = check_output_dir(args.out or Path(args.arch).parent / f"retrain_{Path(args.arch).stem}",
                           RETRAIN_FILES + (files_for(formats) if formats else []), force=args.force)
    dataset = dataset_arg(args.dataset)
    if dataset is None:  # the dataset the export was searched on, else MNIST
        dataset = ((doc or {}).get("provenance") or {}).get("dataset") or "mnist"
    task = task_arg(args.task) if args.task else ((doc or {}).get("provenance") or {}).get("task")
    report = retrain(spec, epochs=args.epochs, dataset=dataset, data_root=args.data_root, out=out,
                     teacher=args.teacher, distill_weight=args.distill_weight, seed=args.seed, lr=args.lr,
                     batch_size=args.batch_size, iwae_k=args.iwae_k, device=args.device, n_train=args.n_train,
                     lr_warmup_steps=args.lr_warmup_steps, formats=formats, task=task)
    _print_retrained(report)
    return 0


def _print_retrained(report: dict) -> None:
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


def train_parser(sub) -> None:
    t = sub.add_parser("train", help="train one architecture (default: the seed MLP VAE 784-400-400-20) and report")
    t.add_argument("--arch", help="arch spec JSON (or an exported arch file); default the seed MLP VAE")
    t.add_argument("--bits", type=int, help="override: every weight layer at this bit-width")
    t.add_argument("--dataset", default="mnist",
                   help="mnist | fashion_mnist | a dataset block as YAML, e.g. '{source: array, path: x.npy, "
                        "likelihood: gaussian}'")
    t.add_argument("--task", help="an anomaly task as YAML, e.g. '{kind: anomaly, normal: [0]}': train on the normal "
                                  "labels only, report test AUROC and the validation threshold")
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


def retrain_parser(sub) -> None:
    rt = sub.add_parser("retrain", help="train an exported architecture from scratch (QAT), optionally distilled")
    rt.add_argument("arch", help="exported arch JSON (or a bare spec JSON)")
    rt.add_argument("--epochs", type=float, required=True, help="training epochs (required; the README uses 30)")
    rt.add_argument("--teacher", help="teacher VAE checkpoint (model.pt) for knowledge distillation")
    rt.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation term (with --teacher)")
    rt.add_argument("--dataset", help="mnist | fashion_mnist | a dataset block as YAML (default: the dataset "
                                      "recorded in the exported arch file, else mnist)")
    rt.add_argument("--task", help="an anomaly task as YAML, e.g. '{kind: anomaly, normal: [0]}' (default: the task "
                                   "recorded in the exported arch file, if any)")
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
