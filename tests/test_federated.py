"""Federated learning (issue 18): the identities (FedAvg with C=1, E=1, B=all equals FedSGD
equals one centralised full-batch step; FedProx with mu=0 equals FedAvg), the aggregators
against independent oracles (NumPy, SciPy, Flower's aggregate functions when installed),
the same global model at 1..4 ranks, partitions, and bad settings."""
import re

import numpy as np
import pytest

from hpcml import nn
from hpcml.comm.inproc import run_ranks
from hpcml.config import ConfigError
from hpcml.parallel.federated import aggregate, partition
from hpcml.federated import job


def _cfg(tmp_path, **kw):
    c = {k: v[0] for k, v in job.SETTINGS.items()}
    c.update(dict(output=str(tmp_path / "out"), verbose=False, plot=False, hidden="16",
                  dtype="float64", rounds=3, clients=20, fraction=0.25), **kw)
    return job.validate(c)


def _run(cfg, ranks=1):
    """(summary, the global model's parameters) on rank 0 of `ranks` in-process ranks."""
    def body(comm):
        fed = job.simulate(dict(cfg), comm)
        return fed.evaluate(), fed.params.copy()
    return run_ranks(ranks, body)[0]


def test_fedavg_one_epoch_full_batch_equals_fedsgd_equals_a_centralised_step(tmp_path):
    """C=1, E=1, B=all, one round, float64: the rows-weighted mean of the clients' steps is
    one full-batch SGD step on the union (computed here with hpcml.nn directly)."""
    kw = dict(fraction=1.0, rounds=1, local_batch=0, partition="dirichlet:0.5", lr=0.1)
    _, avg = _run(_cfg(tmp_path, **kw))
    _, sgd = _run(_cfg(tmp_path, strategy="fedsgd", local_epochs=3, **kw))
    cfg = _cfg(tmp_path, **kw)
    from hpcml import comm as hc
    x, y, *_ = job.load(cfg, hc.self_comm())
    m = nn.mlp(x.shape[1], [16], 10, dtype=np.float64, seed=cfg["seed"])
    w0 = m.params.copy()
    out = m.forward(x, train=True)
    _, dy = nn.cross_entropy(out, y)
    m.backward(dy, False, input_grad=False)
    central = w0 - 0.1 * m.grads
    step = np.abs(central - w0).max()
    assert step > 1e-3  # the step moves the model
    for p in (avg, sgd):  # relative to the step (the parameters agree to many more digits)
        assert np.abs(p - central).max() / step < 1e-12, np.abs(p - central).max() / step


def test_fedprox_mu_0_equals_fedavg_and_mu_changes_it(tmp_path):
    kw = dict(partition="shards:2", local_epochs=2)
    _, avg = _run(_cfg(tmp_path, **kw))
    _, prox0 = _run(_cfg(tmp_path, strategy="fedprox", mu=0.0, **kw))
    _, prox = _run(_cfg(tmp_path, strategy="fedprox", mu=1.0, **kw))
    np.testing.assert_array_equal(avg, prox0)
    assert np.abs(prox - avg).max() > 1e-4


@pytest.mark.parametrize("kw", [
    dict(partition="shards:2", dropout_rate=0.3, stragglers=0.5),
    dict(partition="dirichlet:0.3", strategy="fedadam", server_lr=0.01, dtype="float32"),
    dict(partition="quantity:1.0", aggregator="multikrum:1:3", byzantine=0.2,
         strategy="fedavgm", server_lr=0.5)])
def test_the_global_model_is_bit_identical_at_1_to_4_ranks(tmp_path, kw):
    cfg = _cfg(tmp_path, **kw)
    ref_eval, ref = _run(cfg, 1)
    for ranks in (2, 3, 4):
        ev, p = _run(cfg, ranks)
        np.testing.assert_array_equal(p, ref)
        assert ev["test_accuracy"] == ref_eval["test_accuracy"]


def _updates(m=7, p=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, p)), rng.integers(5, 50, m)


