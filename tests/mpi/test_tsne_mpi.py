"""t-SNE across ranks: the same embedding as one process, any split of the rows, and
input errors raised on every rank."""
import numpy as np
import pytest

from hpcml.comm import row_bounds
from hpcml.ml import TSNE

from mpi_helpers import all_ranks, same_bytes_everywhere, same_message_everywhere


def blobs(n=360, d=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-8, 8, (4, d))
    return (c[rng.integers(0, 4, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("method", ["barnes_hut", "exact"])
def test_ranks_give_the_serial_embedding(comm, method):
    X = blobs()
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    kw = dict(perplexity=15, max_iter=300, random_state=0, method=method)
    ours = TSNE(comm=comm, **kw)
    mine = ours.fit_transform(X[lo:hi])
    serial = TSNE(**kw).fit(X)
    all_ranks(comm, same_bytes_everywhere(comm, ours.embedding_), "embeddings differ")
    all_ranks(comm, np.array_equal(mine, ours.embedding_[lo:hi]), "rows are not mine")
    # every per-row quantity is independent of the split; Z is summed in row order
    err = np.abs(ours.embedding_ - serial.embedding_).max()
    all_ranks(comm, err < 1e-9 * np.abs(serial.embedding_).max(), f"differs by {err}")
    all_ranks(comm, abs(ours.kl_divergence_ - serial.kl_divergence_) < 1e-9,
              f"KL {ours.kl_divergence_} vs {serial.kl_divergence_}")


def test_uneven_rows(comm):
    X = blobs(200)
    p, r = comm.Get_size(), comm.Get_rank()
    cuts = np.cumsum([0] + [10 * (k + 1) for k in range(p - 1)])
    cuts = list(cuts) + [200]
    E = TSNE(perplexity=10, max_iter=260, random_state=0, comm=comm).fit_transform(
        X[cuts[r]:cuts[r + 1]])
    all_ranks(comm, E.shape == (cuts[r + 1] - cuts[r], 2), "wrong rows")
    ref = TSNE(perplexity=10, max_iter=260, random_state=0).fit(X).embedding_
    all_ranks(comm, np.allclose(E, ref[cuts[r]:cuts[r + 1]], rtol=0, atol=1e-9),
              "uneven split differs from serial")


def test_nan_on_one_rank_stops_every_rank(comm):
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    mine = X[lo:hi].copy()
    if r == p - 1:
        mine[3, 1] = np.inf
    with pytest.raises(Exception, match=f"NaN or Inf in row 3 of rank {p - 1}"):
        TSNE(perplexity=5, comm=comm).fit(mine)


def test_feature_mismatch_and_perplexity_errors_on_every_rank(comm):
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    mine = X[lo:hi, :7] if r == 0 else X[lo:hi]
    with pytest.raises(Exception, match="feature count"):
        TSNE(perplexity=5, comm=comm).fit(mine)
    with pytest.raises(Exception, match="perplexity"):
        TSNE(perplexity=200, comm=comm).fit(X[lo:hi])


def test_parameters_differing_across_ranks_fail_everywhere(comm):
    """Different (valid) parameters on different ranks would give all-gathers of different
    sizes (a truncation error or a hang): the same InputError on every rank instead."""
    from hpcml.ml.pca import InputError
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    with pytest.raises(InputError, match="t-SNE's parameters differ across ranks") as info:
        TSNE(perplexity=5 + r, max_iter=250, comm=comm).fit(X[lo:hi])
    same_message_everywhere(comm, info.value)


def test_sharded_dataset_across_ranks(comm):
    m = TSNE(perplexity=20, max_iter=250, random_state=0, comm=comm)
    E = m.fit_transform("digits")
    all_ranks(comm, same_bytes_everywhere(comm, E), "embeddings differ")
    all_ranks(comm, m.labels_.shape[0] == E.shape[0] and np.isfinite(E).all(), "bad result")


def test_cli_on_ranks(comm, tmp_path_factory):
    import json
    import os
    from hpcml import tsne as cli
    out = comm.bcast(str(tmp_path_factory.mktemp("tsne")) if comm.Get_rank() == 0 else None)
    cfg = cli.parse_args(["digits", "--output", out, "--max-iter", "260", "--verbose",
                          "false", "--plot", "false"])
    summary = cli.run(cfg, comm)
    all_ranks(comm, summary["ranks"] == comm.Get_size() and summary["rows"] == 1438,
              "bad summary")
    ok = comm.Get_rank() != 0 or json.load(open(os.path.join(out, "summary.json")))[
        "kl_divergence"] == summary["kl_divergence"]
    all_ranks(comm, ok, "summary.json differs")


def test_mixed_dtypes_across_ranks(comm):
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    mine = X[lo:hi] if r == 0 else X[lo:hi].astype(np.float64)  # float32 on rank 0 only
    m = TSNE(perplexity=10, max_iter=260, random_state=0, comm=comm).fit(mine)
    all_ranks(comm, same_bytes_everywhere(comm, m.embedding_), "embeddings differ")
    ref = TSNE(perplexity=10, max_iter=260, random_state=0).fit(X.astype(np.float64))
    all_ranks(comm, np.allclose(m.embedding_, ref.embedding_, rtol=0, atol=1e-9),
              "differs from the serial float64 run")


def test_cli_write_error_reaches_every_rank(comm, tmp_path_factory):
    import os
    from hpcml import tsne as cli
    from hpcml.comm import CollectiveError
    base = comm.bcast(str(tmp_path_factory.mktemp("tsne")) if comm.Get_rank() == 0 else None)
    blocker = os.path.join(base, "a-file")
    if comm.Get_rank() == 0:
        open(blocker, "w").close()
    comm.Barrier()
    cfg = cli.parse_args(["digits", "--output", os.path.join(blocker, "out"), "--max-iter",
                          "251", "--verbose", "false", "--plot", "false"])
    with pytest.raises(CollectiveError, match="writing the results"):
        cli.run(cfg, comm)
