"""Checkpoints of a federated run (hpcml.checkpoint's atomic files): the round, the global
model (float64), the server optimizer's state and the evaluated rounds so far. Sampling,
dropout and every client's shuffling derive from (seed, round, client), so the round is
the whole random state: a resumed run continues with the bytes of the run never stopped.
"""
from hpcml import checkpoint as ckpt
from hpcml.config import ConfigError

#: settings a resumed run may change (the others define the run)
FREE = {"rounds", "output", "plot", "verbose", "eval_every", "target", "checkpoint_dir",
        "checkpoint_every", "resume", "keep"}


def identity(cfg):
    return {k: v for k, v in cfg.items() if k not in FREE and k != "hidden_sizes"}


def save(cfg, fed, rows):
    """Rank 0: the checkpoint of the round just finished."""
    state = fed.state_dict()
    params = state.pop("params")
    scalars = {"round": state.pop("round"), "bytes_up": state.pop("bytes_up"),
               "bytes_down": state.pop("bytes_down"), "rows": rows}
    ckpt.save(cfg["checkpoint_dir"], scalars["round"], params, state, scalars,
              identity(cfg), keep=cfg["keep"])


def find(cfg):
    """The checkpoint --resume names (None for a fresh start), checked against cfg."""
    if not cfg["resume"]:
        return None
    try:
        ck = ckpt.find_latest(cfg["checkpoint_dir"]) if cfg["resume"] == "auto" else \
            ckpt.load(cfg["resume"])
    except ckpt.CheckpointError as e:
        raise ConfigError(f"resume: {e}") from None
    if ck is None:
        return None
    mine, theirs = identity(cfg), ck["config"]
    differ = sorted(k for k in set(mine) | set(theirs) if str(mine.get(k)) !=
                    str(theirs.get(k)))
    if differ:
        raise ConfigError(f"resume: {ck['path']} is a different run: " + ", ".join(
            f"{k.replace('_', '-')} {theirs.get(k)!r} there, {mine.get(k)!r} here"
            for k in differ))
    if ck["state"]["round"] > cfg["rounds"]:
        raise ConfigError(f"resume: {ck['path']} is at round {ck['state']['round']}, past "
                          f"--rounds {cfg['rounds']}")
    return ck


def restore(fed, ck):
    """The federation's state from a checkpoint; returns the evaluated rounds so far."""
    s = ck["state"]
    fed.load_state_dict(dict(round=s["round"], params=ck["params"], bytes_up=s["bytes_up"],
                             bytes_down=s["bytes_down"], **ck["optim"]))
    return s["rows"]