def test_aggregators_against_numpy_and_scipy():
    from scipy.stats import trim_mean
    u, n = _updates()
    np.testing.assert_allclose(aggregate(u, n, "mean"), np.average(u, axis=0, weights=n),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(aggregate(u, n, "median"), np.median(u, axis=0))
    np.testing.assert_allclose(aggregate(u, n, "trimmed", (0.2,)),
                               trim_mean(u, 0.2, axis=0), rtol=1e-13, atol=1e-15)
    # Krum: an outlier far from the others is never chosen; brute-force scores
    u[3] += 100.0
    f = 1
    d = ((u[:, None, :] - u[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(d[i], i))[:len(u) - f - 2].sum() for i in range(len(u))]
    np.testing.assert_array_equal(aggregate(u, n, "krum", (f,)), u[int(np.argmin(scores))])
    assert not np.array_equal(aggregate(u, n, "krum", (f,)), u[3])


def test_aggregators_equal_flowers():
    """Flower's own aggregate functions (the test oracle the issue names)."""
    agg = pytest.importorskip("flwr.server.strategy.aggregate")
    u, n = _updates(m=9)
    res = [([row], int(k)) for row, k in zip(u, n)]
    np.testing.assert_allclose(aggregate(u, n, "mean"), agg.aggregate(res)[0], rtol=1e-13)
    np.testing.assert_allclose(aggregate(u, n, "median"), agg.aggregate_median(res)[0])
    np.testing.assert_allclose(aggregate(u, n, "trimmed", (0.2,)),
                               agg.aggregate_trimmed_avg(res, 0.2)[0], rtol=1e-13)
    np.testing.assert_allclose(aggregate(u, n, "krum", (2,)),
                               agg.aggregate_krum(res, 2, 0)[0])
    np.testing.assert_allclose(aggregate(u, n, "multikrum", (2, 4)),
                               agg.aggregate_krum(res, 2, 4)[0], rtol=1e-13)


def test_partitions_deal_every_row_once():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, 1000)
    for spec in ("iid", "shards:2", "dirichlet:0.5", "quantity:0.5"):
        parts = partition(spec, y, 50, seed=3)
        assert len(parts) == 50 and all(len(p) for p in parts)
        np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
        assert [list(p) for p in parts] == [list(p) for p in partition(spec, y, 50, seed=3)]
    shards = partition("shards:2", y, 50, seed=3)
    assert max(len(np.unique(y[p])) for p in shards) <= 3  # two label-sorted shards
    assert np.mean([len(np.unique(y[p])) for p in shards]) < 2.5
    iid = partition("iid", y, 50, seed=3)
    assert np.mean([len(np.unique(y[p])) for p in iid]) > 8
    ids = rng.integers(0, 7, 1000)
    nat = partition("natural", y, 0, ids=ids)
    assert len(nat) == 7 and all((ids[p] == ids[p][0]).all() for p in nat)


@pytest.mark.parametrize("kw,msg", [
    (dict(fraction=0.0), "fraction = 0.0: must be in (0, 1]"),
    (dict(fraction=1.5), "fraction = 1.5: must be in (0, 1]"),
    (dict(strategy="fedfoo"), "strategy = 'fedfoo': must be one of"),
    (dict(aggregator="krum:4", clients=20, fraction=0.25), "Krum needs at least F + 3"),
    (dict(partition="shards"), "needs shards:K"),
    (dict(mu=0.1), "mu = 0.1: is FedProx's proximal weight"),
])
def test_bad_settings_are_one_message(tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=re.escape(msg)):
        _cfg(tmp_path, **kw)


@pytest.mark.parametrize("kw,msg", [
    (dict(clients=5000), "clients = 5000: must be between 1 and the 1438 rows"),
    (dict(clients=400, partition="dirichlet:0.01"), "client(s) with no rows"),
])
def test_impossible_partitions_are_refused_on_every_rank(tmp_path, kw, msg):
    cfg = _cfg(tmp_path, **kw)
    errors = []

    def body(comm):
        try:
            job.run(dict(cfg), comm, log=lambda *a: None)
        except ConfigError as e:
            errors.append(str(e))
    run_ranks(2, body)
    assert len(errors) == 2 and all(msg in e for e in errors), errors


def test_fedavg_learns_digits(tmp_path):
    """100 IID clients, C=0.1, E=5, B=10: over 90% test accuracy in 30 rounds."""
    from hpcml import comm as hc
    s = job.run(_cfg(tmp_path, clients=100, fraction=0.1, local_epochs=5, rounds=30,
                     hidden="64", dtype="float32", lr=0.05, target=0.9),
                hc.self_comm(), log=lambda *a: None)
    assert s["test_accuracy"] > 0.9 and s["rounds_to_target"] <= 30, s
    assert s["settings"]["clients"] == 100 and s["settings"]["local_epochs"] == 5  # saved


def test_a_run_stopped_by_an_error_resumes_bit_identical(tmp_path, monkeypatch):
    """2 in-process ranks, a checkpoint every 2 rounds, an exception in round 5: the run
    resumed from round 4 ends with the bytes of the run never stopped, and rounds.jsonl
    holds each round once; a resume with another partition is refused by name."""
    import json
    from hpcml.parallel.federated import simulation
    kw = dict(rounds=6, partition="shards:2", strategy="fedyogi", server_lr=0.01)
    ref = run_ranks(2, lambda c: job.run(_cfg(tmp_path, **kw), c, log=lambda *a: None))[0]
    ref_params = _run(_cfg(tmp_path, **kw), 1)[1]
    ck = dict(checkpoint_dir=str(tmp_path / "ck"), checkpoint_every=2, resume="auto")
    real = simulation.Federation.step

    def step(self):
        if self.round == 4:
            raise RuntimeError("boom in round 5")
        return real(self)
    monkeypatch.setattr(simulation.Federation, "step", step)
    with pytest.raises(RuntimeError, match="boom"):
        run_ranks(2, lambda c: job.run(_cfg(tmp_path, **kw, **ck), c, log=lambda *a: None))
    monkeypatch.setattr(simulation.Federation, "step", real)
    seen = {}

    def body(comm):
        s = job.run(_cfg(tmp_path, **kw, **ck), comm, log=lambda *a: None)
        seen[comm.Get_rank()] = s
    orig = simulation.Federation.evaluate

    def evaluate(self):
        seen.setdefault("params", self.params.copy())  # the final round's model
        seen["params"] = self.params.copy()
        return orig(self)
    monkeypatch.setattr(simulation.Federation, "evaluate", evaluate)
    run_ranks(2, body)
    assert seen[0]["resumed_from"].endswith("step-00000004.h5")
    np.testing.assert_array_equal(seen["params"], ref_params)
    assert seen[0]["test_accuracy"] == ref["test_accuracy"]
    with open(tmp_path / "out" / "rounds.jsonl") as f:
        assert [json.loads(line)["round"] for line in f] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match="different run: partition 'shards:2' there"):
        run_ranks(2, lambda c: job.run(_cfg(tmp_path, **dict(kw, partition="iid"), **ck), c,
                                       log=lambda *a: None))


