"""A trained model that predicts: what `python -m hpcml.train --save-model` writes, and what
every training checkpoint also holds.

    model = hpcml.load_model("model.h5")        # or a checkpoint file, or a checkpoint folder
    labels = model.predict(X)                   # raw features: the standardiser is inside
    proba = model.predict_proba(X)              # classification
    model.score(X, y)                           # accuracy, or R^2 for regression

File format (HDF5, written atomically; nothing pickled):

    attrs  format "hpcml-model", version 1, spec (JSON: features, hidden, outputs, task,
           activation, dtype, classes, dataset identity, training settings, hpcml version)
    params        the flat parameter vector (hpcml.nn layout)
    x_mean, x_inv per-feature mean and 1/std of the training set (absent: no standardising)
    y_mean, y_std regression targets' mean and std (the network predicts (y - mean) / std)

A checkpoint stores the same spec and arrays in its `model` group beside the optimizer
state, so any checkpoint is a usable model.
"""
import json
import os

import h5py
import numpy as np

from hpcml import nn

FORMAT, VERSION = "hpcml-model", 1
_ARRAYS = ("x_mean", "x_inv", "y_mean", "y_std")


class ModelError(ValueError):
    """A model file that cannot be used, or input that does not fit the model; the message
    names the file or the field."""


