"""Federated learning simulated on MPI ranks (`python -m hpcml.federated`): the job (job.py:
settings, data, outputs; resume.py: checkpoints). The strategy layer (clients,
partitions, aggregation, SecAgg, DP, the round loop) is hpcml.parallel.federated, whose
names are re-exported here.

    from hpcml.federated import Federation, partition, aggregate
"""
from hpcml.parallel.federated import (STRATEGIES, AGGREGATORS, ServerOptimizer, aggregate,
                                      krum_scores, Client, PartitionError, partition,
                                      describe, Federation, round_clients)

__all__ = ["STRATEGIES", "AGGREGATORS", "ServerOptimizer", "aggregate", "krum_scores",
           "Client", "PartitionError", "partition", "describe", "Federation",
           "round_clients"]