def _renyi_numeric(q, sigma, alpha):
    """RDP of one Poisson-subsampled Gaussian at order alpha by numerical integration of
    E_{x ~ N(0, s^2)} [((1-q) + q exp((2x - 1) / (2 s^2)))^alpha] (Mironov et al.'s A)."""
    x = np.linspace(-40 * sigma, 40 * sigma + 1, 800001)
    p0 = np.exp(-x * x / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)
    ratio = (1 - q) + q * np.exp((2 * x - 1) / (2 * sigma * sigma))
    a = np.trapezoid(p0 * ratio ** alpha, x)
    return np.log(a) / (alpha - 1)


@pytest.mark.parametrize("q,sigma,alpha", [(0.1, 1.0, 2), (0.05, 0.8, 7), (0.1, 1.0, 2.5),
                                           (0.01, 1.5, 5.3), (0.2, 2.0, 12)])
def test_rdp_matches_numerical_integration(q, sigma, alpha):
    """Both series (integer and fractional orders) against the integral itself."""
    from hpcml.parallel.federated.privacy import rdp
    got = rdp(q, sigma, 1, orders=(alpha,))[0]
    assert abs(got - _renyi_numeric(q, sigma, alpha)) <= 1e-6 * abs(got), got


@pytest.mark.parametrize("q,sigma,steps,delta", [
    (256 / 60000, 1.1, 14062, 1e-5), (0.1, 1.0, 100, 1e-5), (0.01, 0.8, 1000, 1e-6),
    (0.05, 2.0, 500, 1e-5)])
