"""Alpha-beta(-gamma) cost model that `algorithm="auto"` uses to pick an algorithm.

    T(message of m bytes) = alpha + m * beta        (point-to-point, per message)
    reducing m bytes      = m * gamma               (one ufunc pass, in cache)

Analytic formulas per algorithm (latency terms x alpha + volume x beta + reduced bytes x
gamma) predict which algorithm wins where. :func:`calibrate` measures the model on the
communicator it is given: alpha, beta, gamma with the ring's neighbour pattern, and for
all-reduce the actual cost of every algorithm at a ladder of sizes, i.e. one alpha-beta line
per size regime and algorithm. The crossovers between algorithms are thus measured on the
machine, with its oversubscription, network and caches, not guessed. Every rank agrees on
the slowest rank's numbers, so every rank chooses the same algorithm.

Without calibration, DEFAULT (alpha, beta, gamma only) is used; it was measured by
``mpiexec -n 2 python -m hpcml.bench calibrate`` on the project's 2-core CI-class machine
(MPICH 5.0.2 wheel, shared memory). ``HPCML_COMM_MODEL=file.json`` loads a saved model.
"""
import json
import math
from dataclasses import dataclass, asdict
from functools import lru_cache



@dataclass(frozen=True)
class CostModel:
    alpha: float  # seconds per message
    beta: float   # seconds per byte moved
    gamma: float  # seconds per byte reduced
    #: measured all-reduce costs: ((algorithm, ranks, ((nbytes, seconds), ...)), ...).
    #: Between two measured sizes the cost is the alpha-beta line through them (a piecewise
    #: alpha-beta model, one line per size regime); beyond the last size it follows the last
    #: line, below the first it is the first time. They replace the analytic formulas for
    #: the world size they were measured on.
    curves: tuple = ()
    #: below this many bytes `auto` hands the all-reduce to MPI's own MPI_Allreduce: there,
    #: one Python-level step of hpcml's schedules costs more than a better algorithm saves
    #: (MPICH runs the same recursive doubling in C). A measured "mpi" curve for the world
    #: size (calibrate) replaces this threshold.
    mpi_below: int = 0

    def _measured(self, algorithm, nbytes, p):
        for name, ranks, pts in self.curves:
            if name == algorithm and ranks == p:
                return _piecewise(pts, nbytes)
        return None

    # --- all-reduce -------------------------------------------------------------------
    def tree_allreduce(self, nbytes, p):
        """Recursive doubling; two extra exchanges when p is not a power of two."""
        if p <= 1:
            return 0.0
        measured = self._measured("tree", nbytes, p)
        if measured is not None:
            return measured
        q = 1 << (p.bit_length() - 1)
        return math.log2(q) * (self.alpha + nbytes * (self.beta + self.gamma)) + \
            self._fold(nbytes, p, q)

    def _fold(self, nbytes, p, q):
        """Ranks above the largest power of two q fold their data in, then get the result
        back: two exchanges of the whole message and one reduction (0 when p == q)."""
        return 0.0 if q == p else 2 * (self.alpha + nbytes * self.beta) + nbytes * self.gamma

    def ring_allreduce(self, nbytes, p, seg_bytes):
        """Segmented ring reduce-scatter + ring all-gather."""
        if p <= 1:
            return 0.0
        measured = self._measured("ring", nbytes, p)
        if measured is not None:
            return measured
        block = nbytes / p
        nseg = max(1, math.ceil(block / max(seg_bytes, 1)))
        return (p - 1) * (nseg * self.alpha + block * (self.beta + self.gamma)
                          + self.alpha + block * self.beta)

    def rhd_allreduce(self, nbytes, p, seg_bytes):
        """Recursive halving + doubling (Rabenseifner), folding ranks above a power of 2."""
        if p <= 1:
            return 0.0
        measured = self._measured("rhd", nbytes, p)
        if measured is not None:
            return measured
        q = 1 << (p.bit_length() - 1)
        lg = math.log2(q)
        half = nbytes / 2
        nseg = max(1, math.ceil(half / max(seg_bytes, 1)))
        return (lg * nseg + lg) * self.alpha + \
            (q - 1) / q * nbytes * (2 * self.beta + self.gamma) + self._fold(nbytes, p, q)

    def allreduce(self, algorithm, nbytes, p, seg_bytes):
        """Predicted seconds of one all-reduce of nbytes with `algorithm` on p ranks."""
        if algorithm == "tree":
            return self.tree_allreduce(nbytes, p)
        if algorithm == "ring":
            return self.ring_allreduce(nbytes, p, seg_bytes)
        return self.rhd_allreduce(nbytes, p, seg_bytes)

    # --- rooted -----------------------------------------------------------------------
    def tree_rooted(self, nbytes, p, reducing):
        """Binomial broadcast / reduce: ceil(lg p) rounds of the whole message."""
        rounds = math.ceil(math.log2(p)) if p > 1 else 0
        return rounds * (self.alpha + nbytes * (self.beta + (self.gamma if reducing else 0)))

    def ring_rooted(self, nbytes, p, reducing):
        """Scatter + ring all-gather (broadcast) or ring reduce-scatter + gather (reduce)."""
        if p <= 1:
            return 0.0
        block = nbytes / p
        t = (p - 1) * (self.alpha + block * self.beta)  # the root's scatter or gather
        return t + (p - 1) * (self.alpha + block * (self.beta + (self.gamma if reducing else 0)))

    def to_json(self):
        return json.dumps(asdict(self))


