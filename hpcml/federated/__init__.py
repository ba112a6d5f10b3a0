"""Federated learning simulated on MPI ranks (`python -m hpcml.federated`): virtual
clients as slices of a dataset, FedAvg and its successors, robust aggregation.

    from hpcml.federated import Federation, partition, aggregate
"""
from .aggregate import STRATEGIES, AGGREGATORS, ServerOptimizer, aggregate, krum_scores
from .client import Client
from .partition import PartitionError, partition, describe
from .simulation import Federation, round_clients

__all__ = ["STRATEGIES", "AGGREGATORS", "ServerOptimizer", "aggregate", "krum_scores",
           "Client", "PartitionError", "partition", "describe", "Federation",
           "round_clients"]
