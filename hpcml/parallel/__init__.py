"""hpcml.parallel: strategies for training on many ranks."""
from .data_parallel import DataParallel, StepFlags

__all__ = ["DataParallel", "StepFlags"]
