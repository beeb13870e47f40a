"""How a model scores: data, the one training loop, ELBO/NLL. Imports only ``search_space``."""

from .data import DATASETS, DataUnavailableError, Splits, binarize, default_data_root, load_data
from .elbo import evaluate_neg_elbo, iwae_nll, neg_elbo_terms, reconstruction_error
from .train import TrainConfig, TrainingDiverged, TrainResult, resolve_device, seeded_model, train

__all__ = [
    "DATASETS", "DataUnavailableError", "Splits", "TrainConfig", "TrainResult", "TrainingDiverged",
    "binarize", "default_data_root", "evaluate_neg_elbo", "iwae_nll", "load_data", "neg_elbo_terms",
    "reconstruction_error", "resolve_device", "seeded_model", "train",
]
