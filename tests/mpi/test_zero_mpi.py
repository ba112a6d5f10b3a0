"""ZeRO stages 1 and 2 against DataParallel: the same parameters to the bit with the same
reduction algorithm, optimizer state 1/P per rank, and checkpoints that resume with or
without ZeRO and on another rank count. Bodies shared with tests/test_inproc.py (1-8
in-process ranks)."""
import os

import numpy as np
import pytest

from hpcml import comm as hc
from hpcml import nn, optim, train
from hpcml.parallel import DataParallel, ZeRO
from mpi_helpers import all_ranks, from_root, same_bytes_everywhere


def _cfg(**kw):
    base = dict(data="digits", test_data="none", hidden="24,16", epochs=5, max_steps=40,
                lr=0.05, warmup=5, progress=False, seed=4)
    base.update(kw)
    return train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))


def _params(comm, **kw):
    return train.run(_cfg(**kw), comm, log=lambda *a: None)[1].params


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("dtype,optimizer,algorithm", [
    ("float32", "adamw", "ring"), ("float64", "sgd", "ring"), ("float32", "sgd", "rhd"),
    ("float64", "adamw", "tree"), ("float32", "adam", "mpi")])
def test_zero_is_bit_identical_to_data_parallel(comm, stage, dtype, optimizer, algorithm):
    p = comm.Get_size()
    # eight thin layers: ZeRO-2 shards the gradients (its shard plus the largest layer is
    # less than the whole buffer) with ring and tree
    kw = dict(batch_size=12 * p, dtype=dtype, optimizer=optimizer, algorithm=algorithm,
              hidden="16,16,16,16,16,16,16,16")
    dp = _params(comm, **kw)
    summary, model = train.run(_cfg(zero=stage, **kw), comm, log=lambda *a: None)
    z = model.params
    n = model.size
    sharded = stage == 2 and p > 1 and algorithm in ("ring", "tree")
    itemsize = np.dtype(dtype).itemsize
    all_ranks(comm, (summary["grad_bytes"] < n * itemsize) == sharded,
              f"ZeRO-{stage} {algorithm}: {summary['grad_bytes']} B of gradients of {n} "
              f"parameters (sharded expected: {sharded})")
    all_ranks(comm, np.array_equal(z, dp), f"ZeRO-{stage} {algorithm} {dtype} {optimizer}: "
              f"max difference {np.abs(z - dp).max():.3g} from DataParallel")
    all_ranks(comm, same_bytes_everywhere(comm, z), "the same parameters on every rank")
    all_ranks(comm, not np.array_equal(z, _params(comm, max_steps=1, **kw)), "it trained")


@pytest.mark.parametrize("stage", [1, 2])
def test_optimizer_state_is_sharded(comm, stage):
    p = comm.Get_size()
    model = nn.mlp(64, [96, 32], 10, dtype=np.float32, seed=1)
    full = optim.Adam(nn.mlp(64, [96, 32], 10, dtype=np.float32, seed=1), lr=1e-3)
    dp_bytes = sum(v.nbytes for v in full.state_dict().values() if isinstance(v, np.ndarray))
    z = ZeRO(model, comm, "ring", stage=stage)
    opt = z.optimizer(lambda m: optim.Adam(m, lr=1e-3))
    mine = z.state_bytes(opt)
    # shards of chunk_bounds(n + 2, p): at most ceil((n + 2) / p) elements of m and of v
    bound = dp_bytes / p + 2 * 2 * 4
    all_ranks(comm, mine <= bound, f"rank holds {mine} B of optimizer state, bound {bound:.0f}")
    total = hc.reduce_value(mine, "sum", comm)
    all_ranks(comm, total == dp_bytes, f"the shards add up to {total} B, not {dp_bytes}")
    z.close()


@pytest.mark.parametrize("first,second", [(1, 0), (0, 2), (2, 1)])
def test_checkpoint_resumes_with_or_without_zero(comm, shared_dir, first, second):
    """25 steps with --zero first, 25 more with --zero second: the uninterrupted run's
    bytes (same ranks and algorithm, so bit for bit)."""
    p = comm.Get_size()
    ck = os.path.join(shared_dir, "ck")
    kw = dict(batch_size=12 * p, optimizer="adamw", algorithm="ring", schedule="constant")
    whole = _params(comm, max_steps=50, **kw)
    _params(comm, max_steps=25, zero=first, checkpoint_dir=ck, **kw)
    summary, model = train.run(_cfg(max_steps=50, zero=second, checkpoint_dir=ck,
                                    resume="auto", **kw), comm, log=lambda *a: None)
    resumed = model.params
    all_ranks(comm, (summary["resumed_from"] or "").endswith("step-00000025.h5"),
              f"resumed from {summary['resumed_from']}")
    all_ranks(comm, np.array_equal(resumed, whole),
              f"--zero {first} then {second}: {np.abs(resumed - whole).max():.3g} from the "
              f"uninterrupted run")


