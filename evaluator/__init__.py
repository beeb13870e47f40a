"""How a model scores: data, the one training loop, ELBO/NLL, costs, latency, objectives.

Imports only ``search_space``.
"""

from .data import DATASETS, DataUnavailableError, DatasetSpec, Splits, binarize, default_data_root, load_data
from .costs import Costs, FlopReport, count_bitops, count_flops, count_params, static_costs
from .elbo import bits_per_dim, evaluate_neg_elbo, iwae_nll, neg_elbo_terms, reconstruction_error
from .latency import (
    BACKENDS, LatencyConfig, LatencyError, LatencyResult, build_c, check_latency_backend, deployable_model, float_model,
    measure_latency,
)
from .objectives import (
    DIRECTIONS, LABELS, OBJECTIVES, STATIC_OBJECTIVES, EvalFailure, Evaluator, Objective, Objectives, RungGate, Stopped,
    check_objectives, register_objective,
)
from .train import TrainConfig, TrainingDiverged, TrainResult, lr_at, resolve_device, seeded_model, train

__all__ = [
    "BACKENDS", "LatencyError", "build_c", "check_latency_backend",
    "Costs", "DIRECTIONS", "LABELS", "Objective", "STATIC_OBJECTIVES", "register_objective", "EvalFailure", "Evaluator", "FlopReport", "LatencyConfig", "LatencyResult",
    "OBJECTIVES", "Objectives", "RungGate", "Stopped", "check_objectives", "count_bitops", "count_flops", "count_params",
    "deployable_model", "float_model", "measure_latency", "static_costs",
    "DATASETS", "DataUnavailableError", "DatasetSpec", "Splits", "bits_per_dim", "TrainConfig", "TrainResult", "TrainingDiverged",
    "binarize", "default_data_root", "evaluate_neg_elbo", "iwae_nll", "load_data", "neg_elbo_terms",
    "lr_at", "reconstruction_error", "resolve_device", "seeded_model", "train",
]
