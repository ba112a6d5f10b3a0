"""Hogwild! (issue 17): the ranks of a node update one shared copy of the parameters
without locks. One rank equals plain SGD; at 2 ranks (in-process and under mpiexec) the
ranks share the memory, end with the same parameters and learn digits, locked or not; the
sparse update of a linear model writes only the coordinates its gradient touches."""
import json
import shutil
import sys

import numpy as np
import pytest

from hpcml import train
from hpcml.comm.inproc import run_ranks
from procs import run


def _cfg(**kw):
    c = {k: v[0] for k, v in train.SETTINGS.items()}
    c.update(dict(test_data="none", hidden="24,16", epochs=2, max_steps=30, batch_size=32,
                  dtype="float64", progress=False, warmup=5), **kw)
    return train.validate(c)


@pytest.mark.parametrize("kw", [dict(momentum=0.0, weight_decay=0.0),  # the sparse path
                                dict()])  # the optimizer's dense update (momentum)
def test_one_rank_equals_plain_sgd(kw):
    ref = train.run(_cfg(**kw), log=lambda *a: None)[1].params
    one = run_ranks(1, lambda c: train.run(_cfg(parallel="hogwild", **kw), c,
                                           log=lambda *a: None))[0][1].params
    assert np.abs(one - ref).max() / np.abs(ref).max() < 1e-12  # measured 1.1e-16


@pytest.mark.parametrize("lock", [False, True])
def test_two_ranks_share_the_parameters_and_learn(lock):
    seen = {}

    class Memory:
        def on_step(self, trainer, step):
            seen[trainer.comm.Get_rank()] = trainer.model.params

    out = run_ranks(2, lambda c: train.run(
        _cfg(parallel="hogwild", hogwild_lock=lock, max_steps=0, test_data="auto"), c,
        log=lambda *a: None, callbacks=[Memory()]))
    assert np.shares_memory(seen[0], seen[1])  # one copy, written by both ranks
    assert np.array_equal(out[0][1].params, out[1][1].params)
    assert out[0][0]["test_accuracy"] >= 0.9, out[0][0]  # 2 epochs: measured 0.94


def test_plain_sgd_takes_the_sparse_update_and_matches_the_dense_one():
    """Plain SGD writes only the coordinates with a non-zero gradient (fewer stores, fewer
    lost updates between ranks) and gives what the optimizer's dense update gives;
    momentum takes the dense update."""
    from hpcml import nn, optim
    from hpcml.parallel.hogwild import Hogwild

    def body(comm, momentum):
        model = nn.mlp(4, [], 3, dtype=np.float64, seed=0)
        hog = Hogwild(model, comm)
        opt = hog.optimizer(lambda m: optim.SGD(m, 0.5, momentum=momentum))
        model.grads[...] = 0
        model.grads[2], model.grads[7] = 1.0, -2.0
        dense = model.params.copy()
        dense[2], dense[7] = dense[2] - 0.5, dense[7] + 1.0
        hog.set_rows(1, 1)
        hog.step(opt, 0.5)
        hog.close()
        return hog.sparse_steps, model.params, dense
    steps, got, want = run_ranks(1, lambda c: body(c, 0.0))[0]
    assert steps == 1 and np.array_equal(got, want)
    steps, got, want = run_ranks(1, lambda c: body(c, 0.9))[0]
    assert steps == 0 and np.allclose(got, want, rtol=0, atol=1e-15)


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")
def test_hogwild_and_locked_learn_digits_under_mpiexec():
    """2 processes on one node share an MPI window: about 97-99% each (measured 97.8% /
    98.3%), a linear model on raw (sparse) pixels too. Lock-free runs race, so their
    result varies from run to run: the bounds leave room for that (>= 96.5%, the two
    within 1.5 points); the benchmark gives the figures."""
    acc = {}
    for name, extra in (("hogwild", []), ("locked", ["--hogwild-lock", "true"]),
                        ("linear", ["--hidden", "", "--standardize", "false", "--momentum",
                                    "0", "--weight-decay", "0", "--lr", "0.01"])):
        r = run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "hpcml.train",
                 "--parallel", "hogwild", "--progress", "false", *extra], limit=120)
        assert r.returncode == 0, r.stderr
        acc[name] = json.loads(r.stdout.strip().splitlines()[-1])["test_accuracy"]
    assert min(acc.values()) >= 0.965 and abs(acc["hogwild"] - acc["locked"]) <= 0.015, acc


@pytest.mark.parametrize("lock", [False, True])
def test_the_locked_variant_serialises_each_step(lock):
    """Two ranks each run 3 steps whose read-compute-write takes 50 ms: locked, no two
    steps overlap in time; lock-free, they do."""
    import time
    from hpcml import nn, optim
    from hpcml.parallel.hogwild import Hogwild

    def body(comm):
        model = nn.mlp(4, [], 3, dtype=np.float64, seed=0)
        hog = Hogwild(model, comm, locked=lock)
        opt = hog.optimizer(lambda m: optim.SGD(m, 0.1))
        spans = []
        for _ in range(3):
            hog.before_forward()
            t = time.perf_counter()
            time.sleep(0.05)
            model.grads[...] = 1.0
            hog.set_rows(1, 1)
            hog.step(opt, 0.1)
            spans.append((t, time.perf_counter()))
        hog.close()
        return spans
    a, b = run_ranks(2, body)
    overlap = any(s0 < e1 and s1 < e0 for s0, e0 in a for s1, e1 in b)
    assert overlap is (not lock), (a, b)
