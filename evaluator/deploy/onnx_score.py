"""``score.onnx``: x -> the anomaly score and ``is_anomaly``, one graph (an anomaly task's export).

The encoder's and decoder's nodes are the same as ``encoder.onnx``/``decoder.onnx`` (float or integer
QDQ), wired in one graph: ``z_k = mu + exp(logvar / 2) * eps_k`` with the fixed noise table as a
constant (none for ``recon_error``: z = mu), the decoder runs on all ``N * k`` latents at once, and the
likelihood's log-density is its ONNX form (``search_space/likelihood.py``). Outputs: ``score`` (N,)
float32 and ``is_anomaly`` (N,) bool (``score > threshold``).
"""

from __future__ import annotations

import math

import numpy as np

from search_space.likelihood import get_likelihood
from search_space.packing import unpack_layers
from search_space.spec import ArchSpec

from .onnx_common import _Graph, _model, split_head


def _c(g: _Graph, name: str, v) -> str:
    return g.const(name, np.asarray(v, np.float32))


def _i(g: _Graph, name: str, v) -> str:
    return g.const(name, np.asarray(v, np.int64))


def _bodies(spec: ArchSpec, packed: bytes):
    """A graph, and functions adding the encoder (x -> head) and decoder (z -> last value) to it."""
    if spec.is_integer:
        from .int_program import integer_program
        from .onnx_int import _QGraph, decoder_body, encoder_body

        prog, qg = integer_program(spec, packed), _QGraph()
        return qg.g, lambda x: encoder_body(qg, prog, x), lambda z: decoder_body(qg, prog, z)[0]
    from .onnx_graph import decoder_body, encoder_body

    tensors, g = unpack_layers(spec, packed), _Graph()
    return g, lambda x: encoder_body(g, spec, tensors, x), lambda z: decoder_body(g, spec, tensors, z)[0]


def _reduce(g: _Graph, op: str, x: str, axes: list[int], base: str) -> str:
    return g.op(op, [x, _i(g, "axes", axes)], base, keepdims=0)


def score_graph(spec: ArchSpec, packed: bytes, anomaly: dict, eps: np.ndarray | None):
    """The ONNX model of the anomaly score ``anomaly['score']`` with the threshold ``anomaly['threshold']``."""
    from onnx import TensorProto, helper

    lik = get_likelihood(spec.likelihood)
    g, encode, decode = _bodies(spec, packed)
    L, n, kind = spec.latent_dim, spec.n_inputs, anomaly["score"]
    mu, lv = split_head(g, encode("x"), L, names=None)
    k = 1 if eps is None else len(eps)
    if eps is None:
        z = mu
    else:
        std = g.op("Exp", [g.op("Mul", [lv, _c(g, "half", 0.5)], "hlv")], "std")
        eps_c = _c(g, "eps", eps)
        z3 = g.op("Add", [g.op("Unsqueeze", [mu, _i(g, "ax1", [1])], "mu3"),
                          g.op("Mul", [g.op("Unsqueeze", [std, _i(g, "ax1", [1])], "std3"), eps_c], "noise")], "z3")
        z = g.op("Reshape", [z3, _i(g, "shape", [-1, L])], "z")
    out = g.op("Reshape", [decode(z), _i(g, "shape", [-1, lik.n_params * n])], "out_flat")
    parts = g.op("Split", [out, _i(g, "split", [n] * lik.n_params)], "param", n_out=lik.n_params, axis=1) \
        if lik.n_params > 1 else [out]
    params = [g.op("Reshape", [p, _i(g, "shape", [-1, k, n])], "param3") for p in parts]
    xr = g.op("Reshape", ["x", _i(g, "shape", [-1, 1, n])], "x3")
    if kind == "recon_error":
        d = g.op("Sub", [lik.onnx_mean(g, params), xr], "diff")
        score = _reduce(g, "ReduceSum", g.op("Mul", [d, d], "d2"), [1, 2], "sse")
    else:
        lpx = _reduce(g, "ReduceSum", lik.onnx_log_prob(g, params, xr), [2], "log_px")
        if kind == "iwae":
            lpz = _log_normal(g, z3, None)
            lqz = _log_normal(g, eps_c, g.op("Unsqueeze", [lv, _i(g, "ax1", [1])], "lv3"))
            lw = g.op("Sub", [g.op("Add", [lpx, lpz], "lw0"), lqz], "log_w")
            lse = _reduce(g, "ReduceLogSumExp", lw, [1], "lse")
            score = g.op("Neg", [g.op("Sub", [lse, _c(g, "logk", math.log(k))], "iw")], "score0")
        else:
            score = g.op("Neg", [_reduce(g, "ReduceMean", lpx, [1], "mean_lp")], "score0")
            if kind == "neg_elbo":
                score = g.op("Add", [score, _kl(g, mu, lv)], "score1")
    g.op("Identity", [score], "score")
    g.nodes[-1].output[:] = ["score"]
    g.op("Greater", ["score", _c(g, "threshold", anomaly["threshold"])], "is_anomaly")
    g.nodes[-1].output[:] = ["is_anomaly"]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *spec.input_shape])]
    outs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("is_anomaly", TensorProto.BOOL, ["N"])]
    return _model(g, ins, outs, f"vaenas {spec.id} anomaly score ({kind}): x -> score, is_anomaly")


def _log_normal(g: _Graph, v: str, logvar: str | None) -> str:
    """Σ over the latent axis of −(v² + log 2π + logvar) / 2 (logvar None: 0)."""
    t = g.op("Add", [g.op("Mul", [v, v], "v2"), _c(g, "log2pi", math.log(2 * math.pi))], "t")
    if logvar is not None:
        t = g.op("Add", [t, logvar], "tl")
    return _reduce(g, "ReduceSum", g.op("Mul", [t, _c(g, "mhalf", -0.5)], "ln"), [2], "log_n")


def _kl(g: _Graph, mu: str, lv: str) -> str:
    t = g.op("Sub", [g.op("Sub", [g.op("Add", [_c(g, "one", 1.0), lv], "a"), g.op("Mul", [mu, mu], "mu2")], "b"),
                     g.op("Exp", [lv], "var")], "c")
    return _reduce(g, "ReduceSum", g.op("Mul", [t, _c(g, "mhalf", -0.5)], "klt"), [1], "kl")


def write_onnx_score(spec: ArchSpec, packed: bytes, anomaly: dict, eps: np.ndarray | None, out) -> list[str]:
    import onnx

    onnx.save(score_graph(spec, packed, anomaly, eps), str(out / "score.onnx"))
    return ["score.onnx"]
