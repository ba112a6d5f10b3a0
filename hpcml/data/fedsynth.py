"""FedProx's Synthetic(alpha, beta) federated data (Li et al. 2020, "Federated Optimization in
Heterogeneous Networks", section 5.1 and appendix C.1), as a sharded dataset whose last
feature column is the client id (train with `python -m hpcml.federated --partition natural
--client-column F`, F = --features).

For client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k (classes x features) and b_k have
entries ~ N(u_k, 1); v_k has entries ~ N(B_k, 1); its rows x ~ N(v_k, diag(j^-1.2)) and
y = argmax(W_k x + b_k). alpha sets how much the clients' models differ, beta how much
their data differ; (0, 0) is nearly IID. Client sizes follow a power law (lognormal, as the
paper's generator), scaled to --rows with at least 10 rows each.

Everything derives from the seed: client k's parameters from default_rng([seed, k]), its
training rows from default_rng([seed, k, 1]), its test rows from default_rng([seed, k, 2]);
the test split gives every client rows in proportion to its size.
"""
import numpy as np

from .format import DataError


def client_sizes(rows, clients, seed):
    if rows < 10 * clients:
        raise DataError(f"--federated: {rows} rows for {clients} clients; each needs at "
                        f"least 10 (give --rows >= {10 * clients})")
    raw = np.random.default_rng([seed, 1 << 31]).lognormal(4, 2, clients)
    extra = np.floor(raw / raw.sum() * (rows - 10 * clients)).astype(np.int64)
    sizes = 10 + extra
    sizes[np.argmax(sizes)] += rows - sizes.sum()
    return sizes


def _client_model(seed, k, alpha, beta, features, classes):
    rng = np.random.default_rng([seed, k])
    u, big_b = rng.normal(0, np.sqrt(alpha)), rng.normal(0, np.sqrt(beta))
    w = rng.normal(u, 1, (classes, features))
    b = rng.normal(u, 1, classes)
    v = rng.normal(big_b, 1, features)
    return w, b, v


def client_rows(seed, k, n, alpha, beta, features, classes, split=1):
    """(x with the client id appended, y) of client k's n rows (split 1 train, 2 test)."""
    w, b, v = _client_model(seed, k, alpha, beta, features, classes)
    rng = np.random.default_rng([seed, k, split])
    sd = np.arange(1, features + 1, dtype=np.float64) ** -0.6  # variance j^-1.2
    x = v + rng.standard_normal((n, features)) * sd
    y = np.argmax(x @ w.T + b, axis=1)
    return np.hstack([x, np.full((n, 1), float(k))]), y.astype(np.int64)


def make_shard(seed, index, shards, sizes, alpha, beta, features, classes, dtype, split=1):
    """Shard `index` of `shards`: the rows of clients index, index + shards, ... (every
    client's rows in one shard)."""
    xs, ys = [], []
    for k in range(index, len(sizes), shards):
        x, y = client_rows(seed, k, int(sizes[k]), alpha, beta, features, classes, split)
        xs.append(x)
        ys.append(y)
    return np.vstack(xs).astype(dtype), np.concatenate(ys)


def parse(text):
    try:
        a, b = (float(v) for v in str(text).split(","))
    except ValueError:
        raise DataError(f"--federated {text!r}: give ALPHA,BETA (e.g. 1,1)") from None
    if a < 0 or b < 0:
        raise DataError(f"--federated {text!r}: ALPHA and BETA must be >= 0")
    return a, b
