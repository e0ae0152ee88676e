"""The teacher's identity, under its former module name: it lives in :mod:`dfqbench.zoo.teacher`, with the
loading it describes (import from there, or from :mod:`dfqbench.zoo`)."""

from dfqbench.zoo.models import pytorchcv_file
from dfqbench.zoo.teacher import Teacher, file_sha256, teacher_identity

__all__ = ["Teacher", "file_sha256", "pytorchcv_file", "teacher_identity"]
