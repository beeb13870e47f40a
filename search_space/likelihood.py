"""What a decoder's output means: the one owner of each likelihood p(x | z).

A likelihood decides

* how many numbers the decoder outputs per data dimension (:attr:`Likelihood.n_params`): the
  builder, both supernets and DARTS size the output layer from it (``ArchSpec.output_shape``);
* how stored data become the values the model sees ("model space"): :meth:`train_batch` (per
  batch, may be random - e.g. dynamic binarisation) and :meth:`eval_data` (once, fixed seed);
* ``log p(x | decoder output)`` summed over dimensions, per example (:meth:`log_prob`) - the
  reconstruction term of the −ELBO, of the IWAE bound, of the supernet's and DARTS' losses;
* the distribution's parameters (:meth:`params`), its mean (:meth:`mean`), sampling
  (:meth:`sample`), a distillation term between two decoders (:meth:`distill`) and how a mean
  is drawn as an image (:meth:`to_unit`).

The decoder output has shape ``(N, n_params * S0, *S_rest)`` for data of shape ``(S0, *S_rest)``
(images ``(C, H, W)``, vectors ``(D,)``): the parameters are stacked along axis 1, parameter ``p``
in ``[p * S0, (p + 1) * S0)``.

Likelihoods:

``bernoulli``
    Data in [0, 1] (grey levels / 255). Training batches are binarised stochastically, evaluation
    data once with a fixed seed. Decoder output: logits.
``discretized_logistic``
    8-bit data (integers 0..255), mapped to ``x = 2 * v / 255 - 1`` in [-1, 1]; each value is one
    of 256 bins of width 2/255 under a logistic (loc, scale); the edge bins take the tails
    (PixelCNN++, Salimans et al. 2017). Decoder output: loc and a raw log-scale per dimension; the
    log-scale used is ``-7 + softplus(raw + 7)`` (a smooth floor at e^-7, as PixelCNN++ clamps).
``gaussian``
    Continuous data (standardised per feature for arrays; see ``evaluator/data.py``). Decoder
    output: mean and a raw log-std per dimension; the log-std used is ``ln(1e-3) + softplus(raw -
    ln(1e-3))`` (a smooth floor at std 1e-3, so the density cannot grow without bound).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .errors import SpecError

LOG_2PI = math.log(2 * math.pi)


class _Softplus(torch.autograd.Function):
    """``log(1 + e^t)`` as ``max(t, 0) + log1p(e^-|t|)``, with ``log1p(e)`` computed as
    ``log(u) - ((u - 1) - e) / u`` for ``u = 1 + e`` (the rounding of ``1 + e`` corrected to first
    order: as accurate as ``torch.log1p``). Why: on CPU, PyTorch's ``log1p`` - and so ``F.softplus``,
    ``F.logsigmoid`` and ``binary_cross_entropy_with_logits`` - runs at about 5 ns per element on 2
    threads, 15x slower than ``exp`` or ``log``; it was 19 % of a small MLP's training step
    (``benchmarks/README.md``, "Training step"). The gradient is ``sigmoid(t)``."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(t)
        e = torch.exp(-t.abs())
        u = 1 + e
        return t.clamp(min=0) + (torch.log(u) - ((u - 1) - e) / u)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (t,) = ctx.saved_tensors
        return grad * torch.sigmoid(t)


def softplus(t: torch.Tensor) -> torch.Tensor:
    """``log(1 + e^t)``, elementwise (see :class:`_Softplus`); every likelihood uses this one."""
    return _Softplus.apply(t)


