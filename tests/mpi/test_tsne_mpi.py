"""t-SNE across ranks: the same embedding as one process, any split of the rows, and
input errors raised on every rank."""
import numpy as np
import pytest

from hpcml.comm import row_bounds
from hpcml.ml import TSNE
from hpcml.ml.checks import InputError

from mpi_helpers import all_ranks, from_root, same_bytes_everywhere, same_message_everywhere


def blobs(n=360, d=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(-8, 8, (4, d))
    return (c[rng.integers(0, 4, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("method", ["barnes_hut", "exact", "fft"])
def test_ranks_give_the_serial_embedding(comm, method, monkeypatch):
    X = blobs()
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    kw = dict(perplexity=15, max_iter=300, random_state=0, method=method)
    grids = []
    if method == "fft":
        # 360 points: with the default grid (>= 50 boxes) the FFT would cost more than the
        # exact sum, which RepulsionFFT then computes instead; a coarser grid keeps the
        # interpolation in use at every iteration (counted below)
        kw.update(min_num_intervals=10, intervals_per_unit=0.25)
        from hpcml.kernels import tsne as KT
        compute = KT.RepulsionFFT.compute

        def counted(self, *args):
            compute(self, *args)
            grids.append(self.last_grid is not None)
        monkeypatch.setattr(KT.RepulsionFFT, "compute", counted)
    ours = TSNE(comm=comm, **kw)
    mine = ours.fit_transform(X[lo:hi])
    serial = TSNE(**kw).fit(X)
    if method == "fft":
        all_ranks(comm, len(grids) == 600 and all(grids),
                  f"the FFT grid was used in {sum(grids)} of {len(grids)} repulsion steps")
    all_ranks(comm, same_bytes_everywhere(comm, ours.embedding_), "embeddings differ")
    all_ranks(comm, np.array_equal(mine, ours.embedding_[lo:hi]), "rows are not mine")
    # every per-row quantity is independent of the split; Z is summed in row order:
    # measured max error 0 for all three methods, |KL difference| <= 5.3e-15, at 2-4 ranks
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
    with pytest.raises(InputError, match=f"NaN or Inf in row 3 of rank {p - 1}") as info:
        TSNE(perplexity=5, comm=comm).fit(mine)
    same_message_everywhere(comm, info.value)


def test_feature_mismatch_and_perplexity_errors_on_every_rank(comm):
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    mine = X[lo:hi, :7] if r == 0 else X[lo:hi]
    with pytest.raises(InputError, match="ranks disagree on the feature count") as info:
        TSNE(perplexity=5, comm=comm).fit(mine)
    same_message_everywhere(comm, info.value)
    with pytest.raises(InputError, match=r"perplexity \(200\) must be less than") as info:
        TSNE(perplexity=200, comm=comm).fit(X[lo:hi])
    same_message_everywhere(comm, info.value)


def test_parameters_differing_across_ranks_fail_everywhere(comm):
    """Different (valid) parameters on different ranks would give all-gathers of different
    sizes (a truncation error or a hang): the same InputError on every rank instead."""
    X = blobs(120)
    p, r = comm.Get_size(), comm.Get_rank()
    lo, hi = row_bounds(len(X), p, r)
    with pytest.raises(InputError, match="t-SNE's parameters differ across ranks") as info:
        TSNE(perplexity=5 + r, max_iter=250, comm=comm).fit(X[lo:hi])
    same_message_everywhere(comm, info.value)


def test_sharded_dataset_across_ranks(comm):
    """The built-in dataset split by the loader: every rank gets the embedding of every row
    (dataset order) that one process gets from the same dataset, and its labels."""
    kw = dict(perplexity=20, max_iter=250, random_state=0)
    m = TSNE(comm=comm, **kw)
    E = m.fit_transform("digits")

    def serial():
        s = TSNE(**kw)
        return s.fit_transform("digits"), s.labels_, s.kl_divergence_
    want, labels, kl = from_root(comm, serial)
    all_ranks(comm, same_bytes_everywhere(comm, E), "embeddings differ")
    all_ranks(comm, E.shape == want.shape == (1438, 2), f"shape {E.shape}")
    all_ranks(comm, np.array_equal(m.labels_, labels), "labels differ from one process")
    # the tolerances of test_ranks_give_the_serial_embedding: measured max |E - want| is 0
    # (the same bytes) and |KL difference| <= 1.1e-14 at 2, 3 and 4 ranks, so 1e-9 of the
    # embedding's extent (4.55) and 1e-9 for KL are margins of > 1e4 over rounding
    err = np.abs(E - want).max() if E.shape == want.shape else np.inf
    all_ranks(comm, err <= 1e-9 * np.abs(want).max(), f"differs from one process by {err}")
    all_ranks(comm, abs(m.kl_divergence_ - kl) < 1e-9, f"KL {m.kl_divergence_} vs {kl}")


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
    comm.Barrier()  # rank 0 has written summary.json; every rank checks its own summary
    try:
        ok = json.load(open(os.path.join(out, "summary.json")))[
            "kl_divergence"] == summary["kl_divergence"]
    except (OSError, ValueError, KeyError):
        ok = False
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
    # found before the fit (issue 15): the same error on every rank, nothing computed
    with pytest.raises(CollectiveError, match="checking --output .*cannot write there"):
        cli.run(cfg, comm)
