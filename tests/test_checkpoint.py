"""Checkpoints of python -m hpcml.train on one process: what is kept, what is refused."""
import glob
import json
import os

import pytest
from mpi4py import MPI

from hpcml import checkpoint as ckpt
from hpcml import train
from hpcml.comm import CollectiveError


def _run(folder, **kw):
    base = dict(data="digits", test_data="none", hidden="11", dtype="float64", epochs=1,
                progress=False, seed=1, batch_size=64, checkpoint_dir=str(folder))
    base.update(kw)
    cfg = train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))
    return train.run(cfg, MPI.COMM_WORLD, log=lambda *a: None)[0]


def _steps(folder):
    return sorted(int(os.path.basename(p)[5:13]) for p in glob.glob(f"{folder}/step-*.h5"))


def test_the_newest_write_survives_pruning_after_resuming_from_an_older_step(tmp_path):
    _run(tmp_path, epochs=2, keep=3)           # steps 23 and 46
    last = os.path.join(tmp_path, "step-00000046.h5")
    data = open(last, "rb").read()
    open(last, "wb").write(data[:len(data) // 2])   # the newest is corrupt: resume from 23
    out = _run(tmp_path, epochs=3, keep=1, checkpoint_every=10, max_steps=40, resume="auto")
    assert out["resumed_from"].endswith("step-00000023.h5") and out["step"] == 40
    assert _steps(tmp_path) == [40]            # the corrupt step 46 went, step 40 stayed
    latest = json.load(open(os.path.join(tmp_path, "latest")))
    assert latest["step"] == 40 and os.path.exists(os.path.join(tmp_path, latest["file"]))


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    _run(tmp_path)
    for p in glob.glob(f"{tmp_path}/step-*.h5"):
        open(p, "wb").write(b"not hdf5")
    with pytest.raises(CollectiveError, match="no readable checkpoint.*step-00000023.h5"):
        _run(tmp_path, epochs=2, resume="auto")


@pytest.mark.parametrize("change, match", [
    ({"hidden": "11,5"}, "written with --hidden '11'; this run has --hidden '11,5'"),
    ({"optimizer": "adam"}, "written with --optimizer 'sgd'; this run has --optimizer 'adam'"),
])
def test_another_model_or_optimizer_is_refused(tmp_path, change, match):
    _run(tmp_path)  # hidden 11 and 11,5 have the same parameter count (835) on digits
    with pytest.raises(CollectiveError, match=match):
        _run(tmp_path, epochs=2, resume="auto", **change)


def test_a_refused_checkpoint_of_another_algorithm_says_only_why(tmp_path):
    """The 'not bit for bit' note is for checkpoints that are resumed: with another model
    *and* another algorithm, the refusal alone is printed (and/or without parentheses
    printed the note too)."""
    _run(tmp_path, algorithm="ring")
    lines = []
    base = dict(data="digits", test_data="none", hidden="11,5", dtype="float64", epochs=2,
                progress=False, seed=1, batch_size=64, checkpoint_dir=str(tmp_path),
                resume="auto", algorithm="tree")
    cfg = train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))
    with pytest.raises(CollectiveError, match="written with --hidden '11'"):
        train.run(cfg, MPI.COMM_WORLD, log=lines.append)
    assert not any("not bit for bit" in line for line in lines), lines


def test_a_run_stopped_by_max_steps_saves_its_last_step(tmp_path):
    out = _run(tmp_path, epochs=3, checkpoint_every=7, max_steps=30)
    assert out["step"] == 30 and _steps(tmp_path)[-1] == 30


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        _run(tmp_path)
    finally:
        os.umask(old)
    for p in glob.glob(f"{tmp_path}/step-*.h5"):
        assert os.stat(p).st_mode & 0o777 == 0o644
    assert ckpt.load(glob.glob(f"{tmp_path}/step-*.h5")[0])["step"] == 23


def test_a_flipped_byte_in_the_weights_is_detected(tmp_path):
    import h5py
    _run(tmp_path)
    path = glob.glob(f"{tmp_path}/step-*.h5")[0]
    with h5py.File(path, "r") as f:
        info = f["params"].id.get_chunk_info(0)
    raw = bytearray(open(path, "rb").read())
    raw[info.byte_offset + 100] ^= 0xFF
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="step-00000023.h5: unreadable checkpoint"):
        ckpt.load(path)


def test_resuming_with_another_schedule_length_says_so(tmp_path):
    """--max-steps and --epochs set the schedule's length: a run stopped by --max-steps
    and resumed without it is not the uninterrupted run, and the resume says so."""
    base = dict(data="digits", test_data="none", hidden="11", dtype="float64", epochs=2,
                progress=False, seed=1, batch_size=64, checkpoint_dir=str(tmp_path),
                schedule="cosine")
    cfg = train.validate(dict({k: v[0] for k, v in train.SETTINGS.items()}, **base))
    train.run(dict(cfg, max_steps=30), MPI.COMM_WORLD, log=lambda *a: None)
    lines = []
    train.run(dict(cfg, resume="auto"), MPI.COMM_WORLD, log=lines.append)
    assert any("written with --max-steps 30" in ln for ln in lines), lines
    lines.clear()
    train.run(dict(cfg, epochs=3, resume="auto"), MPI.COMM_WORLD, log=lines.append)
    assert any("--epochs 2" in ln for ln in lines), lines