def test_epsilon_matches_dp_accounting(q, sigma, steps, delta):
    """Google's dp-accounting (test-only) on the same Poisson-subsampled Gaussian."""
    pytest.importorskip("dp_accounting")
    from dp_accounting import dp_event
    from dp_accounting.rdp import rdp_privacy_accountant as rdp_acc
    from hpcml.parallel.federated.privacy import epsilon
    acc = rdp_acc.RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    ref = acc.get_epsilon(delta)
    got, _ = epsilon(q, sigma, steps, delta)
    assert abs(got - ref) <= 0.01 * ref, (got, ref)


def test_dp_aggregation_clips_noises_and_adapts():
    """Each update's contribution is clipped to S; the noise's std is z S / (q N); with
    every norm above S, adaptive clipping raises S (b = 0 < the 0.5 quantile)."""
    from hpcml.parallel.federated.privacy import DPAggregator
    rng = np.random.default_rng(0)
    u = rng.standard_normal((5, 200000)) * np.array([[0.001], [10], [10], [10], [10]])
    quiet = DPAggregator(1e-9, 2.0, 5.0)
    out = quiet(u, np.random.default_rng(1)) * 5.0  # the clipped sum
    want = u[0] + sum(r * 2.0 / np.linalg.norm(r) for r in u[1:])
    np.testing.assert_allclose(out, want, atol=1e-6)
    noisy = DPAggregator(1.5, 2.0, 5.0)
    n = noisy(np.zeros((3, 200000)), np.random.default_rng(2))
    assert abs(n.std() / (1.5 * 2.0 / 5.0) - 1) < 0.01
    ad = DPAggregator(1.0, 2.0, 5.0, adaptive=True, quantile=0.5, clip_lr=0.2,
                      count_stddev=1.0)
    ad(u[1:], np.random.default_rng(3))  # b = (0 + N(0, 1)) / 5: S x exp(0.1 +- 0.04)
    assert 2.0 * np.exp(0.02) < ad.clip < 2.0 * np.exp(0.18), ad.clip
    assert ad.update_noise == pytest.approx((1 - 0.25) ** -0.5)  # z_delta of the count
    with pytest.raises(ValueError, match="raise --dp-noise"):
        DPAggregator(1.0, 2.0, 5.0, adaptive=True)  # sigma_b = 5/20: 2 sigma_b < z


def test_dp_fedavg_reports_epsilon_and_is_rank_independent(tmp_path):
    from hpcml.parallel.federated.privacy import epsilon
    cfg = _cfg(tmp_path, dp_noise=1.2, dp_clip=0.5, dp_adaptive=True, rounds=4,
               clients=100, fraction=0.3)
    ref = _run(cfg, 1)
    np.testing.assert_array_equal(_run(cfg, 3)[1], ref[1])
    s = job.run(dict(cfg), __import__("hpcml").comm.self_comm(), log=lambda *a: None)
    assert s["epsilon"] == pytest.approx(epsilon(0.3, 1.2, 4, 1e-5)[0], rel=1e-12)
    with pytest.raises(ConfigError, match="use mean with --dp-noise"):
        _cfg(tmp_path, dp_noise=1.0, aggregator="median")


def _secagg_round(n=6, t=4, size=5000, seed=0):
    from hpcml.parallel.federated import secagg as S
    rng = np.random.default_rng(seed)
    xs = [S.quantize(rng.standard_normal(size) * 3, 24) for _ in range(n)]
    parties = [S.SecAggClient(i, 100 + i, bytes([i + 1]) * 32) for i in range(n)]
    pks = [p.pk for p in parties]
    return S, xs, parties, pks, [p.shares(n, t) for p in parties]


@pytest.mark.parametrize("survivors", [[0, 1, 2, 3, 4, 5], [0, 2, 3, 5], [1, 2, 4, 5],
                                       [5, 4, 3, 2, 1]])
