"""The cost model behind `python -m hpcml.bench scaling`: fitted to its runs, checked on the
ranks it was not fitted on, applied to other networks and to Horovod's published setting.

A step at P ranks costs

    T(P) = s_C(P) c + g W_C(P) + s_net(P) comm(P),      s_C(P) = max(1, P / C)

c: the step's fixed part (Python, the solve at the end), replicated on every rank, so
time-shared when P ranks share C cores; C is the kernel's effective cores, fitted (two
vCPUs that are one core's hyperthreads run BLAS like 1.3 cores);
g W_C(P): the compute, W in rows: the larger of the busiest rank's critical path and all
ranks' rows over the C cores (see work());
comm(P): the messages (Thakur, Rabenseifner and Gropp 2005): a ring all-reduce of m bytes
2 (P - 1) alpha + 2 (P - 1) / P m beta (ZeRO-1's reduce-scatter + all-gather move the
same), the pipeline's 2 (M + P - 2) activation messages on its critical path, k-means'
one all-reduce per Lloyd iteration, the parameter server's push and pull of the model
for each of its P - 1 workers through its one server.

Fitting, per host count: alpha, beta and the network's C from the all-reduce runs (every
size, 2 <= P <= 4); then c, g and C per strategy from its strong and weak runs at P <= 4
(non-negative least squares on relative errors, comm fixed by alpha and beta). The P = 8
runs are predicted, not fitted: the error there is the model's check. For other
networks the same c and g run with a core per rank (s = 1) and the profile's alpha and
beta, out to 1,024 ranks.
"""

import numpy as np

#: named networks for extrapolation: alpha (s), beta (s/byte), where the numbers come from
PROFILES = {
    "InfiniBand HDR": (1.0e-6, 1 / 24e9,
                       "200 Gb/s link (25 GB/s; 24 GB/s usable taken); 1 us: ConnectX-6's "
                       "sub-600 ns adapter latency plus MPI's software (assumed)"),
}
#: the published Horovod setting (Sergeev & Del Balso 2018; horovod/docs/benchmarks.rst):
#: 512 Pascal GPUs (128 servers x 4), 25 Gbit/s RoCE, tf_cnn_benchmarks at batch 64 per
#: GPU. Per model: fp32 gradient bytes (Keras' parameter counts x 4), one GPU's step time
#: (64 / images per s of one P100 in TensorFlow's benchmarks, synthetic data; ResNet-101
#: is not listed there: ResNet-50's 219 and ResNet-152's 91.8 scaled by FLOPs (4.1, 7.8,
#: 11.5 GFLOPs) give 115 and 135, so 125 images/s) and Horovod's reported efficiency.
HOROVOD_NET = {"GPUs": 512, "alpha_s": 10e-6, "beta_s_per_byte": 8 / 25e9,
               "note": "25 Gbit/s RoCE as 3.125 GB/s; alpha 10 us assumed (not published)"}
HOROVOD = {
    "Inception V3": {"bytes": 23_851_784 * 4, "step_s": 64 / 142, "reported": 0.90},
    "ResNet-101": {"bytes": 44_707_176 * 4, "step_s": 64 / 125, "reported": 0.90},
    "VGG-16": {"bytes": 138_357_544 * 4, "step_s": 64 / 154, "reported": 0.68},
}


def s_factor(P, cores):
    return max(1.0, P / cores)


def ring(P, m, alpha, beta):
    return 0.0 if P <= 1 else 2 * (P - 1) * alpha + 2 * (P - 1) / P * m * beta


def work(case, rec, P, C=None):
    """The step's compute in row units on C effective cores (C None: a core per rank):
    the larger of the busiest rank's critical path and all ranks' work shared by the
    cores. Data-parallel kinds: rows per rank (all ranks busy at once, so P / C of them
    share a core). The pipeline: one micro-batch of glob / M rows through one stage (1 /
    P of the model) is (glob / M) / P units, its critical path M + P - 1 of them, while
    all ranks together do glob units (the bubble leaves cores free)."""
    cores = P if C is None else min(P, C)
    if case == "allreduce":
        return 0.0
    if case == "pipeline":
        M = 8
        glob = rec["global_rows"]
        return max(glob * (M + P - 1) / (M * P), glob / cores)
    return float(rec["rows"]) * max(1.0, P / cores)


def comm_cost(case, rec, P, alpha, beta):
    m = rec.get("bytes", 0)
    if case in ("allreduce", "data-parallel", "zero", "pca"):
        return ring(P, m, alpha, beta)
    if case == "kmeans":
        return rec.get("iterations", 1) * ring(P, m, alpha, beta)
    if case == "pipeline":
        return 2 * (8 + P - 2) * (alpha + m * beta) if P > 1 else 0.0
    if case == "parameter-server":  # the server receives and answers each worker in turn
        return 2 * rec.get("workers", P - 1) * (alpha + m * beta) if P > 1 else 0.0
    return 0.0


