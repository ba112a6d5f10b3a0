"""Data-parallel training on P ranks against one process at the same global batch."""
import numpy as np
import pytest
from mpi4py import MPI

from hpcml import train
from hpcml.comm import CollectiveError
from mpi_helpers import all_ranks, from_root, same_bytes_everywhere


def _cfg(**kw):
    base = dict(data="digits", test_data="none", hidden="24,16", dtype="float64", epochs=5,
                max_steps=50, lr=0.05, warmup=5, progress=False, seed=4)
    base.update(kw)
    return train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))


def _serial(comm, cfg):
    """Rank 0 trains alone (COMM_SELF) at the same global batch; every rank gets the
    parameters (an error on rank 0 is raised on every rank)."""
    def alone():
        cfg1 = dict(cfg, accumulation=1, algorithm="auto")
        return train.run(cfg1, MPI.COMM_SELF, log=lambda *a: None)[1].params
    return from_root(comm, alone)


#: float64, P ranks against one process after 50 steps: measured max relative difference
#: 1.5e-16 to 2.5e-16 at P = 2..4, every algorithm, with and without overlap (summation
#: order only); gradients forced through float32 before the all-reduce give ~1e-8, so
#: 1e-12 keeps four decades between the two
F64_REL = 1e-12
#: float32 (the default dtype): measured 9.4e-8 to 2.1e-7 at P = 2..4; 1e-5 is ~50x that
F32_REL = 1e-5


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("algorithm,overlap", [("ring", False), ("tree", False),
                                               ("rhd", False), ("mpi", False),
                                               ("auto", False), ("ring", True),
                                               ("tree", True), ("rhd", True),
                                               ("mpi", True), ("auto", True)])
def test_p_ranks_follow_one_process(comm, algorithm, overlap):
    p = comm.Get_size()
    cfg = _cfg(batch_size=12 * p, algorithm=algorithm, overlap=overlap)
    summary, model = train.run(cfg, comm, log=lambda *a: None)
    all_ranks(comm, summary["step"] == 50, f"50 steps, got {summary['step']}")
    ref = _serial(comm, cfg)
    rel = _rel(model.params, ref)
    all_ranks(comm, rel < F64_REL, f"P={p} {algorithm}: max relative difference {rel:.2e}")
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
    rel = _rel(model.params, ref)
    all_ranks(comm, rel < F64_REL, f"P={p} K=3 {optimizer}: max relative difference {rel:.2e}")


@pytest.mark.parametrize("algorithm,overlap", [("ring", False), ("rhd", False),
                                               ("auto", True)])
def test_float32_p_ranks_follow_one_process(comm, algorithm, overlap):
    """The default dtype: close to one process, and the same bytes on every rank."""
    p = comm.Get_size()
    cfg = _cfg(batch_size=12 * p, algorithm=algorithm, overlap=overlap, dtype="float32")
    _, model = train.run(cfg, comm, log=lambda *a: None)
    all_ranks(comm, model.params.dtype == np.float32, "float32 parameters")
    ref = _serial(comm, cfg)
    rel = _rel(model.params, ref)
    all_ranks(comm, rel < F32_REL, f"P={p} {algorithm} float32: max relative difference "
                                   f"{rel:.2e}")
    all_ranks(comm, same_bytes_everywhere(comm, model.params), "same parameters everywhere")


@pytest.mark.parametrize("direction", ["P to 1", "1 to P"])
def test_resume_on_another_rank_count(comm, shared_dir, direction):
    """25 steps on one rank count, a checkpoint, 25 more on another: the uninterrupted
    one-process run to float64 rounding (constant rate: the schedule has no horizon)."""
    import os
    p = comm.Get_size()
    ck = os.path.join(shared_dir, "ck")
    cfg = _cfg(batch_size=12, schedule="constant", checkpoint_dir=ck, checkpoint_every=25,
               keep=2)
    first, second = (comm, MPI.COMM_SELF) if direction == "P to 1" else (MPI.COMM_SELF, comm)
    quiet = lambda *a: None  # noqa: E731
    lines = []

    def phase(c, **kw):  # on every rank of c; (steps, checkpoint resumed from, parameters)
        summary, model = train.run(dict(cfg, **kw), c, log=lines.append if kw else quiet)
        return summary["step"], summary["resumed_from"], model.params

    # a phase on one rank runs inside from_root, so an error there reaches every rank
    steps = (phase(first, max_steps=25)[0] if first is comm
             else from_root(comm, lambda: phase(first, max_steps=25)[0]))
    all_ranks(comm, steps == 25, f"the first phase ran {steps} steps")
    got = (phase(second, resume="auto") if second is comm
           else from_root(comm, lambda: phase(second, resume="auto")))
    ref = _serial(comm, dict(cfg, checkpoint_dir="", checkpoint_every=0))
    all_ranks(comm, got[0] == 50 and got[1].endswith("step-00000025.h5"),
              f"resumed at step 25 and ran to 50: {got[:2]}")
    rel = _rel(got[2], ref)
    all_ranks(comm, rel < F64_REL,
              f"{direction} (P={p}): max relative difference {rel:.2e}")
    note = f"written with {1 if direction == '1 to P' else p} ranks"  # rank 0 logs it
    all_ranks(comm, comm.Get_rank() != 0 or any(note in line for line in lines),
              f"the resume notes the other rank count: {lines}")


@pytest.mark.parametrize("extra", [1, 0])
def test_any_global_batch_follows_one_process(comm, extra):
    """A global batch that the rank count does not divide (5p + 1): ranks take slices that
    differ by one row, and the run still follows one process at that batch (float64)."""
    p = comm.Get_size()
    cfg = _cfg(batch_size=5 * p + 1 + extra if p > 1 else 7 + extra, max_steps=30)
    _, model = train.run(cfg, comm, log=lambda *a: None)
    rel = _rel(model.params, _serial(comm, cfg))
    all_ranks(comm, rel < F64_REL, f"P={p} batch {cfg['batch_size']}: max relative "
                                   f"difference {rel:.2e}")


def test_too_small_batch_is_refused_everywhere(comm):
    p = comm.Get_size()
    with pytest.raises(CollectiveError, match=f"batch-size {2 * p - 1} is smaller than ranks "
                                              f"x accumulation = {p} x 2.*smallest valid "
                                              f"batch-size is {2 * p}"):
        train.run(_cfg(batch_size=2 * p - 1, accumulation=2), comm, log=lambda *a: None)
    with pytest.raises(CollectiveError, match=f"not a multiple of accumulation 3.*use "
                                              f"{3 * p} or {3 * p + 3}"):
        train.run(_cfg(batch_size=3 * p + 1, accumulation=3), comm, log=lambda *a: None)
