"""Peak memory per rank, estimated before a job runs, and refused when it will not fit.

A job that outgrows memory is killed by the kernel's OOM killer with no message, after
minutes of work. Each job estimates its peak per rank from the dataset's header (rows,
features) and its settings, compares it with the memory a rank may use, and stops at once
with the estimate, what it is made of, the memory available and the remedies.

    --max-memory auto    the memory available on this node (MemAvailable, or the cgroup's
                         limit under Slurm/containers when lower) / ranks on this node
    --max-memory 12      12 GiB per rank
    --max-memory off     no check (run anyway)
"""
from hpcml.comm.guard import agree

GiB = 1024 ** 3
#: what one rank holds before the job's arrays: the interpreter, NumPy, Numba's compiled
#: kernels, h5py, MPI (measured here: 195 MB max RSS for `hpcml.train` on digits)
BASE = 250 * 1024 ** 2


def parse_setting(value):
    """'auto', 'off' or a positive number of GiB -> 'auto', None or bytes; ValueError."""
    v = str(value).strip().lower()
    if v in ("auto", "off"):
        return None if v == "off" else "auto"
    try:
        g = float(v)
    except ValueError:
        raise ValueError("must be 'auto', 'off' or GiB per rank (e.g. 12)") from None
    if not g > 0:
        raise ValueError("must be 'auto', 'off' or GiB per rank > 0")
    return int(g * GiB)


def _cgroup_left():
    """Bytes the cgroup (v2 or v1) still allows, or None."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit) as f:
                text = f.read().strip()
            if text == "max" or int(text) > 1 << 60:
                continue
            with open(usage) as f:
                return int(text) - int(f.read().strip())
        except (OSError, ValueError):
            continue
    return None


def available_bytes():
    """Memory this node can still give (bytes): MemAvailable, or less under a cgroup."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    cg = _cgroup_left()
    if avail is None:
        return cg
    return min(avail, cg) if cg is not None else avail


def _gib(b):
    return f"{b / GiB:.1f} GiB" if b >= GiB / 10 else f"{b / 1024 ** 2:.0f} MiB"


def check(comm, setting, what, parts, remedies):
    """Refuse the job on every rank (CollectiveError, one message) when the estimate
    BASE + sum(parts.values()) bytes exceeds the memory a rank may use. parts: {label:
    bytes} (the largest are named); remedies: sentences. Returns the estimate (bytes)."""
    from hpcml.comm.guard import local_ranks
    parts = {"Python, NumPy, Numba, MPI": BASE, **parts}
    estimate = sum(int(v) for v in parts.values())
    budget = parse_setting(setting) if not isinstance(setting, int) else setting
    if budget is None:
        return estimate
    error = None
    if budget == "auto":
        ranks = local_ranks(comm) if comm is not None else 1
        node = available_bytes()
        if node is None:
            return estimate
        per_rank, where = node // ranks, (f"{_gib(node)} available on this node / {ranks} "
                                          f"rank{'s' if ranks > 1 else ''} on it")
    else:
        per_rank, where = budget, "--max-memory"
    if estimate > per_rank:
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
        error = (f"{what} needs about {_gib(estimate)} per rank (" + ", ".join(
            f"{k} {_gib(v)}" for k, v in top) + f"); {_gib(per_rank)} per rank may be used "
            f"({where}). " + " ".join(remedies) + " --max-memory off runs it anyway; "
            "--max-memory GIB sets the memory per rank")
    if comm is not None:
        agree(comm, error, what="checking the memory")
    elif error:
        from hpcml.comm.guard import CollectiveError
        raise CollectiveError(error)
    return estimate


# --- estimates (bytes per rank) ----------------------------------------------------------
def tsne_parts(n, features, ranks, perplexity, components=2, itemsize=4):
    """t-SNE (hpcml.ml.TSNE): the affinity phase is the peak. Every rank holds all rows
    (gathered for the exact neighbour search, plus the centred copy knn makes) and the
    neighbour graph of all rows (indices, conditional P, row ids: 32 bytes per neighbour),
    and builds its own rows' symmetric P (COO entries, their sort and merge: 166 bytes per
    neighbour of its rows). The per-neighbour figures are measured (tracemalloc's peak in
    the affinity phase at 20,000 and 40,000 rows on 1 rank and 20,000 on 2 ranks:
    362/706/218 MiB, fitted to 18 MiB + 32 n k + 166 m k bytes)."""
    k = min(max(n - 1, 1), int(3 * perplexity + 1))
    m = -(-n // ranks)
    return {"all rows gathered": 2 * n * features * itemsize,
            "neighbour graph of all rows": 32 * n * k,
            "this rank's P being built": 166 * m * k,
            "search blocks": 18 * 1024 ** 2,
            "embedding": n * components * 8 * 3}


def pca_parts(n, features, ranks, components, solver, batch_size, itemsize=4):
    """PCA: the covariance solver streams batches and holds F x F scatter matrices; the
    randomized one keeps this rank's rows and (rows x (components + oversampling)) blocks."""
    m = -(-n // ranks)
    batch = min(batch_size, m) * features * (itemsize + 8 * 2)
    if solver == "randomized":
        k = (components or min(n, features)) + 10
        return {"this rank's rows": m * features * 8, "range blocks": 3 * m * k * 8,
                "batch": batch, "components": 4 * features * k * 8}
    return {"scatter matrices": 4 * features * features * 8, "batch": batch}


def train_parts(features, hidden, outputs, batch_rows, itemsize, optimizer_slots,
                prefetch=2):
    """Training: parameters, gradients and optimizer state (slots x parameters), each
    layer's activations and their gradients for one micro-batch, and the loader's batches
    in flight (prefetch + 2)."""
    widths = [features, *hidden, outputs]
    n_params = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return {"parameters, gradients, optimizer": n_params * itemsize * (2 + optimizer_slots),
            "activations": 3 * batch_rows * sum(widths) * itemsize,
            "batches in flight": (prefetch + 2) * batch_rows * (features * itemsize + 8)}