def _grid(cores):
    """Candidate effective core counts: how many ranks' work this kernel really runs at
    once here (two vCPUs that are one core's hyperthreads run BLAS like one)."""
    return np.linspace(1.0, float(cores), max(2, int(round((cores - 1) / 0.05)) + 1))


def _lsq(A, b, t):
    """Non-negative least squares of A x = b weighted by 1 / t (relative errors)."""
    from scipy.optimize import nnls  # no negative times
    w = 1 / np.maximum(t, 1e-12)
    x, _ = nnls(A * w[:, None], b * w)
    return x, float(np.sum(((A @ x - b) * w) ** 2))


def fit_network(points, cores):
    """alpha, beta and the all-reduce's effective cores from [(P, bytes, seconds)] (P >=
    2): T = s(P) (2 (P - 1) alpha + 2 (P - 1) / P m beta)."""
    best = None
    t = np.array([p[2] for p in points])
    for C in _grid(cores):
        A = np.array([[2 * (P - 1) * s_factor(P, C), 2 * (P - 1) / P * m * s_factor(P, C)]
                      for P, m, _ in points])
        x, r = _lsq(A, t, t)
        if best is None or r < best[0]:
            best = (r, max(float(x[0]), 1e-9), max(float(x[1]), 1e-13), float(C))
    return best[1], best[2], best[3]


def fit_case(case, recs, cores, alpha, beta, C_net):
    """c, g and the kernel's effective cores C from [(P, rec)] (P <= 4, both modes):
    T = s_C(P) (c + g w) + s_net(P) comm(P)."""
    t = np.array([r["step_s"] for _, r in recs])
    best = None
    for C in _grid(cores):
        A = np.array([[s_factor(P, C), work(case, r, P, C)] for P, r in recs])
        b = t - np.array([s_factor(P, C_net) * comm_cost(case, r, P, alpha, beta)
                          for P, r in recs])
        x, res = _lsq(A, b, t)
        if best is None or res < best[0]:
            best = (res, float(x[0]), float(x[1]), float(C))
    return best[1], best[2], best[3]


def predict(case, rec, P, alpha, beta, C_net, c, g, C):
    return (s_factor(P, C) * c + g * work(case, rec, P, C)
            + s_factor(P, C_net) * comm_cost(case, rec, P, alpha, beta))


def _series(runs, hosts, case, mode):
    """{P: [rec, ...]} (one rec per size for all-reduce) of one case and mode."""
    out = {}
    for P, r in runs.get(str(hosts), {}).items():
        recs = r["cases"].get(case, {}).get(mode, [])
        if recs:
            out[int(P)] = recs
    return dict(sorted(out.items()))


def analyse(runs, cores, fit_max=4):
    """Fitted networks, per-case fits, predictions and their errors at the P left out."""
    res = {"runs": runs, "networks": {}, "cases": {}, "fit_max_ranks": fit_max,
           "horovod": horovod(), "horovod_network": HOROVOD_NET,
           "profiles": {k: {"alpha_s": v[0], "beta_s_per_byte": v[1], "source": v[2]}
                        for k, v in PROFILES.items()}}
    for hosts in sorted(runs, key=int):
        ar = _series(runs, hosts, "allreduce", "strong")
        pts = [(P, r["bytes"], r["step_s"]) for P, recs in ar.items() if 2 <= P <= fit_max
               for r in recs]
        if not pts:
            continue
        alpha, beta, C_net = fit_network(pts, cores)
        net = res["networks"][hosts] = {"alpha_s": alpha, "beta_s_per_byte": beta,
                                        "bandwidth_GBps": 1e-9 / beta, "effective_cores":
                                        C_net, "fitted_on": sorted({p[0] for p in pts})}
        net["allreduce"] = [
            {"P": P, "bytes": r["bytes"], "measured_s": r["step_s"],
             "predicted_s": s_factor(P, C_net) * ring(P, r["bytes"], alpha, beta),
             "held_out": P > fit_max, "oversubscribed": P > cores}
            for P, recs in ar.items() if P >= 2 for r in recs]
        for c in net["allreduce"]:
            c["error"] = c["predicted_s"] / c["measured_s"] - 1
        for case in sorted({c for r in runs[hosts].values() for c in r["cases"]}):
            if case != "allreduce":
                _analyse_case(res, hosts, case, runs, cores, fit_max, net)
    return res


