"""Settings for every `python -m hpcml.<job>`: defaults, then a TOML file (--config), then
--key value flags, each typed and named in its error; and the agreed start of a job.

A job declares SETTINGS = {name: (default, type, help)} and calls `parse(...)`; a bad value
raises ConfigError naming the flag or file and key (`lr = -1.0: must be > 0`).
`start(comm, parse_fn, argv)` parses on every rank and agrees: one message, exit 2.
"""
import argparse
import difflib
import sys

from hpcml.comm.guard import agree, same_everywhere, CollectiveError


class ConfigError(ValueError):
    pass


def to_bool(v):
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def coerce(settings, key, value, source):
    default, typ, _ = settings[key]
    try:
        if typ is bool:
            return to_bool(value)
        if typ is str and isinstance(value, list):  # TOML: hidden = [256, 128]
            if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
                raise ValueError("a list of numbers or words")
            return ",".join(str(v) for v in value)
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
        if typ is int and isinstance(value, bool):
            raise ValueError("not an integer")
        return typ(value)
    except (TypeError, ValueError) as e:
        where = source if source.startswith("--" + key.replace("_", "-")) else \
            f"{source}: {key}"
        raise ConfigError(f"{where} = {value!r}: expected {typ.__name__} ({e})") from None


class _Parser(argparse.ArgumentParser):
    """No abbreviations (`--epoch` is not `--epochs`), and a usage error is a ConfigError
    (one message from rank 0 under mpiexec, not the usage once per rank), with the closest
    existing flag suggested."""

    def __init__(self, **kw):
        super().__init__(allow_abbrev=False, **kw)

    def error(self, message):
        actions = list(self._actions)
        for a in self._actions:  # sub-commands' flags too (python -m hpcml.data synth ...)
            for sub in (getattr(a, "choices", None) or {}).values() \
                    if isinstance(a, argparse._SubParsersAction) else ():
                actions += sub._actions
        flags = sorted({o for a in actions for o in a.option_strings if o.startswith("--")})
        hints = []
        if "unrecognized arguments" in message:
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1) \
                    if word.startswith("-") else []
                hints += [f"did you mean {close[0]}?" for _ in close[:1]]
        raise ConfigError(f"{self.prog}: {message}" + (f" ({'; '.join(hints)})" if hints else "")
                          + "; see --help")


def parse(prog, doc, settings, argv=None, positional=()):
    """The resolved settings dict: defaults < TOML (--config) < flags. `positional` names
    settings that are also accepted as optional positional arguments (e.g. DATA)."""
    ap = _Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key in positional:
        ap.add_argument("_pos_" + key, nargs="?", default=None, metavar=key.upper(),
                        help=f"same as --{key.replace('_', '-')}")
    import hpcml
    ap.add_argument("--version", action="version", version=f"hpcml {hpcml.__version__}")
    ap.add_argument("--config", help="TOML file of settings (flags override it)")
    for key, (default, typ, text) in settings.items():
        ap.add_argument("--" + key.replace("_", "-"), dest=key, default=None,
                        help=f"{text} [default: {default!r}]")
    args = ap.parse_args(argv)
    cfg = {k: v[0] for k, v in settings.items()}
    if args.config:
        import tomllib
        try:
            with open(args.config, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"--config {args.config}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {args.config}: not valid TOML ({e})") from None
        for k, v in doc.items():
            key = k.replace("-", "_")
            if key not in settings:
                raise ConfigError(f"--config {args.config}: unknown setting {k!r} (see --help)")
            cfg[key] = coerce(settings, key, v, f"--config {args.config}")
    for key in positional:
        v = getattr(args, "_pos_" + key)
        if v is not None:
            cfg[key] = coerce(settings, key, v, "--" + key.replace("_", "-"))
    for key in settings:
        v = getattr(args, key)
        if v is not None:
            cfg[key] = coerce(settings, key, v, "--" + key.replace("_", "-"))
    if "seed" in settings and cfg["seed"] < 0:  # NumPy's generators take seeds >= 0
        bad(cfg, "seed", "must be >= 0")
    return cfg


