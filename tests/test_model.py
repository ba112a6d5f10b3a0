"""A trained model that predicts (issue 15, items 11 and 12): --save-model, checkpoints as
models, hpcml.load_model, python -m hpcml.predict / evaluate (1 and 2 ranks), regression
training, --init-from. Oracles: the accuracy `train` printed, a NumPy forward pass of the
saved weights, and scikit-learn's metrics."""
import json
import shutil
import sys

import h5py
import numpy as np
import pytest

import hpcml
from hpcml import train
from hpcml.data import ShardedDataset, synth
from hpcml.model import ModelError
from procs import run

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")


def _cfg(**kw):
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update({"progress": False, "epochs": 4, **kw})
    return train.validate(cfg)


def _arrays(name):
    xs, ys = [], []
    for x, y in ShardedDataset(name).loader(100000, shuffle=False):
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _summary(out):
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    summary, _ = train.run(_cfg(save_model=str(d / "m.h5"), checkpoint_dir=str(d / "ck")),
                           log=lambda *a: None)
    return d, summary


def test_saved_model_reproduces_the_test_accuracy_train_printed(digits_model):
    d, summary = digits_model
    X, y = _arrays("digits:test")
    for source in (d / "m.h5", d / "ck", summary["outputs"]["last_checkpoint"]):
        model = hpcml.load_model(str(source))
        assert model.score(X, y) == summary["test_accuracy"], source
    # the oracle: the same MLP written out in NumPy from the file's arrays
    with h5py.File(d / "m.h5") as f:
        p, mean, inv = f["params"][()].astype(np.float64), f["x_mean"][()], f["x_inv"][()]
    h, i = (X.astype(np.float64) - mean) * inv, 0
    for n_in, n_out, act in ((64, 256, True), (256, 128, True), (128, 10, False)):
        W = p[i:i + n_in * n_out].reshape(n_in, n_out)  # hpcml.nn: y = x @ W + b
        b = p[i + n_in * n_out:i + n_in * n_out + n_out]
        i += n_in * n_out + n_out
        h = h @ W + b
        h = np.maximum(h, 0) if act else h
    assert i == p.size
    agree = (h.argmax(axis=1) == model.predict(X)).mean()
    assert agree >= 0.997, agree  # float32 vs float64 ties may flip a row or so
    proba = model.predict_proba(X)
    assert np.allclose(proba.sum(axis=1), 1) and (proba.argmax(axis=1) == model.predict(X)).all()


def test_predict_and_evaluate_cli_match_train_and_sklearn(digits_model, tmp_path):
    from sklearn import metrics as skm
    d, summary = digits_model
    r = run([sys.executable, "-m", "hpcml.predict", str(d / "m.h5"), "digits:test",
             "--output", str(tmp_path / "p.h5"), "--probabilities", "true"], limit=120)
    assert r.returncode == 0, r.stderr
    s = _summary(r.stdout)
    assert s["accuracy"] == summary["test_accuracy"] and s["job"] == "predict", s
    X, y = _arrays("digits:test")
    with h5py.File(tmp_path / "p.h5") as f:
        pred, proba = f["prediction"][()], f["probability"][()]
    assert (pred == hpcml.load_model(str(d / "m.h5")).predict(X)).all()
    r = run([sys.executable, "-m", "hpcml.evaluate", str(d / "ck"), "digits:test"], limit=120)
    assert r.returncode == 0, r.stderr
    e = _summary(r.stdout)
    assert e["accuracy"] == summary["test_accuracy"]
    assert e["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=range(10)), rel=1e-6)
    assert e["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), rel=1e-12)
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y, pred, zero_division=0)
    got = e["per_class"]
    assert np.allclose([c["precision"] for c in got], prec, rtol=1e-12)
    assert np.allclose([c["recall"] for c in got], rec, rtol=1e-12)
    assert [c["support"] for c in got] == list(sup)
    assert e["confusion"] == skm.confusion_matrix(y, pred).tolist()
    assert "precision" in r.stdout.splitlines()[0]  # the human report comes first


@needs_mpi
def test_predict_under_mpiexec_equals_one_process(digits_model, tmp_path):
    d, summary = digits_model
    outs = []
    for n in (1, 2):
        r = run([MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcml.predict", str(d / "m.h5"),
                 "digits:test", "--output", str(tmp_path / f"p{n}.h5")], limit=120)
        assert r.returncode == 0, r.stderr
        assert _summary(r.stdout)["accuracy"] == summary["test_accuracy"]
        with h5py.File(tmp_path / f"p{n}.h5") as f:
            outs.append(f["prediction"][()])
    assert outs[0].shape == (359,) and (outs[0] == outs[1]).all()


def test_bad_model_and_mismatched_data_are_named(digits_model, tmp_path):
    d, _ = digits_model
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="x.h5: unreadable model"):
        hpcml.load_model(str(tmp_path / "x.h5"))
    with pytest.raises(ModelError, match="rows of 64 features"):
        hpcml.load_model(str(d / "m.h5")).predict(np.zeros((3, 5)))
    synth(str(tmp_path / "other"), rows=50, features=8, classes=3)
    r = run([sys.executable, "-m", "hpcml.predict", str(d / "m.h5"), str(tmp_path / "other")],
            limit=60)
    assert r.returncode == 1 and "8 features; the model" in r.stderr and \
        "Traceback" not in r.stderr, r.stderr


def test_regression_training_reaches_r2_and_predict_agrees(tmp_path):
    from sklearn.metrics import mean_squared_error, r2_score
    synth(str(tmp_path / "reg"), rows=8000, features=12, regression=True, seed=3,
          test_rows=2000)  # reg/train and reg/test, one distribution
    summary, _ = train.run(_cfg(data=str(tmp_path / "reg"), save_model=str(tmp_path / "r.h5"),
                                epochs=4), log=lambda *a: None)
    assert summary["task"] == "regression" and summary["test_r2"] >= 0.9, summary
    X, y = _arrays(str(tmp_path / "reg" / "test"))
    model = hpcml.load_model(str(tmp_path / "r.h5"))
    p = model.predict(X)
    assert summary["test_r2"] == pytest.approx(r2_score(y, p), abs=1e-6)
    assert summary["test_rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, p)), rel=1e-5)
    assert model.score(X, y) == pytest.approx(r2_score(y, p), rel=1e-12)
    r = run([sys.executable, "-m", "hpcml.evaluate", str(tmp_path / "r.h5"),
             str(tmp_path / "reg" / "test")], limit=60)
    e = _summary(r.stdout)
    assert e["r2"] == pytest.approx(r2_score(y, p), rel=1e-9)
    assert e["mae"] == pytest.approx(np.abs(y - p).mean(), rel=1e-9)


def test_init_from_loads_weights_only_and_checks_the_architecture(digits_model, tmp_path):
    d, summary = digits_model
    tuned, _ = train.run(_cfg(init_from=str(d / "m.h5"), epochs=1, lr=1e-9, warmup=0),
                         log=lambda *a: None)
    # a negligible learning rate: one epoch from the saved weights keeps their accuracy
    # (a run that ignored --init-from would be near 10% after one epoch at lr 1e-9)
    assert tuned["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=0.01)
    assert tuned["step"] == 23  # the step count starts fresh
    from hpcml.comm.guard import CollectiveError
    with pytest.raises(CollectiveError, match=r"--init-from .*hidden \[256, 128\]; this run "
                                              r"has hidden \[64\]"):
        train.run(_cfg(init_from=str(d / "m.h5"), hidden="64"), log=lambda *a: None)
