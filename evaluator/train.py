"""The one training loop: Adam on the −ELBO, for any likelihood.

Batches are drawn from the stored training data and put into model space by the model's
likelihood (``model.likelihood.train_batch``: Bernoulli binarises stochastically, the discretised
logistic rescales 8-bit values, the Gaussian takes them as they are). Everything random
(shuffling, binarisation, reparameterisation noise) comes from one
``torch.Generator`` seeded from ``TrainConfig.seed``; model initialisation is seeded by
:func:`seeded_model`. Extra loss terms (e.g. distillation) plug in through ``extra_loss``,
never through branches in here. A model's own per-step schedule - ``model.after_step(step,
total)``, the VAE's gradual magnitude pruning - runs after each optimiser step, and training
ends with ``model.finalize_sparsity()`` (every sparse layer at its exact target).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from search_space import ArchSpec, VaenasInputError, build_vae
from search_space.errors import check_block, check_type
from search_space.quant import set_fake_quant

from .elbo import neg_elbo_terms

# An extra loss: f(model, x, eps) -> scalar tensor added to the mean −ELBO (e.g. distillation).
ExtraLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# A whole step loss replacing the −ELBO of one model: f(model, x, generator, kl_weight) -> scalar
# (e.g. the supernet's sandwich rule); everything else - data, optimiser, schedule, checks - is shared.
StepLoss = Callable[[torch.nn.Module, torch.Tensor, torch.Generator, float], torch.Tensor]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite or exploded; ``str(e)`` says when."""


def check_device(device, key: str = "device") -> None:
    """One line if ``device`` is not ``auto``, ``cpu`` or an available ``cuda[:N]``."""
    d = str(device)
    if d in ("auto", "cpu"):
        return
    if d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit()):
        if not torch.cuda.is_available():
            raise VaenasInputError(f"{key}: {d!r} asked for a GPU but none is available here; use auto or cpu")
        if ":" in d and int(d[5:]) >= torch.cuda.device_count():
            raise VaenasInputError(f"{key}: {d!r}: this machine has {torch.cuda.device_count()} GPU(s)")
        return
    raise VaenasInputError(f"{key}: {d!r} is not a device; use auto, cpu, cuda or cuda:N")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seeded_model(spec: ArchSpec, seed: int, device: str | torch.device = "cpu"):
    """Build ``spec`` with initial weights drawn from ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vae(spec)
    return model.to(resolve_device(device))


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 1.0
    max_steps: int | None = None  # if set, stop after this many steps (whichever comes first)
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    kl_warmup_steps: int = 0  # linear KL weight 0 -> 1 over this many steps
    grad_clip: float | None = None
    lr_schedule: str = "constant"  # or "cosine": lr decays to lr * lr_min_ratio over the run
    lr_min_ratio: float = 0.05
    lr_warmup_steps: int = 0  # linear lr ramp lr/n -> lr over the first n steps (then the schedule)
    device: str = "auto"
    qat_delay: float = 0.0  # fraction of the steps trained with float weights before fake quantisation starts
    divergence_threshold: float = 1e6  # mean −ELBO above this (nats) counts as diverged

    def __post_init__(self) -> None:
        if not (self.epochs > 0 or (self.max_steps or 0) > 0):
            raise VaenasInputError(f"epochs: must be > 0 (or set max_steps), got {self.epochs}")
        if not math.isfinite(self.epochs) or self.epochs > 1e6:
            raise VaenasInputError(f"epochs: must be a finite number of at most 1e6, got {self.epochs}")
        if self.max_steps is not None and not 1 <= self.max_steps <= 10**9:
            raise VaenasInputError(f"max_steps: must be between 1 and 1e9 (or null), got {self.max_steps}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise VaenasInputError(f"seed: must be a whole number from 0 to 2**63 - 1, got {self.seed!r}")
        check_device(self.device, "device")
        if self.batch_size < 1:
            raise VaenasInputError(f"batch_size: must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise VaenasInputError(f"lr: must be > 0, got {self.lr}")
        if not 0.0 <= self.qat_delay < 1.0:
            raise VaenasInputError(f"qat_delay: must be a fraction in [0, 1), got {self.qat_delay}")
        if self.lr_warmup_steps < 0:
            raise VaenasInputError(f"lr_warmup_steps: must be >= 0, got {self.lr_warmup_steps}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise VaenasInputError(f"lr_schedule: must be 'constant' or 'cosine', got {self.lr_schedule!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    KEYS = ("epochs", "batch_size", "lr", "max_steps", "qat_delay", "lr_schedule", "kl_warmup_steps", "lr_warmup_steps",
            "device")

    @classmethod
    def from_config(cls, block, seed: int) -> "TrainConfig":
        """A study config's ``train:`` block (one line naming ``train.KEY`` on bad input)."""
        tr = check_block("train", block, set(cls.KEYS))
        for k, t in (("epochs", (int, float)), ("batch_size", int), ("lr", (int, float)), ("lr_schedule", str),
                     ("kl_warmup_steps", int), ("lr_warmup_steps", int), ("device", str)):
            if k in tr:
                check_type(f"train.{k}", tr[k], t)
        if "max_steps" in tr:
            check_type("train.max_steps", tr["max_steps"], int, allow_none=True)
        if "epochs" in tr and isinstance(tr["epochs"], float) and not math.isfinite(tr["epochs"]):
            raise VaenasInputError(f"train.epochs: must be finite, got {tr['epochs']}")
        try:
            return cls(**tr, seed=seed)
        except VaenasInputError as e:
            raise VaenasInputError(str(e) if str(e).startswith("seed") else f"train.{e}") from None


