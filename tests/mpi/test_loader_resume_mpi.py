"""Loader.state_dict / load_state_dict on a real communicator, shuffled: a loader stopped
after k batches and resumed from its (JSON round-tripped) state hands out exactly the rest
of the epoch an uninterrupted loader gives on that rank, within an epoch and across an
epoch boundary, and the ranks' rows of the resumed epoch are every row once."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data_helpers import indexed_dataset  # noqa: E402
from hpcml.data import ShardedDataset  # noqa: E402
from mpi_helpers import all_ranks  # noqa: E402

SHARDS = [700, 3, 1100, 1]  # uneven, with tiny shards: blocks of 1 and 3 rows too


@pytest.fixture
def dataset(comm, shared_dir):
    folder = os.path.join(shared_dir, "idx")
    if comm.Get_rank() == 0:
        indexed_dataset(folder, SHARDS)
    comm.Barrier()
    return ShardedDataset(folder, comm)


def _copy(batches):
    return [(x.copy(), y.copy()) for x, y in batches]


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(xa, xb) and np.array_equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def _ids(batches):
    return np.concatenate([x[:, 0] for x, _ in batches] or [np.empty(0)]).astype(np.int64)


@pytest.mark.parametrize("partition", ["contiguous", "global"])
def test_resume_matches_uninterrupted(comm, dataset, partition):
    kw = dict(batch_size=37, shuffle=True, seed=4, block_rows=100, partition=partition)
    whole = dataset.loader(**kw)
    epochs = [_copy(whole), _copy(whole)]  # epochs 0 and 1, uninterrupted
    steps = len(epochs[0])
    all_ranks(comm, steps == len(whole) >= 3 and len(epochs[1]) == steps,
              f"{steps} steps per epoch")
    all_ranks(comm, not np.array_equal(_ids(epochs[0]), _ids(epochs[1])),
              "the shuffle changes by epoch (else an epoch mix-up would pass)")
    for epoch in (0, 1):
        for stop in sorted({0, 1, steps // 2, steps - 1, steps}):
            ld = dataset.loader(**kw)
            if epoch == 1:
                _copy(ld)  # a whole epoch 0 first
            it = iter(ld)
            head = [next(it) for _ in range(stop)]
            head = _copy(head)
            it.close()
            state = json.loads(json.dumps(ld.state_dict()))  # survives a JSON checkpoint
            resumed = dataset.loader(**kw)
            resumed.load_state_dict(state)
            rest = _copy(resumed)
            where = f"epoch {epoch}, stopped after {stop} of {steps} batches"
            all_ranks(comm, state["epoch"] == epoch and state["batches_done"] == stop and
                      state["ranks"] == comm.Get_size(), f"{where}: state {state}")
            all_ranks(comm, _same(head + rest, epochs[epoch]),
                      f"{where}: head + resumed rest ({len(head)} + {len(rest)} batches) "
                      f"differ from the uninterrupted epoch on this rank")
            seen = np.concatenate(comm.allgather(_ids(head + rest)))
            all_ranks(comm, np.array_equal(np.sort(seen), np.arange(dataset.rows)),
                      f"{where}: the ranks' rows are not every row once ({len(seen)} rows, "
                      f"{len(np.unique(seen))} distinct, {dataset.rows} in the dataset)")
            # the resumed loader goes on to the next epoch as the uninterrupted one does
            if epoch == 0:
                all_ranks(comm, _same(_copy(resumed), epochs[1]),
                          f"{where}: the epoch after the resumed one differs")