def _analyse_case(res, hosts, case, runs, cores, fit_max, net):
    alpha, beta, C_net = net["alpha_s"], net["beta_s_per_byte"], net["effective_cores"]
    series = {m: {P: recs[0] for P, recs in _series(runs, hosts, case, m).items()}
              for m in ("strong", "weak")}
    fit_on = [(P, r) for m in series for P, r in series[m].items() if P <= fit_max]
    if len({P for P, _ in fit_on}) < 2:
        return
    c, g, C = fit_case(case, fit_on, cores, alpha, beta, C_net)
    out = res["cases"].setdefault(hosts, {})[case] = {
        "c_s": c, "g_s_per_row": g, "effective_cores": C, "fitted_on": sorted(
            {P for P, _ in fit_on})}
    for mode, ser in series.items():
        if not ser:
            continue
        p0 = min(ser)
        base = ser[p0]["step_s"]
        pts = []
        for P, r in ser.items():
            pred = predict(case, r, P, alpha, beta, C_net, c, g, C)
            pts.append({"P": P, "measured_s": r["step_s"], "predicted_s": pred,
                        "error": pred / r["step_s"] - 1, "held_out": P > fit_max,
                        "oversubscribed": P > cores,
                        "efficiency": _efficiency(base, p0, r["step_s"], P, mode)})
        out[mode] = {"points": pts, "extrapolated": _extrapolate(
            case, mode, ser[p0], p0, c, g, net)}


def _efficiency(base, p0, t, P, mode):
    """Strong: T(p0) p0 / (T(P) P); weak: T(p0) / T(P)."""
    return base * p0 / (t * P) if mode == "strong" else base / t


def _scaled(case, mode, rec, p0, P):
    """rec as it would be at P ranks: strong keeps the global problem, weak the share."""
    r = dict(rec)
    if case == "pipeline":
        r["global_rows"] = rec["global_rows"] if mode == "strong" else \
            rec["global_rows"] // p0 * P
        r["bytes"] = r["global_rows"] // 8 * (rec["bytes"] // max(1, rec["global_rows"] // 8))
    elif case == "parameter-server":  # P - 1 workers share the batch (strong)
        r["workers"] = P - 1
        r["rows"] = rec["rows"] * (p0 - 1) / (P - 1) if mode == "strong" else rec["rows"]
    elif "rows" in rec:
        r["rows"] = rec["rows"] * p0 / P if mode == "strong" else rec["rows"]
    return r


def _extrapolate(case, mode, rec, p0, c, g, net):
    """Predicted step time and efficiency at P = p0..1024 with a core per rank (s = 1),
    on the measured network and the named profiles."""
    Ps = [P for P in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if P >= p0]
    nets = {"measured": (net["alpha_s"], net["beta_s_per_byte"])}
    nets.update({k: v[:2] for k, v in PROFILES.items()})
    out = {}
    for name, (alpha, beta) in nets.items():
        t = []
        for P in Ps:
            r = _scaled(case, mode, rec, p0, P)
            t.append(c + g * work(case, r, P) + comm_cost(case, r, P, alpha, beta))
        eff = [_efficiency(t[0], p0, ti, P, mode) for P, ti in zip(Ps, t)]
        out[name] = {"P": Ps, "step_s": t, "efficiency": eff}
    return out


def horovod():
    """The model at Horovod's published setting: the step is one GPU's compute plus a ring
    all-reduce of the fp32 gradients over 512 workers, nothing overlapped (Horovod overlaps
    the all-reduce with the backward pass and fuses tensors, so the model's efficiency is
    a lower bound)."""
    n = HOROVOD_NET
    out = {}
    for name, m in HOROVOD.items():
        comm = ring(n["GPUs"], m["bytes"], n["alpha_s"], n["beta_s_per_byte"])
        out[name] = {"gradient_bytes": m["bytes"], "compute_s": m["step_s"], "allreduce_s":
                     comm, "model_efficiency": m["step_s"] / (m["step_s"] + comm),
                     "reported_efficiency": m["reported"]}
    return out