@dataclass
class TrainResult:
    steps: int
    epochs: float
    seconds: float
    final_loss: float  # mean −ELBO (with the final KL weight) over the last 50 steps
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since last entry)
    stopped: bool = False  # ``at_checkpoint`` said stop before the budget was used up


# Called at each checkpoint step (``train(checkpoints=...)``): f(index, step, total) -> continue training?
AtCheckpoint = Callable[[int, int, int], bool]


def checkpoint_steps(fractions, total: int) -> list[int]:
    """The steps at which fractions of a ``total``-step run end: ``ceil(f * total)``, at least 1."""
    return [max(1, math.ceil(f * total - 1e-9)) for f in fractions]


@functools.cache
def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed blocks of up to 32 MiB instead of returning them to the kernel.

    A training step on CPU allocates and frees tensors of a few hundred KiB to a few MiB (a 400x784 weight's
    fake-quantised copy and gradients: 1.25 MiB each); with glibc's defaults many of them come from fresh
    ``mmap`` pages that fault in and are zeroed on every step (the allocator advice in PyTorch's CPU
    performance guide). Once per process, glibc only (elsewhere: nothing); the heap keeps at most 256 MiB
    free. Measured in ``benchmarks/README.md``, "Training step"."""
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def adam(params, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the fused kernel on CPU and CUDA (one pass over every parameter instead of a dozen
    ``foreach`` ops; a small model's optimiser step on CPU was 18 % of its training step - measured in
    ``benchmarks/README.md``, "Training step"); the default implementation elsewhere."""
    params = list(params)
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() and not p.is_sparse for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """The learning rate of (0-based) ``step`` of ``total``: the schedule (constant, or cosine from
    ``lr`` to ``lr * lr_min_ratio``), times a linear warm-up ``(step + 1) / lr_warmup_steps`` over the
    first ``lr_warmup_steps`` steps. (Warm-up keeps Adam's first, sign-like steps from pushing a
    whole ReLU layer below zero; ``benchmarks/README.md`` has the measurement.)"""
    lr = cfg.lr
    if cfg.lr_schedule == "cosine":
        frac = step / max(1, total - 1)
        lr = cfg.lr * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))
    if step < cfg.lr_warmup_steps:
        lr = lr * (step + 1) / cfg.lr_warmup_steps
    return lr


def train(
    model: torch.nn.Module,
    train_u8: torch.Tensor,
    cfg: TrainConfig,
    *,
    extra_loss: ExtraLoss | None = None,
    step_loss: StepLoss | None = None,
    progress: bool = False,
    log_every: int = 50,
    checkpoints: tuple[float, ...] = (),
    at_checkpoint: AtCheckpoint | None = None,
) -> TrainResult:
    """Train ``model`` (a VAE or a supernet: anything with ``.likelihood``) in place on the stored training
    data ``train_u8`` (``Splits.train``: uint8 images or float vectors); raises :class:`TrainingDiverged`.

    ``extra_loss(model, x, eps)`` is added to the −ELBO (distillation); ``step_loss(model, x, g, beta)``
    replaces it (a supernet's sandwich rule). ``checkpoints``: fractions of the run (e.g. rungs 0.1, 0.3)
    at whose last step ``at_checkpoint(index, step, total)`` is called; it returning False ends
    training there (``TrainResult.stopped``)."""
    return _Loop(model, train_u8, cfg, extra_loss, step_loss, log_every, checkpoints, at_checkpoint).run(progress)