class Model:
    """An MLP with its input standardiser (and target scaling for regression)."""

    def __init__(self, spec, params, arrays=None):
        self.spec = dict(spec)
        self.task = spec["task"]
        self.features, self.outputs = int(spec["features"]), int(spec["outputs"])
        self.dtype = np.dtype(spec["dtype"])
        self.net = nn.mlp(self.features, [int(h) for h in spec["hidden"]], self.outputs,
                          spec["activation"], dtype=self.dtype)
        params = np.asarray(params)
        if params.shape != self.net.params.shape:
            raise ModelError(f"parameters {params.shape} do not fit the architecture "
                             f"{self.features}-{'-'.join(map(str, spec['hidden']))}-"
                             f"{self.outputs} ({self.net.params.shape})")
        self.net.params[...] = params
        arrays = arrays or {}
        self.arrays = {k: np.asarray(arrays[k]) for k in _ARRAYS if arrays.get(k) is not None}
        self.path = spec.get("path")

    @property
    def classes(self):
        return self.outputs if self.task == "classification" else None

    def __repr__(self):
        arch = "-".join(map(str, [self.features, *self.spec["hidden"], self.outputs]))
        return f"Model({self.task}, {arch}, {self.spec['activation']}, {self.dtype.name})"

    # --- prediction ----------------------------------------------------------------------
    def _check(self, X):
        X = np.asarray(X)
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[1] != self.features:
            raise ModelError(f"X has shape {X.shape}; this model takes rows of "
                             f"{self.features} features")
        if X.size and not np.isfinite(X).all():
            row = int(np.argmax(~np.isfinite(X).all(axis=1)))
            raise ModelError(f"X row {row} holds NaN or Inf")
        return X

    def decision_function(self, X, batch_rows=65536):
        """The network's raw outputs (rows x outputs; regression: standardised units)."""
        X = self._check(X)
        out = np.empty((len(X), self.outputs), self.dtype)
        mean, inv = self.arrays.get("x_mean"), self.arrays.get("x_inv")
        for lo in range(0, len(X), batch_rows):
            x = np.ascontiguousarray(X[lo:lo + batch_rows], self.dtype)
            if mean is not None:
                x = (x - mean) * inv
            out[lo:lo + len(x)] = self.net.forward(np.ascontiguousarray(x, self.dtype),
                                                   train=False)
        return out

    def predict(self, X):
        """Class labels (int64), or regression values in the targets' units (float64)."""
        out = self.decision_function(X)
        if self.task == "classification":
            return out.argmax(axis=1).astype(np.int64)
        return self._unscale(out[:, 0])

    def _unscale(self, z):
        y = z.astype(np.float64)
        if "y_std" in self.arrays:
            y = y * float(self.arrays["y_std"]) + float(self.arrays["y_mean"])
        return y

    def predict_proba(self, X):
        if self.task != "classification":
            raise ModelError("predict_proba: this is a regression model")
        z = self.decision_function(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(axis=1, keepdims=True)

    def score(self, X, y):
        """Accuracy (classification) or the coefficient of determination R^2."""
        y = np.asarray(y)
        p = self.predict(X)
        if len(y) != len(p):
            raise ModelError(f"y has {len(y)} rows, X {len(p)}")
        if self.task == "classification":
            return float((p == y).mean())
        y = y.astype(np.float64)
        sst = float(((y - y.mean()) ** 2).sum())
        return 1.0 - float(((y - p) ** 2).sum()) / sst if sst > 0 else float("nan")

    # --- files ---------------------------------------------------------------------------
    def save(self, path):
        """Write the model file atomically (rank 0's job under MPI)."""
        from hpcml.atomic import atomic_h5
        with atomic_h5(path) as f:
            write_group(f, self.spec, self.net.params, self.arrays)
        return path


def write_group(g, spec, params, arrays):
    """The model's spec and arrays into an open HDF5 file or group."""
    import hpcml
    spec = {k: v for k, v in spec.items() if k != "path"}
    spec.setdefault("hpcml_version", hpcml.__version__)
    g.attrs["format"], g.attrs["version"] = FORMAT, VERSION
    g.attrs["spec"] = json.dumps(spec)
    if isinstance(params, h5py.Dataset):  # a checkpoint's own params: a hard link, not a copy
        g["params"] = params
    else:
        g.create_dataset("params", data=params, fletcher32=bool(params.size))
    for k in _ARRAYS:
        if arrays.get(k) is not None:
            g.create_dataset(k, data=np.asarray(arrays[k]))


def _read_group(g, path):
    if g.attrs.get("format") != FORMAT:
        raise ModelError(f"{path}: not an hpcml model")
    if int(g.attrs["version"]) != VERSION:
        raise ModelError(f"{path}: model version {g.attrs['version']}, this hpcml reads "
                         f"{VERSION}")
    spec = json.loads(g.attrs["spec"])
    spec["path"] = path
    for key in ("features", "hidden", "outputs", "task", "activation", "dtype"):
        if key not in spec:
            raise ModelError(f"{path}: the model's spec has no {key!r}")
    return Model(spec, g["params"][()], {k: g[k][()] for k in _ARRAYS if k in g})


def load_model(path):
    """The Model in a file `--save-model` wrote, in a checkpoint file, or in the newest
    readable checkpoint of a checkpoint folder. Raises ModelError naming the file."""
    from hpcml import checkpoint as ckpt
    if os.path.isdir(path):
        try:
            ck = ckpt.find_latest(path)
        except ckpt.CheckpointError as e:
            raise ModelError(str(e)) from None
        if ck is None:
            raise ModelError(f"{path}: a folder without checkpoints (step-*.h5)")
        path = ck["path"]
    if not os.path.exists(path):
        raise ModelError(f"{path}: not found")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") == ckpt.FORMAT:
                if "model" not in f:
                    raise ModelError(f"{path}: a checkpoint written before checkpoints held "
                                     "the model's description; train again (or resume) to "
                                     "write one that does")
                return _read_group(f["model"], path)
            return _read_group(f, path)
    except ModelError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: unreadable model ({type(e).__name__}: {e})") from None


# --- metrics from sums (so ranks add them up) ------------------------------------------
def classification_sums(model, x, y):
    """(confusion matrix C x C as float64, sum of log loss) of rows x, y."""
    z = model.decision_function(x).astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    C = model.outputs
    yy = np.asarray(y, np.int64)
    conf = np.bincount(yy * C + z.argmax(axis=1), minlength=C * C).astype(np.float64)
    return conf, float(-logp[np.arange(len(yy)), yy].sum()), z.argmax(axis=1)


def classification_metrics(conf, logloss):
    C = int(round(np.sqrt(conf.size)))
    m = conf.reshape(C, C)
    n = m.sum()
    tp = np.diag(m)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall),
                      0.0)
    present = support > 0
    return {"rows": int(n), "accuracy": float(tp.sum() / n) if n else float("nan"),
            "log_loss": logloss / n if n else float("nan"),
            "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "per_class": [{"class": c, "precision": float(precision[c]),
                           "recall": float(recall[c]), "f1": float(f1[c]),
                           "support": int(support[c])} for c in range(C)],
            "confusion": m.astype(np.int64).tolist()}


def regression_sums(model, x, y):
    """[rows, sum e^2, sum |e|, sum y, sum y^2] of rows x, y, and the predictions."""
    p = model.predict(x)
    y = np.asarray(y, np.float64)
    e = y - p
    return np.array([len(y), (e * e).sum(), np.abs(e).sum(), y.sum(), (y * y).sum()]), p


def regression_metrics(s):
    n, sse, sae, sy, syy = (float(v) for v in s)
    sst = syy - sy * sy / n if n else 0.0
    return {"rows": int(n), "rmse": float(np.sqrt(sse / n)) if n else float("nan"),
            "mae": sae / n if n else float("nan"),
            "r2": 1.0 - sse / sst if sst > 0 else float("nan")}
