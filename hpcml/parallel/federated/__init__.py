"""Federated learning's strategy layer: virtual clients as slices of a dataset
(partition), local training (client), aggregation and server optimizers (aggregate),
secure aggregation (secagg), differential privacy (privacy), and the round loop over the
ranks (simulation). The job (`python -m hpcml.federated`: settings, data, outputs,
checkpoints) is hpcml/federated/.

    from hpcml.parallel.federated import Federation, partition, aggregate
"""
from .aggregate import STRATEGIES, AGGREGATORS, ServerOptimizer, aggregate, krum_scores
from .client import Client
from .partition import PartitionError, partition, describe
from .simulation import Federation, round_clients

__all__ = ["STRATEGIES", "AGGREGATORS", "ServerOptimizer", "aggregate", "krum_scores",
           "Client", "PartitionError", "partition", "describe", "Federation",
           "round_clients"]