def test_secure_sum_equals_the_plain_fixed_point_sum(survivors):
    """n = 6, t = 4: with 0, 1 or n - t = 2 clients dropped after masking, the unmasked sum
    is the survivors' fixed-point sum, exactly; with 3 left (< t) the round aborts."""
    S, xs, parties, pks, shares = _secagg_round()
    ys = [p.masked(x, pks) for p, x in zip(parties, xs)]
    total = np.zeros(len(xs[0]), np.uint64)
    want = np.zeros(len(xs[0]), np.uint64)
    for i in survivors:
        total += ys[i]
        want += xs[i]
    np.testing.assert_array_equal(S.unmask(total, 6, survivors, pks, shares, 4), want)
    assert not np.array_equal(total, want)  # the masks were there
    with pytest.raises(ValueError, match="3 of 6 clients survived, the threshold is 4"):
        S.unmask(total, 6, [0, 1, 2], pks, shares, 4)


def test_a_masked_vector_is_uniform_and_independent_of_the_data():
    """A client's y_i, with its update all zeros or a large ramp: each is uniform mod 2^64
    (chi-square of the top byte over 256 bins) and the two are alike (chi-square of
    homogeneity), so y_i alone says nothing of x_i."""
    from scipy.stats import chi2_contingency, chisquare
    from hpcml.parallel.federated import secagg as S
    n = 200000
    parties = [S.SecAggClient(i, i, bytes([7 + i]) * 32) for i in range(3)]
    pks = [p.pk for p in parties]
    hists = []
    for x in (np.zeros(n, np.uint64), S.quantize(np.linspace(-50, 50, n), 24)):
        y = parties[1].masked(x, pks)
        h = np.bincount((y >> np.uint64(56)).astype(np.int64), minlength=256)
        assert chisquare(h).pvalue > 1e-3
        hists.append(h)
    assert chi2_contingency(np.array(hists)).pvalue > 1e-3
    plain = np.bincount((S.quantize(np.linspace(-50, 50, n), 24) >> np.uint64(56))
                        .astype(np.int64), minlength=256)
    assert chisquare(plain).pvalue < 1e-10  # the test sees structure when there is some


def masked_size(tmp_path):
    """The model's parameter count under _cfg's settings."""
    from hpcml import comm as hc
    return job.simulate(_cfg(tmp_path), hc.self_comm(), rounds=0).model.size


def test_secagg_fedavg_matches_plain_fedavg_and_is_rank_independent(tmp_path):
    """With clients dropping after masking: the securely aggregated global model equals
    plain FedAvg's up to the fixed-point rounding (2^-24 per coordinate), bit-identical at
    1 and 3 ranks; the round's training loss is summed under the masks too (what a client
    sends: its masked update, rows and loss, 64 bits each)."""
    pytest.importorskip("cryptography")
    kw = dict(dropout_rate=0.3, rounds=3, fraction=0.5)
    ref = _run(_cfg(tmp_path, **kw), 1)[1]
    sec = _run(_cfg(tmp_path, secagg=True, **kw), 1)[1]
    assert 0 < np.abs(sec - ref).max() < 1e-8, np.abs(sec - ref).max()  # measured 4.8e-10
    np.testing.assert_array_equal(_run(_cfg(tmp_path, secagg=True, **kw), 3)[1], sec)
    from hpcml import comm as hc  # the round's training loss, summed under the masks too
    plain = job.simulate(_cfg(tmp_path, **kw), hc.self_comm(), rounds=0).step()
    masked = job.simulate(_cfg(tmp_path, secagg=True, **kw), hc.self_comm(), 0).step()
    assert abs(masked["train_loss"] - plain["train_loss"]) < 1e-6 and not masked["aborted"]
    assert masked["bytes_up"] == plain["reported"] * (masked_size(tmp_path) + 2) * 8
    with pytest.raises(ConfigError, match="secagg-threshold = 11: must be between 1 and "
                                          "the 10 clients of a round"):
        _cfg(tmp_path, secagg=True, secagg_threshold=11, **kw)