def test_zero_checkpoint_resumes_on_one_rank(comm, shared_dir):
    """A ZeRO-2 checkpoint of P ranks resumed by one process without ZeRO: the one-process
    run to float64 rounding."""
    ck = os.path.join(shared_dir, "ck")
    kw = dict(batch_size=120, optimizer="adam", dtype="float64", schedule="constant",
              algorithm="ring")  # 120: a multiple of 1, 2, 3, 4, 5 and 8 ranks
    _params(comm, max_steps=25, zero=2, checkpoint_dir=ck, **kw)

    def resumed():
        summary, model = train.run(_cfg(max_steps=50, checkpoint_dir=ck, resume="auto", **kw),
                                   hc.self_comm(), log=lambda *a: None)
        return summary["resumed_from"], model.params
    where, got = from_root(comm, resumed)
    all_ranks(comm, (where or "").endswith("step-00000025.h5"), f"resumed from {where}")
    ref = from_root(comm, lambda: _params(hc.self_comm(), max_steps=50, **kw))
    rel = float(np.abs(got - ref).max() / np.abs(ref).max())
    all_ranks(comm, rel < 1e-12, f"max relative difference {rel:.2e}")


def test_zero_with_overlap_is_refused():
    with pytest.raises(train.ConfigError, match="--zero does not overlap"):
        _cfg(zero=1, overlap=True)
    with pytest.raises(train.ConfigError, match="zero = 3"):
        _cfg(zero=3)


def test_data_parallel_and_zero_are_strategies():
    from hpcml.parallel import Strategy
    assert issubclass(DataParallel, Strategy) and issubclass(ZeRO, Strategy)


def _deep(dtype=np.float32):
    return nn.mlp(64, [64] * 6, 10, dtype=dtype, seed=2)  # 7 layers of similar size


@pytest.mark.parametrize("algorithm", ["ring", "tree"])
def test_zero2_holds_a_shard_of_the_gradients_and_one_layer(comm, algorithm):
    """No full gradient buffer: the rank's shard plus a staging buffer of the largest
    layer (DataParallel holds all n gradients and the two flags)."""
    p = comm.Get_size()
    model = _deep()
    n, largest = model.size, 64 * 64 + 64
    dp_bytes = DataParallel(_deep(), comm, algorithm).grad_bytes()
    z = ZeRO(model, comm, algorithm, stage=2)
    mine = z.grad_bytes()
    if p == 1:
        all_ranks(comm, mine == dp_bytes, "one rank: nothing to shard")
        return
    bound = (-(-(n + 2) // p) + largest + 2) * 4
    all_ranks(comm, model.grads is None and mine <= bound,
              f"ZeRO-2 holds {mine} B of gradients, bound {bound}")
    all_ranks(comm, dp_bytes == (n + 2) * 4 and (p < 2 or mine < dp_bytes),
              f"DataParallel {dp_bytes} B vs ZeRO-2 {mine} B")
    z.close()


@pytest.mark.parametrize("algorithm", ["ring", "tree"])
def test_zero2_rank_without_data_takes_part_with_zeros(comm, algorithm):
    """A rank whose data failed takes part in the per-layer reductions with zeros (no
    rank waits), every rank learns of the failure in sync(), and the shards hold the sum
    of the other ranks' gradients (checked against DataParallel given zeros there)."""
    p, rank = comm.Get_size(), comm.Get_rank()
    x = np.random.default_rng(rank).standard_normal((8, 64)).astype(np.float32)
    y = np.arange(8) % 10
    failed = rank == p - 1 and p > 1
    ref_model = _deep()
    dp = DataParallel(ref_model, comm, algorithm)
    _, d = nn.cross_entropy(ref_model(x), y)
    dp.backward(d)
    if failed:
        ref_model.grads[...] = 0
    dp.sync(error=failed)
    model = _deep()
    z = ZeRO(model, comm, algorithm, stage=2)
    if failed:
        z.skip_backward(1, first=True)
    else:
        _, d = nn.cross_entropy(model(x), y)
        z.backward(d)
    flags = z.sync(error=failed)
    all_ranks(comm, flags.failed == (1 if p > 1 else 0), f"failed ranks: {flags.failed}")
    all_ranks(comm, np.array_equal(z.shard_grads(), ref_model.grads[z.lo:z.hi]),
              "the shard differs from DataParallel's sum")