#: Measured here: `mpiexec -n 2 python -m hpcml.bench calibrate` (see module docstring).
#: mpi_below: `mpiexec -n 2|4 python -m hpcml.bench allreduce` (2-core Xeon, 2026-12-01):
#: MPI's own all-reduce through hpcml.comm is faster than hpcml's best schedule at every
#: size up to 64 KiB at 2 and 4 ranks (one Python call per step costs ~2 us there).
DEFAULT = CostModel(alpha=2.5e-6, beta=1.4e-10, gamma=1.5e-10, mpi_below=64 << 10)


#: hpcml's own all-reduce algorithms, in the order ties are broken
ALLREDUCE_ALGORITHMS = ("tree", "rhd", "ring")
#: what calibrate() measures curves for: hpcml's own, and MPI's MPI_Allreduce
MEASURED_ALGORITHMS = ALLREDUCE_ALGORITHMS + ("mpi",)


@lru_cache(maxsize=4096)
def choose_allreduce(model, nbytes, p, seg_bytes):
    """The algorithm the model predicts is fastest for this message (same on all ranks):
    the best of hpcml's own, or "mpi" where a measured curve says MPI's own is faster, or,
    with no such curve, below model.mpi_below bytes."""
    own = min(ALLREDUCE_ALGORITHMS, key=lambda a: model.allreduce(a, nbytes, p, seg_bytes))
    mpi = model._measured("mpi", nbytes, p)
    if mpi is not None:
        return "mpi" if mpi < model.allreduce(own, nbytes, p, seg_bytes) else own
    return "mpi" if nbytes < model.mpi_below else own


@lru_cache(maxsize=4096)
def choose_rooted(model, nbytes, p, reducing):
    ring = model.ring_rooted(nbytes, p, reducing)
    return "ring" if ring < model.tree_rooted(nbytes, p, reducing) else "tree"


def allreduce_choices(model, p, seg_bytes, limit=1 << 30):
    """[(from_bytes, algorithm), ...]: where the model's choice changes, over powers of 2."""
    out, nbytes = [], 1
    while nbytes <= limit:
        alg = choose_allreduce(model, nbytes, p, seg_bytes)
        if not out or out[-1][1] != alg:
            out.append((nbytes, alg))
        nbytes *= 2
    return out


def load(path):
    """A CostModel from a JSON file written by `python -m hpcml.bench calibrate` (validated)."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        d = d.get("model", d)
        curves = []
        for name, ranks, pts in d.get("curves", ()):
            pts = tuple((int(n), float(t)) for n, t in pts)
            sizes = [n for n, _ in pts]
            if name not in MEASURED_ALGORITHMS:
                raise ValueError(f"unknown algorithm {name!r} in curves")
            if len(pts) < 2 or sizes != sorted(set(sizes)) or min(sizes) <= 0:
                raise ValueError(f"curve {name!r} needs >= 2 points at increasing sizes")
            if not all(t > 0 and math.isfinite(t) for _, t in pts):
                raise ValueError(f"curve {name!r} has a non-positive or non-finite time")
            curves.append((str(name), int(ranks), pts))
        model = CostModel(alpha=float(d["alpha"]), beta=float(d["beta"]),
                          gamma=float(d["gamma"]), curves=tuple(curves),
                          mpi_below=int(d.get("mpi_below", 0)))
        if not all(v >= 0 and math.isfinite(v) for v in (model.alpha, model.beta, model.gamma)):
            raise ValueError("alpha, beta and gamma must be finite and >= 0")
        if model.mpi_below < 0:
            raise ValueError("mpi_below must be >= 0 bytes")
        return model
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"HPCML_COMM_MODEL: cannot read a cost model from {path}: "
                         f"{type(e).__name__}: {e}") from None


def _piecewise(points, nbytes):
    """Cost at nbytes from measured (nbytes, seconds) points, sorted by size."""
    if nbytes <= points[0][0]:
        return points[0][1]
    for (n0, t0), (n1, t1) in zip(points, points[1:]):
        if nbytes <= n1:
            break
    slope = (t1 - t0) / (n1 - n0)  # the beta of this size regime
    if nbytes > n1:  # beyond the last measured size: extrapolate, never downhill
        slope = max(slope, 0.0)
    return t0 + slope * (nbytes - n0)
