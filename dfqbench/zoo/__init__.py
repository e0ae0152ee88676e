"""The model zoo (pytorchcv teachers, as in the official codes; local weights) and test-data loading."""

from dfqbench.zoo.data import Evaluator, TestSet, clear_memory_cache, load_test_set
from dfqbench.zoo.models import (KNOWN_MODELS, ModelInfo, build_model, model_info, resolve_weights_file,
                                 single_file_misfit)
from dfqbench.zoo.normalization import NORMALIZATIONS, Normalization, parse_normalization
from dfqbench.zoo.teacher import LoadedModel, Teacher, load_pretrained, teacher_identity

__all__ = [
    "KNOWN_MODELS",
    "NORMALIZATIONS",
    "Evaluator",
    "LoadedModel",
    "ModelInfo",
    "Normalization",
    "Teacher",
    "TestSet",
    "build_model",
    "clear_memory_cache",
    "load_pretrained",
    "load_test_set",
    "model_info",
    "parse_normalization",
    "resolve_weights_file",
    "single_file_misfit",
    "teacher_identity",
]