def test_fedprox_synthetic_data_and_a_natural_partition(tmp_path):
    """synth --federated 1,1: the last column is the client id, every client has >= 10 rows
    (a power law: the largest far above the median), the rows are a function of the seed;
    a larger beta spreads the clients' feature means; the federated job trains on it with
    --partition natural."""
    import subprocess
    import sys
    from hpcml import comm as hc
    def make(name, fed):
        r = subprocess.run([sys.executable, "-m", "hpcml.data", "synth", str(tmp_path / name),
                            "--federated", fed, "--clients", "20", "--rows", "4000",
                            "--features", "12", "--classes", "5", "--shards", "2",
                            "--test-rows", "500"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return job._read(str(tmp_path / name / "train"), hc.self_comm())[:2]
    x, y = make("a", "1,1")
    x2, y2 = make("b", "1,1")
    np.testing.assert_array_equal(x, x2)
    ids = x[:, -1].astype(int)
    sizes = np.bincount(ids)
    assert len(sizes) == 20 and sizes.min() >= 10 and sizes.sum() == 4000
    assert sizes.max() > 4 * np.median(sizes)
    def between(x):  # variance over the clients of their mean feature (v_k's entries)
        ids = x[:, -1].astype(int)
        return np.var([x[ids == k, :-1].mean() for k in range(20)])
    # beta: v_k's entries ~ N(B_k, 1), B_k ~ N(0, beta): the spread grows with beta
    assert between(make("d", "0,10")[0]) > 3 * between(make("c", "0,0")[0])
    s = job.run(_cfg(tmp_path, data=str(tmp_path / "a"), partition="natural",
                     client_column=12, fraction=0.5, rounds=3, hidden=""),
                hc.self_comm(), log=lambda *a: None)
    assert s["clients"] == 20 and s["partition"]["rows_min"] >= 10 and s["test_accuracy"] > 0


@pytest.mark.skipif(__import__("shutil").which("mpiexec") is None, reason="no mpiexec")
def test_a_killed_rank_ends_the_job_and_the_resumed_run_equals_one_process(tmp_path):
    """mpiexec -n 3, a checkpoint every 2 rounds, SIGKILL of rank 1 once the first is
    written: the job ends (within 30 s); resumed under mpiexec -n 2 it ends with the model
    of an uninterrupted one-process run (sha256 of the global parameters)."""
    import json
    import os
    import shutil
    import signal
    import sys
    import time
    import procs
    from test_param_server import _pids_by_rank
    args = [sys.executable, "-m", "hpcml.federated", "--rounds", "40", "--clients", "50",
            "--fraction", "0.2", "--local-epochs", "3", "--hidden", "64", "--verbose",
            "false", "--plot", "false"]
    r = procs.run(args + ["--output", str(tmp_path / "one")], limit=120)
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout.strip().splitlines()[-1])["params_sha256"]
    ck = ["--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "2",
          "--output", str(tmp_path / "out")]
    mpiexec = shutil.which("mpiexec")
    proc = procs.start([mpiexec, "-n", "3"] + args + ck)
    deadline = time.monotonic() + 60
    while not os.path.exists(tmp_path / "ck" / "latest") and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(_pids_by_rank(proc, 3, deadline)[1], signal.SIGKILL)
    t = time.monotonic()
    rc, _, _ = procs.finish(proc, 60)
    assert rc != 0 and time.monotonic() - t < 30
    r = procs.run([mpiexec, "-n", "2"] + args + ck + ["--resume", "auto"], limit=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["resumed_from"] and s["rounds"] == 40 and s["params_sha256"] == want


def test_regression_data_federates(tmp_path):
    """A regression dataset: the global model's test MSE falls over the rounds; no class
    figures in the partition's description."""
    import json
    from hpcml import comm as hc
    from hpcml import data
    data.synth(str(tmp_path / "reg"), 2000, 6, regression=True, test_rows=400)
    cfg = _cfg(tmp_path, data=str(tmp_path / "reg"), clients=20, fraction=0.5, rounds=8,
               lr=0.02)
    s = job.run(cfg, hc.self_comm(), log=lambda *a: None)
    with open(tmp_path / "out" / "rounds.jsonl") as f:
        losses = [json.loads(line)["test_loss"] for line in f]
    assert "test_accuracy" not in s and "classes_per_client" not in s["partition"]
    assert losses[-1] < 0.5 * losses[0], losses
