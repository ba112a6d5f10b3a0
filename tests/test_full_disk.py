"""A full disk is an error, not a crash: convert, synth and a checkpoint into a 3 MiB tmpfs
each exit 1 naming the file and the bytes it needed, on every rank's behalf, leave nothing
temporary, and an earlier checkpoint still loads. (HDF5 2.0 itself segfaults closing a
chunked, checksummed file after ENOSPC; hpcml builds HDF5 files in memory and writes the
image with the space reserved first, so HDF5 never meets the full disk.)"""
import errno
import os
import shutil
import sys

import numpy as np
import pytest

from hpcml import atomic
from hpcml import checkpoint as ckpt
import procs

MPIEXEC = shutil.which("mpiexec")


def _leftovers(folder):
    return [os.path.join(d, n) for d, _, names in os.walk(folder) for n in names
            if n.endswith(".tmp") or n.startswith(".")]


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (needs root and mount rights; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = procs.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], limit=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield str(mnt)
    finally:
        procs.run(["umount", "-l", str(mnt)], limit=30)


def _job(*args, ranks=2):
    cmd = ([MPIEXEC, "-n", str(ranks)] if ranks > 1 else []) + [sys.executable, "-m", *args]
    return procs.run(cmd, limit=60, env=dict(os.environ, HPCML_TIMEOUT="30"))


def _says_full(proc, path_part):
    err = proc.stderr
    return (proc.returncode == 1 and err.count("error: ") == 1 and path_part in err
            and "could not write" in err and "bytes: no space left on the device" in err
            and "Traceback" not in err)


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_convert_into_a_full_disk(small_disk, tmp_path):
    a = np.random.default_rng(0).random((150_000, 10))  # 12 MB of .npy
    a[:, -1] = np.arange(len(a)) % 3
    np.save(tmp_path / "big.npy", a)
    out = os.path.join(small_disk, "out")
    p = _job("hpcml.data", "convert", str(tmp_path / "big.npy"), out, "--shards", "4")
    assert _says_full(p, f"{out}/shard-0000"), (p.returncode, p.stderr)
    assert "failed on 2 of 2 ranks" in p.stderr
    assert _leftovers(small_disk) == [] and not os.path.exists(os.path.join(out, "manifest.json"))


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_synth_into_a_full_disk(small_disk):
    out = os.path.join(small_disk, "s")
    p = _job("hpcml.data", "synth", out, "--rows", "200000", "--features", "16",
             "--classes", "3", "--shards", "4")
    assert _says_full(p, f"{out}/shard-0000"), (p.returncode, p.stderr)
    assert _leftovers(small_disk) == [] and os.listdir(out) == []


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_checkpoint_into_a_full_disk_keeps_the_previous_one(small_disk):
    """1.35 MB checkpoints: two fit in 3 MiB, the third does not."""
    ck = os.path.join(small_disk, "ck")
    p = _job("hpcml.train", "--hidden", "512,256", "--epochs", "5", "--checkpoint-dir", ck,
             "--test-data", "none", "--progress", "false")
    assert _says_full(p, f"{ck}/step-00000069.h5"), (p.returncode, p.stderr)
    assert "writing a checkpoint" in p.stderr
    assert _leftovers(small_disk) == []
    latest = ckpt.find_latest(ck)
    assert latest["state"]["step"] == 46 and latest["params"].size > 160_000


def test_atomic_write_reports_enospc_and_leaves_nothing(tmp_path, monkeypatch):
    """Without root: the same error path, with the reservation failing."""
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(atomic.WriteError, match=f"{target}: could not write 1,000 bytes: no "
                                                 f"space left on the device") as info:
        atomic.atomic_write_bytes(target, b"x" * 1000)
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["f.bin"] and target.read_bytes() == b"old"
    with pytest.raises(atomic.WriteError, match="h5: could not write"):
        with atomic.atomic_h5(tmp_path / "a.h5") as f:
            f["x"] = np.arange(10)
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]
