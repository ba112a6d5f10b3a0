"""Data-parallel training on P ranks against one process at the same global batch."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import train
from hpcml.comm import CollectiveError
from mpi_helpers import all_ranks, same_bytes_everywhere


def _cfg(**kw):
    base = dict(data="digits", test_data="none", hidden="24,16", dtype="float64", epochs=3,
                max_steps=50, lr=0.05, warmup=5, progress=False, seed=4)
    base.update(kw)
    return train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))


def _serial(comm, cfg):
    """Rank 0 trains alone (COMM_SELF) at the same global batch; every rank gets the
    parameters."""
    params = None
    if comm.Get_rank() == 0:
        cfg1 = dict(cfg, accumulation=1, algorithm="auto")
        _, model = train.run(cfg1, MPI.COMM_SELF, log=lambda *a: None)
        params = model.params
    return comm.bcast(params)


@pytest.mark.parametrize("algorithm,overlap", [("ring", False), ("tree", False),
                                               ("rhd", False), ("mpi", False),
                                               ("auto", False), ("ring", True),
                                               ("auto", True)])
def test_p_ranks_follow_one_process(comm, algorithm, overlap):
    p = comm.Get_size()
    cfg = _cfg(batch_size=12 * p, algorithm=algorithm, overlap=overlap)
    summary, model = train.run(cfg, comm, log=lambda *a: None)
    assert summary["step"] == 50
    ref = _serial(comm, cfg)
    rel = np.abs(model.params - ref).max() / np.abs(ref).max()
    all_ranks(comm, rel < 1e-6, f"P={p} {algorithm}: max relative difference {rel:.2e}")
    all_ranks(comm, not np.array_equal(model.params, train.run(
        dict(cfg, max_steps=1), comm, log=lambda *a: None)[1].params), "the model trained")
    all_ranks(comm, same_bytes_everywhere(comm, model.params), "same parameters everywhere")


@pytest.mark.parametrize("optimizer,overlap", [("sgd", False), ("adamw", False),
                                               ("sgd", True)])
def test_accumulation_follows_one_process(comm, optimizer, overlap):
    """K=3 micro-steps on P ranks at per-rank batch b = one process at batch 3*P*b."""
    p = comm.Get_size()
    cfg = _cfg(batch_size=3 * p * 8, accumulation=3, optimizer=optimizer, lr=0.01,
               overlap=overlap)
    _, model = train.run(cfg, comm, log=lambda *a: None)
    ref = _serial(comm, cfg)
    rel = np.abs(model.params - ref).max() / np.abs(ref).max()
    all_ranks(comm, rel < 1e-6, f"P={p} K=3 {optimizer}: max relative difference {rel:.2e}")


def test_indivisible_batch_is_refused_everywhere(comm):
    p = comm.Get_size()
    with pytest.raises(CollectiveError, match=f"batch-size {p * 5 + 1} must be a multiple"):
        train.run(_cfg(batch_size=p * 5 + 1), comm, log=lambda *a: None)
