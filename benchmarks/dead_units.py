"""Why the conv recipes warm the learning rate up: ReLU units alive during the first Adam steps.

Trains the largest conv2.fc1 spec of the conv fidelity space (``supernet_fidelity.CONV_SPACE``:
conv 32/32 5x5 stride 2, FC 256, latent 32, float weights) on MNIST with the fidelity benchmark's
standalone recipe (lr 2e-3, cosine, batch 100) and prints, after 0/1/2/5/10/20/50 steps, the share
of each ReLU layer's units (channels for conv layers) that are positive for at least one of 500
validation images - with and without a linear lr warm-up - and the −ELBO after the full 5 epochs.

    python benchmarks/dead_units.py --data-root .data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluator import TrainConfig, evaluate_neg_elbo, load_data, seeded_model, train  # noqa: E402
from search_space import SearchSpace  # noqa: E402
from search_space.supernet import extreme_spec  # noqa: E402
from supernet_fidelity import CONV_SPACE  # noqa: E402

RELU_LAYERS = ("enc.conv0", "enc.conv1", "enc.fc0", "dec.fc0", "dec.proj", "dec.tconv0")


def alive(model, x: torch.Tensor) -> dict[str, float]:
    """Per layer: the share of units (conv: channels) positive somewhere for at least one image."""
    out, hooks = {}, []
    for name in RELU_LAYERS:
        def hook(_m, _i, o, name=name):
            pos = (o > 0).flatten(2).any(-1) if o.dim() == 4 else (o > 0)
            out[name] = pos.any(0).float().mean().item()
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100, help="the warm-up steps compared with none")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    space = SearchSpace.from_dict(CONV_SPACE)
    spec = extreme_spec(space, "max", depth="conv2.fc1")
    data = load_data("mnist", args.data_root, n_train=20000)
    x = data.val[:500].float() / 255
    print(f"spec {spec.id}: conv {list(spec.enc_channels)} k{list(spec.kernels)} FC {list(spec.enc_hidden)} "
          f"latent {spec.latent_dim}, bits {list(spec.weight_bits)}")
    print("| lr warm-up | step | " + " | ".join(RELU_LAYERS) + " |")
    print("|---|---|" + "---|" * len(RELU_LAYERS))
    for warm in (0, args.warmup):
        for steps in (0, 1, 2, 5, 10, 20, 50):
            model = seeded_model(spec, 0, "cpu")
            if steps:
                train(model, data.train, TrainConfig(max_steps=steps, epochs=0, batch_size=100, lr=args.lr,
                                                     lr_warmup_steps=warm, device="cpu"))
            a = alive(model, x)
            print(f"| {warm} | {steps} | " + " | ".join(f"{a[n]:.0%}" for n in RELU_LAYERS) + " |", flush=True)
    for warm in (0, args.warmup):
        model = seeded_model(spec, 0, "cpu")
        res = train(model, data.train, TrainConfig(epochs=5, batch_size=100, lr=args.lr, lr_schedule="cosine",
                                                   lr_warmup_steps=warm, device="cpu"))
        print(f"lr warm-up {warm:3d} steps: 5 epochs -> validation −ELBO {evaluate_neg_elbo(model, data.val)['neg_elbo']:.2f} "
              f"nats (final training loss {res.final_loss:.1f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
