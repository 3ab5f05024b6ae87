"""Loading any model: one model string, or an `nn.Module`, becomes a `ModelSpec`; the seed networks, training,
prediction and evaluation."""

from .cnn import CNN4, SmallCNN
from .files import save_safetensors
from .loading import load, parse_options
from .predict import Evaluation, Prediction, evaluate, predict
from .registry import Entry, register_model, registered
from .spec import ModelSpec, spec_for_module
from .train import TrainResult, train

__all__ = [
    "CNN4",
    "Entry",
    "Evaluation",
    "ModelSpec",
    "Prediction",
    "SmallCNN",
    "TrainResult",
    "evaluate",
    "load",
    "parse_options",
    "predict",
    "register_model",
    "registered",
    "save_safetensors",
    "spec_for_module",
    "train",
]
