"""How the rows of a dataset are dealt to N virtual clients (each a list of row indices,
sorted, in client order), deterministically from a seed; the same on every rank.

    clients = partition("iid", labels, 100, seed=0)
    clients = partition("shards:2", labels, 100, seed=0)      # McMahan's pathological non-IID
    clients = partition("dirichlet:0.5", labels, 100, seed=0) # label skew
    clients = partition("quantity:1.0", labels, 100, seed=0)  # sizes skewed, labels IID
    clients = partition("natural", labels, ids=ids)           # one client per id

* ``iid``: a random permutation cut into N nearly equal parts.
* ``shards:K`` (McMahan et al. 2017): the rows sorted by label, cut into N x K equal shards,
  K random shards per client (K=2 on MNIST: most clients see two digits).
* ``dirichlet:ALPHA``: for each class, its rows split over the clients in proportions drawn
  from Dirichlet(ALPHA) (small ALPHA: each client holds few classes).
* ``quantity:ALPHA``: client sizes in proportions drawn from Dirichlet(ALPHA) (each at least
  one row), rows IID.
* ``natural``: one client per distinct value of `ids` (a column of the dataset), in order of
  the values.

A client with no rows is an error naming it (every client must be able to train).
"""
import numpy as np

KINDS = ("iid", "shards", "dirichlet", "quantity", "natural")


class PartitionError(ValueError):
    """A partition that cannot be made; the message names the setting or the client."""


def parse(text):
    """'dirichlet:0.5' -> ('dirichlet', 0.5); a bad spec raises PartitionError."""
    kind, _, arg = str(text).partition(":")
    if kind not in KINDS:
        raise PartitionError(f"unknown partition {text!r}: one of iid, shards:K, "
                             f"dirichlet:ALPHA, quantity:ALPHA, natural")
    if kind in ("iid", "natural"):
        if arg:
            raise PartitionError(f"partition {text!r}: {kind} takes no argument")
        return kind, None
    try:
        value = int(arg) if kind == "shards" else float(arg or "nan")
    except ValueError:
        value = None
    if value is None or not value > 0 or (kind == "shards" and not arg.isdigit()):
        need = "K (shards per client, an int >= 1)" if kind == "shards" else "ALPHA > 0"
        raise PartitionError(f"partition {text!r}: needs {kind}:{need}")
    return kind, value


def partition(spec, labels, clients, seed=0, ids=None):
    """The clients' row indices (a list of N sorted int64 arrays)."""
    kind, arg = parse(spec)
    labels = np.asarray(labels)
    n = len(labels)
    if kind == "natural":
        if ids is None:
            raise PartitionError("partition 'natural' needs an id column (--client-column)")
        return _natural(np.asarray(ids))
    if not 1 <= clients <= n:
        raise PartitionError(f"clients = {clients}: must be between 1 and the {n} rows of the "
                             f"training data (every client needs a row)")
    rng = np.random.default_rng([seed, 0xFED])
    if kind == "iid":
        out = np.array_split(rng.permutation(n), clients)
    elif kind == "shards":
        out = _shards(labels, clients, arg, rng)
    elif kind == "dirichlet":
        out = _dirichlet(labels, clients, arg, rng)
    else:
        out = _quantity(n, clients, arg, rng)
    out = [np.sort(np.asarray(c, np.int64)) for c in out]
    empty = [i for i, c in enumerate(out) if len(c) == 0]
    if empty:
        raise PartitionError(
            f"partition {spec!r} with {clients} clients leaves {len(empty)} client(s) with "
            f"no rows (client {empty[0]} first): use fewer clients"
            + (" or a larger alpha" if kind == "dirichlet" else ""))
    return out


def _shards(labels, clients, k, rng):
    if clients * k > len(labels):
        raise PartitionError(f"partition 'shards:{k}' with {clients} clients needs "
                             f"{clients * k} shards of at least one row; the data has "
                             f"{len(labels)} rows")
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, clients * k)
    pick = rng.permutation(clients * k).reshape(clients, k)
    return [np.concatenate([pieces[j] for j in row]) for row in pick]


def _dirichlet(labels, clients, alpha, rng):
    parts = [[] for _ in range(clients)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(clients, alpha))
        cuts = np.floor(np.cumsum(p)[:-1] * len(rows)).astype(np.int64)
        for i, piece in enumerate(np.split(rows, cuts)):
            parts[i].append(piece)
    return [np.concatenate(p) for p in parts]


def _quantity(n, clients, alpha, rng):
    p = rng.dirichlet(np.full(clients, alpha))
    sizes = 1 + np.floor(p * (n - clients)).astype(np.int64)  # each at least one row
    sizes[np.argmax(sizes)] += n - sizes.sum()  # the rounding's rows to the largest
    return np.split(rng.permutation(n), np.cumsum(sizes)[:-1])


def _natural(ids):
    order = np.argsort(ids, kind="stable")
    cuts = np.flatnonzero(np.diff(ids[order]) != 0) + 1
    return [np.sort(c) for c in np.split(order, cuts)]


def describe(clients, labels):
    """Figures of a partition: clients, rows per client (min, median, max), classes per
    client (mean; classification only)."""
    sizes = np.array([len(c) for c in clients])
    out = {"clients": len(clients), "rows_min": int(sizes.min()),
           "rows_median": float(np.median(sizes)), "rows_max": int(sizes.max())}
    if np.issubdtype(np.asarray(labels).dtype, np.integer):  # classes (not regression)
        out["classes_per_client"] = float(np.mean([len(np.unique(labels[c]))
                                                   for c in clients]))
    return out