class _Loop:
    """One training run: the batches of each epoch in a seeded order, one optimiser step each."""

    def __init__(self, model, train_u8, cfg: TrainConfig, extra_loss, step_loss, log_every: int, checkpoints,
                 at_checkpoint):
        self.model, self.cfg, self.extra_loss, self.step_loss = model, cfg, extra_loss, step_loss
        self.log_every, self.at_checkpoint = log_every, at_checkpoint
        self.device = resolve_device(cfg.device)
        keep_freed_memory()
        if self.device.type == "cuda":  # the same run twice on a GPU: no autotuned or nondeterministic conv kernels
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        model.to(self.device).train()
        self.data = train_u8.to(self.device)
        self.n = len(self.data)
        self.steps_per_epoch = math.ceil(self.n / cfg.batch_size)
        total = int(math.ceil(cfg.epochs * self.steps_per_epoch)) if cfg.epochs > 0 else 0
        if cfg.max_steps:
            total = min(total, cfg.max_steps) if total else cfg.max_steps
        self.total = total
        self.g = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.opt = adam(model.parameters(), cfg.lr, self.device)
        self.latent = model.spec.latent_dim if step_loss is None else 0
        self.lik = model.likelihood
        self.delay_steps = int(cfg.qat_delay * total)
        self.stops = dict((s, i) for i, s in reversed(list(enumerate(checkpoint_steps(checkpoints, total)))))
        self.after_step = getattr(model, "after_step", None)  # the model's own per-step schedule (pruning), if any
        self.history: list[tuple[int, float]] = []
        self.acc, self.acc_n, self.recent, self.step, self.bar = torch.zeros((), device=self.device), 0, [], 0, None

    def run(self, progress: bool) -> TrainResult:
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc="train", unit="step", leave=False)
        set_fake_quant(self.model, self.delay_steps == 0)
        t0 = time.perf_counter()
        stopped = False
        while self.step < self.total and not stopped:
            perm = torch.randperm(self.n, generator=self.g, device=self.device)
            for i in range(0, self.n, self.cfg.batch_size):
                if self.step >= self.total:
                    break
                if self.one_step(perm[i : i + self.cfg.batch_size]):
                    stopped = True
                    break
        return self.finish(t0, stopped)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        cfg, step = self.cfg, self.step
        beta = min(1.0, (step + 1) / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0
        if self.step_loss is not None:
            return self.step_loss(self.model, x, self.g, beta)
        eps = torch.randn((len(x), self.latent), generator=self.g, device=self.device)
        rec, kl = neg_elbo_terms(self.model, x, eps)
        loss = (rec + beta * kl).mean()
        return loss + self.extra_loss(self.model, x, eps) if self.extra_loss is not None else loss

    def one_step(self, idx: torch.Tensor) -> bool:
        """One optimiser step on the examples ``idx``; True when a checkpoint says stop."""
        cfg, model = self.cfg, self.model
        if self.step == self.delay_steps and self.delay_steps:
            set_fake_quant(model, True)
        loss = self.loss(self.lik.train_batch(self.data[idx], self.g))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if cfg.lr_schedule != "constant" or self.step <= cfg.lr_warmup_steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(cfg, self.step, self.total)
        self.opt.step()
        self.acc += loss.detach()
        self.acc_n += 1
        self.step += 1
        if self.after_step is not None:
            self.after_step(self.step, self.total)
        if self.acc_n == self.log_every or self.step == self.total:
            self.log()
        step = self.step
        return step in self.stops and step < self.total and self.at_checkpoint is not None \
            and not self.at_checkpoint(self.stops[step], step, self.total)

    def log(self) -> None:
        """The mean loss since the last log (one host sync per ``log_every`` steps); diverged: raise."""
        mean, step, n = self.acc.item() / self.acc_n, self.step, self.acc_n
        if not math.isfinite(mean) or mean > self.cfg.divergence_threshold:
            set_fake_quant(self.model, True)
            raise TrainingDiverged(f"mean loss {mean:.4g} over steps {step - n + 1}-{step} (lr={self.cfg.lr})")
        self.history.append((step, mean))
        self.recent.append((n, mean))
        self.acc.zero_()
        self.acc_n = 0
        if self.bar is not None:
            self.bar.update(self.log_every if step % self.log_every == 0 else step % self.log_every)
            self.bar.set_postfix(loss=f"{mean:.2f}")

    def finish(self, t0: float, stopped: bool) -> TrainResult:
        set_fake_quant(self.model, True)
        if hasattr(self.model, "finalize_sparsity"):
            self.model.finalize_sparsity()
        if self.bar is not None:
            self.bar.close()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        last = self.recent[-1][1] if self.recent else float("nan")
        return TrainResult(steps=self.step, epochs=self.step / self.steps_per_epoch, seconds=seconds, final_loss=last,
                           history=self.history, stopped=stopped)