def report(res):
    for name, h in res.get("horovod", {}).items():
        print(f"Horovod setting, {name}: model efficiency {h['model_efficiency']:.0%} "
              f"(no overlap), reported {h['reported_efficiency']:.0%}")
    for hosts, net in res["networks"].items():
        print(f"hosts={hosts}: alpha {net['alpha_s'] * 1e6:.1f} us, beta "
              f"{net['bandwidth_GBps']:.2f} GB/s (fitted on P={net['fitted_on']})")
        for c in net["allreduce"]:
            if c["held_out"]:
                print(f"  allreduce P={c['P']} {c['bytes']:>9} B: measured "
                      f"{c['measured_s'] * 1e3:8.2f} ms, model {c['predicted_s'] * 1e3:8.2f}"
                      f" ms ({c['error']:+.0%})")
    for hosts, cases in res["cases"].items():
        for case, f in cases.items():
            for mode in ("strong", "weak"):
                if mode not in f:
                    continue
                line = ", ".join(
                    f"P={p['P']}{'*' if p['oversubscribed'] else ''} "
                    f"{p['measured_s'] * 1e3:.1f}/{p['predicted_s'] * 1e3:.1f} ms"
                    f"{' (' + format(p['error'], '+.0%') + ')' if p['held_out'] else ''}"
                    for p in f[mode]["points"])
                print(f"hosts={hosts} {case:13s} {mode}: measured/model {line}")


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = sorted({c for h in res["cases"].values() for c in h})
    fig, axes = plt.subplots(2, max(1, len(cases)), figsize=(3.4 * max(1, len(cases)), 6.4),
                             squeeze=False)
    for j, case in enumerate(cases):
        for i, mode in enumerate(("strong", "weak")):
            ax = axes[i][j]
            for hosts, style in (("1", "o-"), ("2", "s--")):
                f = res["cases"].get(hosts, {}).get(case, {}).get(mode)
                if not f:
                    continue
                P = [p["P"] for p in f["points"]]
                ax.plot(P, [p["measured_s"] * 1e3 for p in f["points"]], style,
                        label=f"{hosts} host{'s' if hosts != '1' else ''}: measured")
                ax.plot(P, [p["predicted_s"] * 1e3 for p in f["points"]], ":",
                        label=f"{hosts} host{'s' if hosts != '1' else ''}: model (fit P<=4)")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{case} ({mode})", fontsize=9)
            ax.set_xlabel("ranks P (P > cores: oversubscribed)", fontsize=8)
            ax.set_ylabel("step (ms)", fontsize=8)
            ax.legend(fontsize=6)
    _save(fig, path)
    stem = path[:-len(".png")] if path.endswith(".png") else path
    _plot_allreduce(res, stem + "-allreduce.png")
    _plot_extrapolation(res, stem + "-extrapolated.png")
    _plot_horovod(res, stem + "-horovod.png")


def _plot_allreduce(res, path):
    import matplotlib.pyplot as plt
    nets = res["networks"]
    fig, axes = plt.subplots(1, max(1, len(nets)), figsize=(5.5 * max(1, len(nets)), 4),
                             squeeze=False)
    for ax, (hosts, net) in zip(axes[0], sorted(nets.items())):
        for P in sorted({c["P"] for c in net["allreduce"]}):
            pts = sorted((c["bytes"], c["measured_s"], c["predicted_s"])
                         for c in net["allreduce"] if c["P"] == P)
            line, = ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o",
                            label=f"P={P}{' (held out)' if P > res['fit_max_ranks'] else ''}")
            ax.plot([p[0] for p in pts], [p[2] * 1e3 for p in pts], ":",
                    color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"ring all-reduce, {hosts} host{'s' if hosts != '1' else ''}: "
                     f"alpha {net['alpha_s'] * 1e6:.0f} us, {net['bandwidth_GBps']:.1f} GB/s",
                     fontsize=9)
        ax.set_xlabel("bytes (points measured, dotted: model fitted on P <= 4)")
        ax.set_ylabel("ms")
        ax.legend(fontsize=7)
    _save(fig, path)


def _plot_extrapolation(res, path):
    import matplotlib.pyplot as plt
    cases = res["cases"].get("1", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, mode in zip(axes, ("strong", "weak")):
        for case, f in sorted(cases.items()):
            if mode not in f:
                continue
            for name, style in (("measured", "-"), ("InfiniBand HDR", "--")):
                e = f[mode]["extrapolated"][name]
                ax.plot(e["P"], e["efficiency"], style, label=f"{case}, {name}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{mode} scaling efficiency, model, a core per rank", fontsize=9)
        ax.set_xlabel("ranks P")
        ax.legend(fontsize=6)
    _save(fig, path)


def _plot_horovod(res, path):
    import matplotlib.pyplot as plt
    h = res.get("horovod", {})
    if not h:
        return
    names = list(h)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(x - 0.2, [h[n]["reported_efficiency"] for n in names], 0.4,
           label="Horovod, reported (512 GPUs)")
    ax.bar(x + 0.2, [h[n]["model_efficiency"] for n in names], 0.4,
           label="this model, no overlap")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("scaling efficiency")
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path):
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
