"""Search spaces: float (optionally log-scaled), int (optionally log), categorical, with
conditional parameters, read from TOML or built from dicts.

    [params.lr]
    type = "float"          # float | int | categorical
    low = 1e-4
    high = 0.5
    log = true
    [params.optimizer]
    type = "categorical"
    choices = ["sgd", "adam"]
    [params.momentum]
    type = "float"
    low = 0.0
    high = 0.99
    when = { optimizer = "sgd" }   # only sampled (and passed) when optimizer is "sgd"

Every sampler works in the unit cube: `to_unit` / `from_unit` map a parameter's value to
[0, 1] and back (log parameters uniformly in log space, ints rounded, a categorical's
choices as equal slices). A trial's parameters are a dict of the active parameters only.
"""
import math

import numpy as np


class SpaceError(ValueError):
    """An invalid search space, named by parameter."""


class Param:
    __slots__ = ("name", "kind", "low", "high", "log", "choices", "when")

    def __init__(self, name, kind, low=None, high=None, log=False, choices=None, when=None):
        self.name, self.kind, self.log = name, kind, bool(log)
        self.low, self.high, self.choices = low, high, choices
        self.when = dict(when or {})
        self._check()

    def _check(self):
        n = f"parameter {self.name!r}"
        if self.kind not in ("float", "int", "categorical"):
            raise SpaceError(f"{n}: type must be float, int or categorical, not {self.kind!r}")
        if self.kind == "categorical":
            if not isinstance(self.choices, (list, tuple)) or not self.choices:
                raise SpaceError(f"{n}: categorical needs a non-empty list of choices")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise SpaceError(f"{n}: choices repeat")
            return
        for k in ("low", "high"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise SpaceError(f"{n}: {k} must be a finite number, not {v!r}")
        if self.kind == "int" and (int(self.low) != self.low or int(self.high) != self.high):
            raise SpaceError(f"{n}: an int parameter needs integer bounds")
        if not self.low < self.high:
            raise SpaceError(f"{n}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise SpaceError(f"{n}: log scale needs low > 0, not {self.low}")

    def to_unit(self, v):
        if self.kind == "categorical":
            return (self.choices.index(v) + 0.5) / len(self.choices)
        lo, hi, x = self.low, self.high, float(v)
        if self.kind == "int":  # each integer owns an equal slice
            lo, hi = lo - 0.5, hi + 0.5
        if self.log:
            lo, hi, x = math.log(max(lo, 1e-300)), math.log(hi), math.log(max(x, 1e-300))
        return min(1.0, max(0.0, (x - lo) / (hi - lo)))

    def from_unit(self, u):
        u = min(max(float(u), 0.0), 1.0)
        if self.kind == "categorical":
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        lo, hi = self.low, self.high
        if self.kind == "int":
            lo, hi = lo - 0.5, hi + 0.5
        if self.log:
            x = math.exp(math.log(max(lo, 1e-300)) + u * (math.log(hi) - math.log(max(lo, 1e-300))))
        else:
            x = lo + u * (hi - lo)
        if self.kind == "int":
            return int(min(max(round(x), self.low), self.high))
        return float(min(max(x, self.low), self.high))

    def grid(self, points):
        """Up to `points` values spread over the range (every choice / integer if fewer)."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and self.high - self.low + 1 <= points:
            return list(range(int(self.low), int(self.high) + 1))
        vals = [self.from_unit(u) for u in np.linspace(0, 1, points)]
        return list(dict.fromkeys(vals))

    def describe(self):
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices), "when": self.when}
        return {"type": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "when": self.when}


class Space:
    """Ordered parameters; a parameter with `when` is active only when every named parent
    has the given value (or one of a list of values)."""

    def __init__(self, params):
        self.params = list(params)
        names = [p.name for p in self.params]
        if not names:
            raise SpaceError("the search space has no parameters")
        if len(set(names)) != len(names):
            raise SpaceError("a parameter name repeats")
        seen = set()
        for p in self.params:  # a condition names an earlier parameter (no cycles)
            for parent in p.when:
                if parent not in seen:
                    raise SpaceError(f"parameter {p.name!r}: its condition names "
                                     f"{parent!r}, which is not a parameter defined before it")
            seen.add(p.name)

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or not d:
            raise SpaceError("the search space must be a table of parameters")
        out = []
        for name, spec in d.items():
            if not isinstance(spec, dict):
                raise SpaceError(f"parameter {name!r}: must be a table (type, low, high, ...)")
            unknown = set(spec) - {"type", "low", "high", "log", "choices", "when"}
            if unknown:
                raise SpaceError(f"parameter {name!r}: unknown key(s) {sorted(unknown)}")
            out.append(Param(name, spec.get("type", "float"), spec.get("low"),
                             spec.get("high"), spec.get("log", False), spec.get("choices"),
                             spec.get("when")))
        return cls(out)

    @classmethod
    def from_toml(cls, path):
        import tomllib
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise SpaceError(f"{path}: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise SpaceError(f"{path}: not valid TOML: {e}") from None
        if "params" not in doc:
            raise SpaceError(f"{path}: no [params] table")
        return cls.from_dict(doc["params"])

    def active(self, p, values):
        for parent, want in p.when.items():
            have = values.get(parent)
            if have is None or (have not in want if isinstance(want, list) else have != want):
                return False
        return True

    def decode(self, unit):
        """The parameters (active ones only) of a point of the unit cube (len = params)."""
        values = {}
        for p, u in zip(self.params, unit):
            if self.active(p, values):
                values[p.name] = p.from_unit(u)
        return values

    def encode(self, values):
        """The unit-cube point of a trial's parameters (inactive ones: NaN)."""
        return np.array([p.to_unit(values[p.name]) if p.name in values else np.nan
                         for p in self.params])

    def describe(self):
        return {p.name: p.describe() for p in self.params}
