"""Behaviour pinned across refactors: for 36 round-trip specs (20 of every activation, likelihood and input
kind; 16 with sparsity, rank, k-means and structured pruning) the spec id, the packed bytes and every
export's files are byte-identical to the recorded ``tests/data/golden_exports.json``.

The record was written from the code before the layer-plan redesign (``python tests/evaluator/test_golden_exports.py
--write``); rewrite it only for a change that is meant to alter an id, the packing or an export, and say so
in the commit."""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

import pytest

from search_space import ArchSpec, pack_model, packed_size_bytes
from search_space.errors import SpecError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: conftest, also when run as a script
from conftest import trained_like  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "golden_exports.json"
BITS = (2, 3, 4, 5, 6, 8, 32)
ACTS = ("relu", "leaky_relu", "elu", "silu", "gelu", "tanh", "sigmoid")
LIKS = ("bernoulli", "gaussian", "discretized_logistic")


def _plain(rng: random.Random, family: str) -> ArchSpec:
    while True:
        act, lik, act_bits, latent = rng.choice(ACTS), rng.choice(LIKS), rng.choice([None, None, 8, 4]), rng.randint(1, 6)
        try:
            if family == "mlp":
                enc = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                dec = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(0, 2)))
                return ArchSpec(family="mlp", enc_hidden=enc, dec_hidden=dec, latent_dim=latent, activation=act,
                                weight_bits=tuple(rng.choice(BITS) for _ in range(len(enc) + len(dec) + 2)),
                                input_shape=rng.choice([(1, 12, 10), (13,), (2, 5, 7)]), likelihood=lik,
                                act_bits=act_bits)
            nc = rng.randint(1, 2)
            enc = tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1)))
            dec = tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1)))
            return ArchSpec(family="conv", enc_hidden=enc, dec_hidden=dec, latent_dim=latent, activation=act,
                            enc_channels=tuple(rng.choice([2, 3, 5]) for _ in range(nc)),
                            kernels=tuple(rng.choice([1, 2, 3, 4, 5]) for _ in range(nc)),
                            strides=tuple(rng.choice([1, 2, 3]) for _ in range(nc)),
                            dec_channels=tuple(rng.choice([2, 4]) for _ in range(nc)),
                            weight_bits=tuple(rng.choice(BITS) for _ in range(2 * nc + len(enc) + len(dec) + 2)),
                            input_shape=rng.choice([(1, 12, 12), (3, 9, 7), (2, 10, 11)]), likelihood=lik,
                            act_bits=act_bits)
        except SpecError:
            continue


def _compressed(rng: random.Random, family: str) -> ArchSpec:
    while True:
        try:
            structured = rng.random() < 0.3
            if family == "mlp":
                enc = tuple(rng.choice([5, 12, 24]) for _ in range(rng.randint(1, 2)))
                kw = dict(family="mlp", enc_hidden=enc, dec_hidden=tuple(reversed(enc)),
                          input_shape=rng.choice([(1, 12, 10), (13,)]))
                n = 2 * len(enc) + 2
            else:
                nc = rng.randint(1, 2)
                enc = tuple(rng.choice([6, 10]) for _ in range(rng.randint(0, 1)))
                kw = dict(family="conv", enc_hidden=enc, dec_hidden=enc, input_shape=(2, 10, 11),
                          enc_channels=tuple(rng.choice([3, 5, 8]) for _ in range(nc)),
                          kernels=tuple(rng.choice([1, 3, 4]) for _ in range(nc)),
                          strides=tuple(rng.choice([1, 2]) for _ in range(nc)))
                n = 2 * nc + 2 * len(enc) + 2
            bits = tuple(rng.choice((2, 3, 4, 8, 32)) for _ in range(n))
            rank = None if structured else tuple(rng.choice([None, None, 0.25, 0.5, 1.0]) for _ in range(n))
            sparsity = tuple(rng.choice([0.0, 0.3, 0.5]) if (rank is None or rank[i] is None) else 0.0
                             for i in range(n))
            quant = tuple("uniform" if b == 32 else rng.choice(["uniform", "kmeans"]) for b in bits)
            spec = ArchSpec(latent_dim=rng.randint(1, 5), weight_bits=bits, rank=rank, quantizer=quant,
                            act_bits=None if structured else rng.choice([None, 8]), **kw)
            if structured:  # only hidden units may be removed
                units = spec.prunable_units()
                spec = spec.replace(pruning="structured", sparsity=tuple(
                    s if name in units else 0.0 for name, s in zip(spec.layer_names(), sparsity)))
            else:
                spec = spec.replace(sparsity=sparsity)
            return spec
        except SpecError:
            continue


