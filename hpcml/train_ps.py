"""`python -m hpcml.train --parallel ps --servers K --consistency MODE`: the settings, the
roles and the server side (hpcml.parallel.param_server).

World ranks 0..W-1 are workers: they run train.run's Trainer with the ParameterServer
strategy over their own communicator (the loader deals each global batch over the W
workers). Ranks W..W+K-1 are servers: they build the same initial model (same seed), keep
shard k of it and its optimizer state, and serve until every worker is done.
"""
import signal
import time

from hpcml import comm as hc
from hpcml.config import ConfigError
from hpcml.parallel.param_server import ParameterServer, PSError, Server, layout, parse_mode

#: (setting, flag, the strategies that take it)
UNSUPPORTED = (("clip", "--clip", ("ps", "hogwild")), ("zero", "--zero", ()),
               ("overlap", "--overlap", ()), ("init_from", "--init-from", ("ps",)))


def validate(cfg, bad):
    """The parameter-server settings checked; bad(key, why) raises naming the setting."""
    if cfg["parallel"] not in ("dp", "ps", "hogwild"):
        bad("parallel", "must be dp (data parallel, with --pp/--tp/--zero), ps (parameter "
                        "server) or hogwild (shared-memory lock-free updates)")
    if cfg["hogwild_lock"] and cfg["parallel"] != "hogwild":
        bad("hogwild_lock", "is for --parallel hogwild")
    if cfg["servers"] < 1:
        bad("servers", "must be >= 1")
    try:
        parse_mode(cfg["consistency"])
    except PSError as e:
        bad("consistency", str(e).split(": ", 1)[1])
    if cfg["straggler"]:
        try:
            r, f = cfg["straggler"].split(":")
            rank, factor = int(r), float(f)
        except ValueError:
            bad("straggler", "must be RANK:FACTOR, e.g. 2:3 (worker rank 2 three times "
                             "slower)")
        if rank < 0 or not factor >= 1:
            bad("straggler", "needs a worker rank >= 0 and a factor >= 1")
    if cfg["parallel"] != "dp":
        kind = cfg["parallel"]
        for key, flag, takes in UNSUPPORTED:
            if cfg[key] and kind not in takes:
                bad(key, f"{flag} is not supported with --parallel {kind} yet")
        if cfg["pp"] > 1 or cfg["tp"] > 1 or cfg["dp"]:
            bad("parallel", f"--parallel {kind} trains whole models on its workers: leave "
                            f"--pp, --tp and --dp unset")


def roles(cfg, comm):
    """(is this rank a server, the workers' or the servers' communicator, workers W):
    collective over comm; a layout that cannot run is a ConfigError on every rank."""
    P = comm.Get_size()
    try:
        W, K = layout(P, cfg["servers"])
        parse_mode(cfg["consistency"], W)
    except PSError as e:
        raise ConfigError(str(e)) from None
    if cfg["straggler"] and int(cfg["straggler"].split(":")[0]) >= W:
        raise ConfigError(f"straggler = {cfg['straggler']!r}: rank "
                          f"{cfg['straggler'].split(':')[0]} is not a worker (workers are "
                          f"ranks 0..{W - 1}, servers {W}..{P - 1})")
    server = comm.Get_rank() >= W
    return server, hc.split(comm, int(server), comm.Get_rank()), W


def strategy(cfg, comm, workers_comm, model):
    """A worker's ParameterServer strategy."""
    return ParameterServer(model, comm, workers_comm, cfg["servers"], cfg["consistency"])


def serve(cfg, comm, W, net, make_opt, peers=None, init=None):
    """A server rank's whole run: its shard of net()'s initial parameters (or init(model)'s
    for --init-from, the workers' starting weights) served until every worker is done;
    peers: the servers' communicator (bsp --clip). Returns (summary, None)."""
    t0 = time.perf_counter()
    k = comm.Get_rank() - W
    ck = _checkpoint(cfg)  # the same file worker 0 resumes from (read before anyone writes)
    model = net()
    if ck is None and init is not None:
        init(model)
    server = Server(comm, W, k, cfg["servers"], model.params, make_opt, cfg["consistency"],
                    clip=cfg["clip"], peers=peers)
    if ck is not None:
        server.load(ck["params"], ck["optim"])
    old = {}

    def stop(signum, frame):  # SIGTERM/SIGUSR1 here: the workers are told in the replies
        server.stop_request = 1.0  # (bsp: from the next round), checkpoint and stop; the
        # server ends when they are done
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            old[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread (in-process ranks)
            pass
    try:
        stats = server.serve()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
    return {"job": "train", "status": "done", "role": f"server {k}",
            "seconds": time.perf_counter() - t0, "ranks": comm.Get_size(),
            "parameter_server": stats}, None


def _checkpoint(cfg):
    """The checkpoint --resume names (None when there is none to resume); a server reads
    it itself. An unreadable one is left to worker 0's resume, which names it."""
    if not cfg["resume"]:
        return None
    from hpcml import checkpoint as ckpt
    try:
        return (ckpt.find_latest(cfg["checkpoint_dir"]) if cfg["resume"] == "auto"
                else ckpt.load(cfg["resume"]))
    except ckpt.CheckpointError:
        return None


def summary(strategy_):
    """What a worker's summary adds: the mode and server 0's figures."""
    s = strategy_
    return {"parameter_server": dict(s.stats or {}, servers=s.K, workers=s.W,
                                     consistency=f"{s.mode}:{s.bound}" if s.mode in
                                     ("ssp", "backup") else s.mode)}


__all__ = ["ParameterServer", "validate", "roles", "strategy", "serve", "summary"]
