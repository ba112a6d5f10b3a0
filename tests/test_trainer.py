"""The Trainer's callbacks stop a run early on every rank at the same step (in-process
ranks), and the stop checkpoints; train.run is the Trainer with DataParallel."""
import os

import pytest

from hpcml import train
from hpcml import checkpoint as ckpt
from hpcml.comm.inproc import run_ranks


def _cfg(**kw):
    base = dict(data="digits", test_data="none", hidden="16", dtype="float64", epochs=6,
                progress=False, seed=3, batch_size=120)
    base.update(kw)
    return train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))


class StopAfterEpoch:
    def __init__(self, n):
        self.n = n

    def on_epoch(self, trainer, entry):
        return entry["epoch"] >= self.n


class StopOnOneRank:
    """Asks to stop after step 7, on rank 1 only: the request rides on the next sync."""

    def on_step(self, trainer, step):
        return trainer.rank == 1 and step == 7


@pytest.mark.parametrize("ranks", [1, 3])
def test_on_epoch_callback_stops_every_rank(ranks, tmp_path):
    ck = str(tmp_path / "ck")

    def body(comm):
        hist = []
        summary, _ = train.run(_cfg(checkpoint_dir=ck), comm, log=lambda *a: None,
                               history=hist, callbacks=[StopAfterEpoch(2)])
        return summary, len(hist)
    out = run_ranks(ranks, body)
    for summary, epochs in out:
        assert summary["status"] == "stopped" and summary["epochs_done"] == 2 and epochs == 2
        assert summary["step"] == 24  # 12 steps an epoch (1438 rows, batch 120)
    assert len({s["params_sha256"] for s, _ in out}) == 1
    assert ckpt.find_latest(ck)["state"]["step"] == 24


def test_on_step_callback_on_one_rank_stops_all_at_the_same_step(tmp_path):
    ck = str(tmp_path / "ck")
    out = run_ranks(3, lambda comm: train.run(_cfg(checkpoint_dir=ck), comm,
                                              log=lambda *a: None,
                                              callbacks=[StopOnOneRank()])[0])
    assert [s["step"] for s in out] == [8, 8, 8]
    assert all(s["status"] == "stopped" for s in out)
    assert ckpt.find_latest(ck)["state"]["step"] == 8
    resumed = run_ranks(3, lambda comm: train.run(_cfg(checkpoint_dir=ck, resume="auto"),
                                                  comm, log=lambda *a: None)[0])
    assert all(s["status"] == "done" and s["step"] == 72 for s in resumed)
    assert os.path.basename(resumed[0]["resumed_from"]) == "step-00000008.h5"
