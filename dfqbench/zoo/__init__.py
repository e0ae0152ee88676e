"""The model zoo (pytorchcv teachers, as in the official codes; local weights) and test-data loading."""

from dfqbench.zoo.data import Evaluator, TestSet, clear_memory_cache, load_test_set
from dfqbench.zoo.models import (
    KNOWN_MODELS,
    LoadedModel,
    ModelInfo,
    build_model,
    load_pretrained,
    model_info,
    resolve_weights_file,
    single_file_misfit,
)
from dfqbench.zoo.normalization import NORMALIZATIONS, Normalization, parse_normalization

__all__ = [
    "KNOWN_MODELS",
    "NORMALIZATIONS",
    "Evaluator",
    "LoadedModel",
    "ModelInfo",
    "Normalization",
    "TestSet",
    "build_model",
    "clear_memory_cache",
    "load_pretrained",
    "load_test_set",
    "model_info",
    "parse_normalization",
    "resolve_weights_file",
    "single_file_misfit",
]
