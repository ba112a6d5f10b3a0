"""`python -m hpcml.train --pp P --tp T [--dp D]`: the layout checks and the strategy.

World rank w = (d P + p) T + t is tensor-parallel rank t of pipeline stage p of
data-parallel replica d (hpcml.parallel.model_parallel). Each replica streams its slice of
every global batch (the loader over the replica's data-parallel group); its P pipeline
ranks run the schedule over that slice as M micro-batches; each stage's gradients are
summed over the D replicas of that stage, and every rank steps the optimizer of its own
stages. The loss is normalised by the global batch, so D x P x T ranks follow one process
at the same global batch. The rest of the run (the Trainer: accumulation, clipping,
checkpoints in the serial layout, metrics, traces, stops) is train.run's.
"""
from hpcml import comm as hc
from hpcml.config import ConfigError
from hpcml.parallel.model_parallel import ModelParallel, ranks_of


def validate(cfg, bad):
    """The model-parallel settings checked (after --hidden is parsed); bad(key, why)
    raises the ConfigError naming the setting."""
    for key in ("pp", "tp", "virtual_stages"):
        if cfg[key] < 1:
            bad(key, "must be >= 1")
    for key in ("dp", "micro_batches"):
        if cfg[key] < 0:
            bad(key, "must be >= 0 (0: automatic)")
    cfg["micro_batches"] = cfg["micro_batches"] or 2 * cfg["pp"]
    if cfg["virtual_stages"] > 1 and cfg["pipeline_schedule"] != "interleaved":
        bad("virtual_stages", "is for --pipeline-schedule interleaved")
    if cfg["pipeline_split"] not in ("params", "time"):
        try:
            cuts = [int(c) for c in cfg["pipeline_split"].split(",")]
        except ValueError:
            bad("pipeline_split", "must be 'params', 'time' or comma-separated Linear "
                                  "layer indices, e.g. 2,4")
        n_linear = len(cfg["hidden_sizes"]) + 1
        stages = cfg["pp"] * cfg["virtual_stages"]
        if len(cuts) != stages - 1 or any(b <= a for a, b in zip([0, *cuts],
                                                                   [*cuts, n_linear])):
            bad("pipeline_split", f"needs {stages - 1} increasing Linear layer indices in "
                                  f"1..{n_linear - 1} (--pp {cfg['pp']} x --virtual-stages "
                                  f"{cfg['virtual_stages']} stages, {n_linear} Linear "
                                  f"layers): every stage needs a layer")


def wanted(cfg, P):
    """Whether the run splits the model (--pp, --tp, or --dp other than the ranks)."""
    return cfg["pp"] > 1 or cfg["tp"] > 1 or bool(cfg["dp"] and cfg["dp"] != P)


def layout(cfg, comm):
    """(dp, pp, tp): the factorisation of the ranks, checked (ConfigError naming it)."""
    W, pp, tp = comm.Get_size(), cfg["pp"], cfg["tp"]
    dp = cfg["dp"] or W // (pp * tp)
    if dp * pp * tp != W:
        raise ConfigError(f"dp x pp x tp = {cfg['dp'] or '(auto)'} x {pp} x {tp} does not "
                          f"match the {W} ranks (choose factors whose product is {W})")
    if cfg["overlap"]:
        raise ConfigError(f"--pp {pp} --tp {tp}: --overlap is for data parallelism alone "
                          "(the stages' gradients are summed over replicas after the "
                          "schedule)")
    if cfg["zero"] == 2:
        raise ConfigError("--zero 2 with --pp/--tp: use --zero 1 (DeepSpeed's pipeline "
                          "engine allows stage 1 only: stage 2 shards the gradients the "
                          "micro-batches accumulate)")
    if tp > 1 and cfg["hidden_sizes"] and min(cfg["hidden_sizes"]) < tp:
        raise ConfigError(f"--tp {tp}: hidden layers of {min(cfg['hidden_sizes'])} units "
                          f"cannot be split over {tp} ranks")
    return dp, pp, tp


def data_comm(comm, pp, tp):
    """This rank's data-parallel group: the replicas of its stage and TP shard (one rank
    per replica), over which the loader deals the global batch."""
    d, p, t = ranks_of(comm.Get_rank(), pp, tp)
    return hc.split(comm, p * tp + t, d)


def strategy(cfg, comm, model, dims, loss, dp_comm=None, dev=None):
    """The ModelParallel strategy of the run (dp_comm: data_comm's, reused; dev: the
    rank's hpcml.device.Device, whose GPU the stages move to with --device cuda)."""
    dp, pp, tp = dims
    split = cfg["pipeline_split"]
    if split not in ("params", "time"):  # Linear layer indices -> the model's layer indices
        linear = [i for i, layer in enumerate(model.layers) if hasattr(layer, "fan_in")]
        split = [linear[int(c)] for c in split.split(",")]
    return ModelParallel(model, comm, dp, pp, tp, schedule=cfg["pipeline_schedule"],
                         micro_batches=cfg["micro_batches"], virtual=cfg["virtual_stages"],
                         recompute=cfg["recompute"], algorithm=cfg["algorithm"],
                         zero=cfg["zero"], loss=loss, bounds=split, dp_comm=dp_comm,
                         device="cuda" if dev is not None and dev.is_cuda else "cpu",
                         cuda_aware=dev is not None and dev.cuda_aware,
                         balance_rows=max(1, cfg["batch_size"] // (
                             dp * cfg["accumulation"] * cfg["micro_batches"])))


def summary(strategy_):
    """What the job summary adds under model parallelism."""
    r = strategy_.runner
    out = {"layout": {"dp": strategy_.dp, "pp": strategy_.pp, "tp": strategy_.tp},
           "pipeline_schedule": r.schedule.name, "micro_batches": r.schedule.micro_batches,
           "stage_layers": [list(b) for b in r.bounds],  # [first, end) of model.layers
           "peak_activation_bytes": r.peak_bytes}
    if strategy_.device == "cuda":  # activations and input gradients between stages
        out["stage_messages"] = "staged"  # copied through host buffers (pipe.py)
    return out
