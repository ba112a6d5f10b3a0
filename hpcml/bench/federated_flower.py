"""Flower's simulation (`flwr[simulation]`, the bench extra) of hpcml.bench.federated's
rounds/s cell: 100 clients, FedAvg with fraction_fit 0.1, E = 1, B = 10, lr 0.1, the 2NN on
digits. The clients are hpcml's (the same IID partition and local training code, loaded
once per Ray worker), so the two simulations differ in how they run the clients, not in
what the clients compute. No evaluation. Imported only by the benchmark's Flower worker.
"""
import functools
import time

N, C = 100, 0.1


@functools.lru_cache(maxsize=1)
def _clients():
    from hpcml import comm as hc
    from hpcml import nn
    from hpcml.federated import job
    from hpcml.parallel.federated.client import Client
    from hpcml.parallel.federated.partition import partition
    cfg = {k: v[0] for k, v in job.SETTINGS.items()}
    cfg.update(verbose=False, plot=False)
    cfg = job.validate(cfg)
    x, y, *_ = job.load(cfg, hc.self_comm())
    model = nn.mlp(x.shape[1], cfg["hidden_sizes"], 10, seed=cfg["seed"])
    return Client(model, x, y, 0.1, 1, 10), partition("iid", y, N, cfg["seed"]), model


def run(rounds):
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    class HpcmlClient(NumPyClient):
        def __init__(self, pid):
            self.pid = pid

        def fit(self, parameters, config):
            local, parts, _ = _clients()
            w = parameters[0]
            delta, n, _ = local.update(w, parts[self.pid], 0, 0, self.pid)
            return [w + delta], n, {}

    def client_fn(context: Context):
        return HpcmlClient(int(context.node_config["partition-id"])).to_client()

    stamps = []

    def server_fn(context: Context):
        def stamp(rnd, params, cfg):  # called after every round (and before the first)
            stamps.append(time.perf_counter())
            return None
        strategy = FedAvg(fraction_fit=C, fraction_evaluate=0.0, min_fit_clients=int(C * N),
                          min_evaluate_clients=0, min_available_clients=N,
                          evaluate_fn=stamp, initial_parameters=ndarrays_to_parameters(
                              [_clients()[2].params.copy()]))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    t0 = time.perf_counter()
    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1}})
    ends = stamps[1:]  # after rounds 1..R
    return {"rounds": rounds, "whole_run_s": time.perf_counter() - t0,
            "steady_rounds_per_s": (len(ends) - 1) / (ends[-1] - ends[0]),
            "round_seconds": [b - a for a, b in zip(stamps, stamps[1:])]}
