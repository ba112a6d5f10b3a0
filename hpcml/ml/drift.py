"""Drift detectors for streams: ADWIN, Page-Hinkley and DDM (river's contracts and
defaults), each compiled (kernels/cpu/drift.py) and fed a value at a time or a whole
block of the stream at once.

    from hpcml.ml.drift import ADWIN
    det = ADWIN()
    det.update(0.3); det.drift_detected          # one value (river's interface)
    where = det.update_many(errors)              # a block: positions of the drifts in it

After a drift a detector starts afresh from the next value, as river's do. update_many
continues the state of earlier calls, so a stream cut into blocks gives the drifts of the
whole stream.
"""
import math

import numpy as np

from .base import Estimator, check_choice, check_int, check_real


class _Detector(Estimator):
    def __init__(self):
        self._reset()

    def _reset(self):
        self.drift_detected = False
        self.n_detections = 0
        self._state()

    def update(self, x):
        """One value; returns self (drift_detected tells). A call per value costs the
        compiled kernel's dispatch (about a microsecond): feed blocks to update_many for
        throughput."""
        x = float(x)
        if not math.isfinite(x):
            raise ValueError(f"{type(self).__name__}: the value is NaN or Inf")
        one = getattr(self, "_one", None)
        if one is None:
            one = self._one = (np.empty(1), np.empty(1, np.int64))
        one[0][0] = x
        found = self._run(one[0], one[1])
        self.n_detections += found
        self.drift_detected = bool(found)
        return self

    def update_many(self, xs):
        """A block of values; returns the positions in it where a drift was signalled
        (drift_detected: whether the block's last value signalled one)."""
        xs = np.ascontiguousarray(xs, np.float64).ravel()
        if not np.isfinite(xs).all():
            bad = int(np.argmin(np.isfinite(xs)))
            raise ValueError(f"{type(self).__name__}: value {bad} of the block is NaN or Inf")
        out = np.empty(len(xs), np.int64)
        found = self._run(xs, out)
        self.n_detections += found
        self.drift_detected = bool(found) and out[found - 1] == len(xs) - 1
        return out[:found].copy()

    def reset(self):
        self._reset()
        return self


class ADWIN(_Detector):
    """Adaptive windowing (river.drift.ADWIN's parameters and defaults)."""

    def __init__(self, delta=0.002, clock=32, max_buckets=5, min_window_length=5,
                 grace_period=10):
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._check_params()
        super().__init__()

    def _check_params(self):
        check_real("delta", self.delta, 0.0, strict=True)
        for name in ("clock", "max_buckets", "min_window_length"):
            check_int(name, getattr(self, name), 1)
        check_int("grace_period", self.grace_period, 0)

    def _state(self):
        from hpcml.kernels.cpu.drift import CHUNK, ROWS
        self._tot = np.zeros((ROWS, self.max_buckets + 1 + CHUNK))
        self._cnt = np.zeros(ROWS, np.int64)
        self._s = np.zeros(5)
        self._s[4] = 1.0

    def _run(self, xs, out):
        from hpcml.kernels.cpu.drift import adwin_run
        return adwin_run(xs, self._tot, self._cnt, self._s,
                         float(self.delta),
                         int(self.clock), int(self.max_buckets),
                         float(self.min_window_length), float(self.grace_period), out)

    @property
    def width(self):
        return int(self._s[0])

    @property
    def estimation(self):
        return float(self._s[1] / self._s[0]) if self._s[0] else 0.0


class PageHinkley(_Detector):
    """The Page-Hinkley test (river.drift.PageHinkley's parameters and defaults)."""

    def __init__(self, min_instances=30, delta=0.005, threshold=50.0, alpha=1 - 0.0001,
                 mode="both"):
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._check_params()
        super().__init__()

    def _check_params(self):
        check_int("min_instances", self.min_instances, 1)
        check_real("delta", self.delta, 0.0)
        check_real("threshold", self.threshold, 0.0, strict=True)
        check_real("alpha", self.alpha, 0.0, strict=True)
        check_choice("mode", self.mode, ("both", "up", "down"))

    def _state(self):
        self._s = np.array([0.0, 0.0, 0.0, 0.0, np.inf, -np.inf])

    def _run(self, xs, out):
        from hpcml.kernels.cpu.drift import page_hinkley_run
        return page_hinkley_run(xs, self._s, float(self.min_instances), float(self.delta),
                                float(self.threshold), float(self.alpha),
                                ("both", "up", "down").index(self.mode), out)


class DDM(_Detector):
    """The drift detection method of Gama et al. on a 0/1 error stream (river's
    drift.binary.DDM parameters and defaults); warning_detected, and the warnings'
    positions from update_many in last_warnings_."""

    def __init__(self, warm_start=30, warning_threshold=2.0, drift_threshold=3.0):
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._check_params()
        super().__init__()

    def _check_params(self):
        check_int("warm_start", self.warm_start, 0)
        check_real("warning_threshold", self.warning_threshold, 0.0, strict=True)
        check_real("drift_threshold", self.drift_threshold, 0.0, strict=True)

    def _state(self):
        self._s = np.array([0.0, 0.0, 0.0, 0.0, np.inf, 0.0])
        self.warning_detected = False

    def _run(self, xs, out):
        from hpcml.kernels.cpu.drift import ddm_run
        if np.any((xs != 0) & (xs != 1)):
            raise ValueError("DDM: the values must be 0 (right) or 1 (error)")
        warns = np.empty(len(xs), np.int64)
        found, nw = ddm_run(xs, self._s, float(self.warm_start),
                            float(self.warning_threshold), float(self.drift_threshold), out,
                            warns)
        self.last_warnings_ = warns[:nw].copy()
        self.warning_detected = bool(self._s[5])
        return found