def validate_shared(cfg):
    """The settings several jobs share, checked once: log_every (seconds >= 0) and
    max_memory ('auto', 'off' or GiB per rank), where the job has them."""
    if "log_every" in cfg and not 0 <= cfg["log_every"] < float("inf"):
        bad(cfg, "log_every", "must be a number of seconds >= 0")
    if "max_memory" in cfg:
        from hpcml.memory import parse_setting
        try:
            parse_setting(cfg["max_memory"])
        except ValueError as e:
            bad(cfg, "max_memory", str(e))


def hidden_sizes(cfg):
    """cfg["hidden"] ('512,256', '' for none) as cfg["hidden_sizes"], or one ConfigError."""
    try:
        cfg["hidden_sizes"] = [int(h) for h in cfg["hidden"].split(",") if h.strip()]
    except ValueError:
        bad(cfg, "hidden", "must be comma-separated integers, e.g. 512,256")
    if any(h < 1 for h in cfg["hidden_sizes"]):
        bad(cfg, "hidden", "widths must be >= 1")
    return cfg["hidden_sizes"]


def bad(cfg, key, why):
    raise ConfigError(f"{key.replace('_', '-')} = {cfg[key]!r}: {why}")


def start(comm, parse_fn, argv=None):
    """Parse the settings on every rank and agree. Returns the config dict, or None after
    rank 0 printed the one error message (the caller then exits 2)."""
    try:
        cfg, error = parse_fn(argv), None
    except ConfigError as e:
        cfg, error = None, str(e)
    try:
        agree(comm, error, what="reading the settings")
        if comm.Get_size() > 1:  # ranks given different flags or --config files
            # one all-reduce when they agree (the usual case); key by key only to name them
            differ = [] if same_everywhere(comm, cfg) else [
                k for k in sorted(cfg) if not same_everywhere(comm, {k: cfg[k]})]
            if differ:
                raise CollectiveError("settings differ across ranks: " + ", ".join(
                    k.replace("_", "-") for k in differ) + " (every rank must get the same "
                    "flags and --config file)")
    except CollectiveError as e:
        if comm.Get_rank() == 0:
            print(f"error: {error or e}", file=sys.stderr)
        return None
    return cfg


def run_job(comm, parse_fn, run_fn, argv=None, failures=(), show_settings=None):
    """The body of every job's main(): settings parsed and agreed (a bad one: exit 2, one
    message from rank 0); `run_fn(cfg, comm)` returns the summary dict, printed by rank 0
    as one JSON line (exit 0). A ConfigError raised during the run (a setting that does
    not fit the data, the same on every rank) exits 2; an exception of `failures` (agreed
    on by every rank) exits 1 with its message from rank 0. show_settings(cfg): the
    settings to print on rank 0 before the run, or None."""
    import json
    cfg = start(comm, parse_fn, argv)
    if cfg is None:
        return 2
    rank = comm.Get_rank()
    shown = show_settings(cfg) if show_settings is not None else None
    if rank == 0 and shown is not None:
        print("# settings: " + json.dumps(shown), flush=True)
    try:
        summary = run_fn(cfg, comm)
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except tuple(failures) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 1
    if rank == 0:
        print(json.dumps(summary), flush=True)
    # Ctrl-C: the shell's convention (128 + SIGINT), from every rank that saw it
    return 130 if summary.get("status") == "interrupted" else 0


def on_rank0(comm, fn, what):
    """Run fn() on rank 0 only (writing result files) and agree on its outcome: an error
    there (a bad output folder, a full disk, a plot that cannot be drawn) is raised as the
    same CollectiveError on every rank, so no rank waits for rank 0 forever."""
    error = None
    if comm.Get_rank() == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported on every rank, not swallowed
            error = f"{type(e).__name__}: {e}"
    agree(comm, error, what=what)
