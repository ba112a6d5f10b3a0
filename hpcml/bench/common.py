"""Shared benchmark plumbing: size parsing, OSU-style timing, output on rank 0."""
import datetime
import os
import platform
import socket

import numpy as np

from hpcml import comm as hc

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_bytes(text):
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in _UNITS else ""
    try:
        return int(float(t[:len(t) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"not a byte size: {text!r} (examples: 8, 4K, 64M)") from None


def parse_sizes(text):
    """'8:64M' (powers of two from 8 B to 64 MiB) or '1K,1M,16M'."""
    if ":" in text:
        lo, hi = (parse_bytes(x) for x in text.split(":", 1))
        if lo <= 0 or hi < lo:
            raise ValueError(f"bad size range {text!r}")
        out, s = [], lo
        while s <= hi:
            out.append(s)
            s *= 2
        return out
    return [parse_bytes(x) for x in text.split(",") if x.strip()]


def environment(comm):
    return {
        "ranks": comm.Get_size(),
        "hosts": len(set(comm.allgather(socket.gethostname()))),
        "mpi_library": hc.library_version(),
        "mpi4py": hc.mpi4py_version(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def human(nbytes):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div} {unit}"
    return f"{nbytes} B"


def run_worker(cmd, timeout, capture=False):
    """Run a benchmark's worker command with `--worker-out FILE` appended and return the
    JSON it wrote there (a RuntimeError naming the command if it fails; with capture, its
    stderr's end too)."""
    import json
    import subprocess
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        r = subprocess.run(list(cmd) + ["--worker-out", path], timeout=timeout,
                           capture_output=capture, text=True)
        if r.returncode:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed (exit {r.returncode})"
                               + (f":\n{r.stderr[-3000:]}" if capture else ""))
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def save_results(out, name, result, plot):
    """Write OUT/NAME.json (atomically), then OUT/NAME.png by plot(path) (the numbers come
    first, so a failing picture loses none), and say so."""
    from hpcml.atomic import atomic_write_json
    os.makedirs(out, exist_ok=True)
    atomic_write_json(os.path.join(out, f"{name}.json"), result)
    plot(os.path.join(out, f"{name}.png"))
    print(f"# wrote {out}/{name}.json and {name}.png")


def timed(comm, fn, repeats):
    """Median seconds of fn() over repeats, each from a barrier to the last rank's end;
    (median, fn's last result)."""
    import time
    times, out = [], None
    for _ in range(repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        out = fn()
        comm.Barrier()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out