def bernoulli(p: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
    """0/1 draws with ``P(1) = p``: ``rand < p``. On CPU this is bit-identical to ``torch.bernoulli(p,
    generator=g)`` (same generator stream, same values) and 3-4x faster."""
    u = torch.rand(p.shape, generator=g, device=p.device, dtype=p.dtype)
    return (u < p).to(p.dtype)


def _soft_floor(raw: torch.Tensor, floor: float) -> torch.Tensor:
    return floor + softplus(raw - floor)


def to_unit(raw: torch.Tensor) -> torch.Tensor:
    """Stored data as floats in the data's own scale: uint8 grey levels / 255, floats unchanged."""
    return raw.float().div(255.0) if raw.dtype == torch.uint8 else raw.float()


class Likelihood:
    name: str = ""
    n_params: int = 1
    discrete: bool = False  # a probability mass over discrete values (bits/dim is a code length)
    requirement: str = ""  # what the stored data must be, for error messages
    input_doc: str = ""  # what a deployed model's input x must be (model space), for export manifests
    param_docs: tuple[str, ...] = ()  # what each stacked decoder output parameter means, for manifests
    # C99 statements computing `lp` (log p of value i) and `m` (the mean of value i) from the decoder output `o`
    # (parameter p of value i at o[p * n + i]), the data `x`, `i` and `n`; `vae_softplus(float)` is provided
    c_log_prob: str = ""
    c_mean: str = ""

    def onnx_log_prob(self, g, params: list[str], x: str) -> str:
        """ONNX nodes of log p per value from the split parameters ``params`` and data ``x`` (broadcast)."""
        raise NotImplementedError

    def onnx_mean(self, g, params: list[str]) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ data
    def check_data(self, raw: torch.Tensor) -> str | None:
        """``None`` if ``raw`` (stored data) suits this likelihood, else what is wrong (one phrase)."""
        return None

    def train_batch(self, raw: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """A training batch in model space (may draw from ``g``)."""
        return to_unit(raw)

    def eval_data(self, raw: torch.Tensor, seed: int) -> torch.Tensor:
        """Evaluation data in model space, fixed (seeded) so every evaluation sees the same values."""
        return to_unit(raw)

    def score_data(self, raw: torch.Tensor) -> torch.Tensor:
        """What a deployed anomaly score reads: model space without any randomness (what a device sees)."""
        return self.eval_data(raw, 0)

    # ------------------------------------------------------------------ the distribution
    def split(self, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.chunk(self.n_params, dim=1) if self.n_params > 1 else (out,)

    def params(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | out)`` summed over every dimension: shape ``(N,)``, nats."""
        raise NotImplementedError

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The decoder's prediction in model space (the distribution's mean; see each class)."""
        raise NotImplementedError

    def sample(self, out: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-example distillation term pulling the student's distribution to the (detached) teacher's."""
        raise NotImplementedError

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space values drawn as an image in [0, 1]."""
        return x.clamp(0, 1)


class Bernoulli(Likelihood):
    name = "bernoulli"
    n_params = 1
    discrete = True
    requirement = "values in [0, 1] (or 8-bit grey levels)"
    input_doc = "values in [0, 1] (grey level / 255; the model was trained on binarised values)"
    param_docs = ("logit: p(x = 1) = sigmoid(logit)",)

    def check_data(self, raw: torch.Tensor) -> str | None:
        if raw.dtype == torch.uint8:
            return None  # grey levels: always in [0, 1] once divided by 255
        u = to_unit(raw)
        lo, hi = float(u.min()), float(u.max())
        if lo < 0 or hi > 1:
            return f"values must lie in [0, 1], got min {lo:g} and max {hi:g}"
        return None

    def train_batch(self, raw: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return bernoulli(to_unit(raw), g)

    def eval_data(self, raw: torch.Tensor, seed: int) -> torch.Tensor:
        return bernoulli(to_unit(raw), torch.Generator().manual_seed(seed))

    def score_data(self, raw: torch.Tensor) -> torch.Tensor:
        """Grey levels / 255, not binarised: a device scores the image it sees, and random bits would add noise
        to every anomaly score."""
        return to_unit(raw)

    def params(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": out}

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = out.flatten(1)
        return (x.flatten(1) * out - softplus(out)).sum(1)  # log sigmoid(l) if x = 1, log sigmoid(-l) if 0

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)

    def sample(self, out: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        return bernoulli(torch.sigmoid(out), g)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s = student.flatten(1)
        return (softplus(s) - torch.sigmoid(teacher).flatten(1) * s).sum(1)  # BCE with the teacher's mean

    c_log_prob = "float l = o[i];\n        lp = x[i] * l - vae_softplus(l);"
    c_mean = "m = 1.0f / (1.0f + expf(-o[i]));"

    def onnx_log_prob(self, g, params: list[str], x: str) -> str:
        (l,) = params
        return g.op("Sub", [g.op("Mul", [x, l], "xl"), g.op("Softplus", [l], "sp")], "lp")

    def onnx_mean(self, g, params: list[str]) -> str:
        return g.op("Sigmoid", [params[0]], "mean")


class _LocScale(Likelihood):
    n_params = 2
    log_scale_floor = 0.0

    def params(self, out: torch.Tensor) -> dict[str, torch.Tensor]:
        loc, raw = self.split(out)
        return {"loc": loc, "log_scale": _soft_floor(raw, self.log_scale_floor)}

    def distill(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        # KL(teacher || student) of Gaussians with the two distributions' loc and std (for the logistic,
        # std = scale * pi / sqrt(3): moment-matched; the constant factor cancels in the log-ratio)
        s, t = self.params(student), self.params(teacher)
        var_s, var_t = torch.exp(2 * s["log_scale"]), torch.exp(2 * t["log_scale"])
        kl = s["log_scale"] - t["log_scale"] + (var_t + self._var_factor() * (t["loc"] - s["loc"]).pow(2)) / (2 * var_s) - 0.5
        return kl.flatten(1).sum(1)

    def _var_factor(self) -> float:
        return 1.0

    def _onnx_log_scale(self, g, raw: str) -> str:
        f = g.const("floor", np.array(self.log_scale_floor, np.float32))
        return g.op("Add", [f, g.op("Softplus", [g.op("Sub", [raw, f], "rawf")], "sp")], "log_s")

    @property
    def _c_log_scale(self) -> str:
        return f"float ls = {self.log_scale_floor!r}f + vae_softplus(o[n + i] - ({self.log_scale_floor!r}f));"

    def onnx_mean(self, g, params: list[str]) -> str:
        return g.op("Identity", [params[0]], "mean")


class DiscretizedLogistic(_LocScale):
    name = "discretized_logistic"
    discrete = True
    log_scale_floor = -7.0
    requirement = "8-bit data: integers 0..255"
    input_doc = "x = 2 * v / 255 - 1 for 8-bit values v (0..255), in [-1, 1]"
    param_docs = ("loc: the logistic's location, model space [-1, 1]",
                  "raw log-scale: log s = -7 + softplus(raw + 7)")
    HALF_BIN = 1.0 / 255.0  # half the width of one of the 256 bins of [-1, 1]

    def check_data(self, raw: torch.Tensor) -> str | None:
        if raw.dtype == torch.uint8:
            return None
        f = raw.double()
        if float(f.min()) < 0 or float(f.max()) > 255 or not torch.equal(f, f.round()):
            return (f"needs 8-bit data (integers 0..255), got values from {float(f.min()):g} to {float(f.max()):g}"
                    + ("" if torch.equal(f, f.round()) else " that are not whole numbers"))
        return None

    @staticmethod
    def _model_space(raw: torch.Tensor) -> torch.Tensor:
        return raw.float().mul(2.0 / 255.0).sub(1.0)

    def train_batch(self, raw: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self._model_space(raw)

    def eval_data(self, raw: torch.Tensor, seed: int) -> torch.Tensor:
        return self._model_space(raw)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.params(out)
        loc, log_s = p["loc"], p["log_scale"]
        x = x.view_as(loc)
        inv_s = torch.exp(-log_s)
        a = inv_s * (x - loc + self.HALF_BIN)  # upper bin edge, standardised
        b = inv_s * (x - loc - self.HALF_BIN)  # lower bin edge
        # log(sigmoid(a) - sigmoid(b)) = log sigmoid(a) + log sigmoid(-b) + log(1 - e^(b - a)), stable
        mid = -softplus(-a) - softplus(b) + torch.log(-torch.expm1(b - a))
        lo_edge = -softplus(-a)  # x = -1: the bin takes the whole left tail, P = sigmoid(a)
        hi_edge = -softplus(b)  # x = +1: the whole right tail, P = 1 - sigmoid(b)
        lp = torch.where(x < -1 + self.HALF_BIN, lo_edge, torch.where(x > 1 - self.HALF_BIN, hi_edge, mid))
        return lp.flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The logistic's loc clamped to [-1, 1] (the mode's bin centre, up to rounding; exact mean of
        the discretised, clipped distribution differs from it only in the tails)."""
        return self.split(out)[0].clamp(-1, 1)

    def sample(self, out: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        p = self.params(out)
        u = torch.rand(p["loc"].shape, generator=g, device=out.device).clamp(1e-6, 1 - 1e-6)
        x = p["loc"] + torch.exp(p["log_scale"]) * (torch.log(u) - torch.log1p(-u))
        return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # a bin centre

    def _var_factor(self) -> float:
        return 3.0 / math.pi**2  # var of a logistic = (scale * pi)^2 / 3

    @property
    def c_log_prob(self) -> str:  # the same stable form as log_prob
        h = f"{self.HALF_BIN!r}f"
        return (f"{self._c_log_scale}\n        float is = expf(-ls), d = x[i] - o[i];\n"
                f"        float a = is * (d + {h}), b = is * (d - {h});\n"
                f"        if (x[i] < -1.0f + {h}) lp = -vae_softplus(-a);\n"
                f"        else if (x[i] > 1.0f - {h}) lp = -vae_softplus(b);\n"
                "        else lp = -vae_softplus(-a) - vae_softplus(b) + logf(-expm1f(b - a));")

    c_mean = "m = o[i] < -1.0f ? -1.0f : (o[i] > 1.0f ? 1.0f : o[i]);"

    def onnx_log_prob(self, g, params: list[str], x: str) -> str:
        loc, raw = params
        c = lambda name, v: g.const(name, np.array(v, np.float32))  # noqa: E731
        inv = g.op("Exp", [g.op("Neg", [self._onnx_log_scale(g, raw)], "nls")], "inv_s")
        d = g.op("Sub", [x, loc], "d")
        a = g.op("Mul", [inv, g.op("Add", [d, c("hb", self.HALF_BIN)], "dp")], "a")
        b = g.op("Mul", [inv, g.op("Sub", [d, c("hb", self.HALF_BIN)], "dm")], "b")
        lo = g.op("Neg", [g.op("Softplus", [g.op("Neg", [a], "na")], "spa")], "lo_edge")
        hi = g.op("Neg", [g.op("Softplus", [b], "spb")], "hi_edge")
        gap = g.op("Log", [g.op("Sub", [c("one", 1.0), g.op("Exp", [g.op("Sub", [b, a], "ba")], "eba")], "gap")], "lgap")
        mid = g.op("Add", [g.op("Add", [lo, hi], "edges"), gap], "mid")
        low = g.op("Less", [x, c("lo_x", -1 + self.HALF_BIN)], "is_lo")
        high = g.op("Greater", [x, c("hi_x", 1 - self.HALF_BIN)], "is_hi")
        return g.op("Where", [low, lo, g.op("Where", [high, hi, mid], "w_hi")], "lp")

    def onnx_mean(self, g, params: list[str]) -> str:
        c = lambda name, v: g.const(name, np.array(v, np.float32))  # noqa: E731
        return g.op("Clip", [params[0], c("lo", -1.0), c("hi", 1.0)], "mean")

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)


class Gaussian(_LocScale):
    name = "gaussian"
    log_scale_floor = math.log(1e-3)
    requirement = "finite real values"
    input_doc = "real values: arrays standardised with the manifest's normalization ((x - mean) / std), images / 255"
    param_docs = ("mean", "raw log-std: log sigma = ln(1e-3) + softplus(raw - ln(1e-3))")

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        p = self.params(out)
        loc, log_s = p["loc"], p["log_scale"]
        z = (x.view_as(loc) - loc) * torch.exp(-log_s)
        return (-0.5 * z.pow(2) - log_s - 0.5 * LOG_2PI).flatten(1).sum(1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return self.split(out)[0]

    def sample(self, out: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        p = self.params(out)
        return p["loc"] + torch.exp(p["log_scale"]) * torch.randn(p["loc"].shape, generator=g, device=out.device)

    @property
    def c_log_prob(self) -> str:
        return (f"{self._c_log_scale}\n        float t = (x[i] - o[i]) * expf(-ls);\n"
                f"        lp = -0.5f * t * t - ls - {0.5 * LOG_2PI!r}f;")

    c_mean = "m = o[i];"

    def onnx_log_prob(self, g, params: list[str], x: str) -> str:
        loc, raw = params
        ls = self._onnx_log_scale(g, raw)
        t = g.op("Mul", [g.op("Sub", [x, loc], "d"), g.op("Exp", [g.op("Neg", [ls], "nls")], "inv_s")], "t")
        sq = g.op("Mul", [g.op("Mul", [t, t], "t2"), g.const("half", np.array(-0.5, np.float32))], "ht2")
        return g.op("Sub", [g.op("Sub", [sq, ls], "ml"), g.const("c", np.array(0.5 * LOG_2PI, np.float32))], "lp")


LIKELIHOODS: dict[str, Callable[[], Likelihood]] = {
    "bernoulli": Bernoulli, "discretized_logistic": DiscretizedLogistic, "gaussian": Gaussian,
}
_INSTANCES = {name: cls() for name, cls in LIKELIHOODS.items()}


def get_likelihood(name: str) -> Likelihood:
    try:
        return _INSTANCES[name]
    except (KeyError, TypeError):
        raise SpecError(f"likelihood: {name!r} is unknown; use one of {sorted(LIKELIHOODS)}") from None