def golden_specs() -> list[ArchSpec]:
    plain = [_plain(random.Random(7000 + i), "mlp" if i % 2 == 0 else "conv") for i in range(20)]
    comp = [_compressed(random.Random(8000 + i), "mlp" if i % 2 == 0 else "conv") for i in range(16)]
    return plain + comp


def model_of(spec: ArchSpec, seed: int):
    """A model as training leaves it (step sizes calibrated, then perturbed by U(0.6, 1.2))."""
    return trained_like(spec, seed, low=0.6, calibrate=True)


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def record(spec: ArchSpec, seed: int, tmp: Path, formats: tuple[str, ...]) -> dict:
    """What is pinned for one spec: id, packed size and bytes, every exported file's hash."""
    from evaluator.deploy import export_model

    packed = pack_model(model_of(spec, seed))
    out = tmp / f"x{seed}"
    export_model(spec, packed, out, formats)
    files = {p.name: _sha(p.read_bytes()) for p in sorted(out.iterdir()) if p.is_file()}
    return {"spec": spec.to_json(), "id": spec.id, "packed_size_bytes": packed_size_bytes(spec),
            "packed_len": len(packed), "packed_sha256": _sha(packed), "files": files}


FORMATS = ("arch", "onnx", "c", "executorch")


SPECS = list(enumerate(golden_specs()))


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _check(seed: int, spec: ArchSpec, golden: dict, tmp_path: Path, formats: tuple[str, ...]) -> None:
    want = golden["specs"][seed]
    assert spec.to_json() == want["spec"], "the spec generator changed: the record no longer describes these specs"
    got = record(spec, seed, tmp_path, formats)
    assert got["id"] == want["id"]
    assert (got["packed_size_bytes"], got["packed_len"], got["packed_sha256"]) == (
        want["packed_size_bytes"], want["packed_len"], want["packed_sha256"])
    if formats == FORMATS:
        assert got["files"] == want["files"]
    else:  # manifest.json lists the formats written: pinned where all are
        assert {k: v for k, v in got["files"].items() if k != "manifest.json"} == {
            k: v for k, v in want["files"].items() if k in got["files"] and k != "manifest.json"}


@pytest.mark.parametrize("seed,spec", SPECS, ids=[f"{s.family}-{i}" for i, s in SPECS])
def test_ids_packing_and_exports_unchanged(seed, spec, golden, tmp_path):
    """Ids, packed bytes, and the arch, ONNX and C files byte for byte."""
    _check(seed, spec, golden, tmp_path, ("arch", "onnx", "c"))


@pytest.mark.slow
@pytest.mark.parametrize("seed,spec", SPECS, ids=[f"{s.family}-{i}" for i, s in SPECS])
def test_every_format_and_the_manifest_unchanged(seed, spec, golden, tmp_path):
    """The ExecuTorch program too (the slow part: minutes for all 36), and manifest.json."""
    _check(seed, spec, golden, tmp_path, FORMATS)


def write(path: Path = GOLDEN) -> None:
    import tempfile

    from evaluator.deploy import executorch_available

    assert not executorch_available(), f"record all formats: {executorch_available()}"
    with tempfile.TemporaryDirectory() as d:
        recs = [record(spec, seed, Path(d), FORMATS) for seed, spec in SPECS]
    path.write_text(json.dumps({"formats": list(FORMATS), "specs": recs}, indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    write()
