"""hpcml.parallel: strategies for training on many ranks."""
from .base import StepFlags, Strategy
from .data_parallel import DataParallel
from .trainer import Trainer
from .zero import ZeRO

__all__ = ["DataParallel", "StepFlags", "Strategy", "Trainer", "ZeRO"]
