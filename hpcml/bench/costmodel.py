"""The cost model behind `python -m hpcml.bench scaling`: fitted to its runs, checked on the
run it was not fitted on, applied to other networks and to Horovod's published setting.

A step at P ranks on a host with C cores (s = max(1, P / C): ranks beyond the cores share
them, time-sliced, as MPICH's busy-polling ranks do) costs

    T(P) = s * (c + g * w(P) + comm(P))

c: the step's fixed part (Python, the solve at the end; replicated on every rank);
g * w(P): the compute, w the rank's share of the work (strong: 1/P, weak: 1; the
pipeline's critical path (M + P - 1) / (M P), weak (M + P - 1) / M);
comm(P): the messages, from Thakur, Rabenseifner and Gropp (2005):
ring all-reduce of m bytes 2 (P - 1) alpha + 2 (P - 1) / P * m * beta (ZeRO-1's
reduce-scatter + all-gather move the same), the pipeline's 2 (M + P - 2) activation
messages of a bytes on its critical path, k-means' one all-reduce per Lloyd iteration.

Fitting, per host count: alpha and beta from the all-reduce runs (every size, P <= 4,
least squares on T / s); then c and g per strategy and mode from its P <= 4 runs (least
squares, comm fixed by alpha and beta). The P = 8 runs are then predicted, not fitted: the
error there is the model's check. For other networks the same c and g run with a core per
rank (s = 1) and the profile's alpha, beta, out to 1,024 ranks.
"""
import math

import numpy as np

#: named networks for extrapolation: alpha (s), beta (s/byte), where the numbers come from
PROFILES = {
    "InfiniBand HDR": (1.0e-6, 1 / 24e9,
                       "200 Gb/s link (25 GB/s; 24 GB/s usable taken), ~1 us MPI latency: "
                       "NVIDIA ConnectX-6 HDR product brief; see benchmarks/README.md"),
}
HOROVOD = {  # filled from the Horovod paper and TensorFlow's P100 benchmarks (README)
}


def s_factor(P, cores):
    return max(1.0, P / cores)


def ring(P, m, alpha, beta):
    return 0.0 if P <= 1 else 2 * (P - 1) * alpha + 2 * (P - 1) / P * m * beta


def work(case, mode, P):
    if case == "pipeline":
        M = 8
        return (M + P - 1) / (M * P) if mode == "strong" else (M + P - 1) / M
    if case == "allreduce":
        return 0.0
    return 1.0 / P if mode == "strong" else 1.0


def comm_cost(case, rec, P, alpha, beta):
    m = rec.get("bytes", 0)
    if case in ("allreduce", "data-parallel", "zero", "pca"):
        return ring(P, m, alpha, beta)
    if case == "kmeans":
        return rec.get("iterations", 1) * ring(P, m, alpha, beta)
    if case == "pipeline":
        return 2 * (8 + P - 2) * (alpha + m * beta) if P > 1 else 0.0
    return 0.0


def fit_network(points, cores):
    """alpha, beta from [(P, bytes, seconds)] (P >= 2): least squares on T / s."""
    A = np.array([[2 * (P - 1), 2 * (P - 1) / P * m] for P, m, _ in points])
    b = np.array([t / s_factor(P, cores) for P, _, t in points])
    w = 1 / np.maximum(b, 1e-12)  # relative errors: small messages count as much as big
    sol, *_ = np.linalg.lstsq(A * w[:, None], b * w, rcond=None)
    return max(float(sol[0]), 1e-9), max(float(sol[1]), 1e-13)


def fit_case(case, mode, recs, cores, alpha, beta):
    """c, g from {P: rec} with P <= 4 (relative least squares)."""
    rows, rhs = [], []
    for P, rec in recs.items():
        s = s_factor(P, cores)
        rows.append([1.0, work(case, mode, P)])
        rhs.append(rec["step_s"] / s - comm_cost(case, rec, P, alpha, beta))
    A, b = np.array(rows), np.array(rhs)
    w = 1 / np.array([recs[P]["step_s"] for P in recs])
    if np.ptp(A[:, 1]) == 0:  # weak scaling: one work level, c and g are one constant
        return max(float(np.mean(b)), 0.0), 0.0
    sol, *_ = np.linalg.lstsq(A * w[:, None], b * w, rcond=None)
    return float(sol[0]), float(sol[1])


def predict(case, mode, rec, P, cores, alpha, beta, c, g):
    return s_factor(P, cores) * (c + g * work(case, mode, P) + comm_cost(case, rec, P, alpha,
                                                                       beta))


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
    res = {"runs": runs, "networks": {}, "cases": {}}
    for hosts in sorted(runs, key=int):
        ar = _series(runs, hosts, "allreduce", "strong")
        pts = [(P, r["bytes"], r["step_s"]) for P, recs in ar.items() if 2 <= P <= fit_max
               for r in recs]
        if not pts:
            continue
        alpha, beta = fit_network(pts, cores)
        net = res["networks"][hosts] = {"alpha_s": alpha, "beta_s_per_byte": beta,
                                        "bandwidth_GBps": 1e-9 / beta, "fitted_on": sorted(
                                            {p[0] for p in pts})}
        checks = []
        for P, recs in ar.items():
            for r in recs:
                pred = s_factor(P, cores) * ring(P, r["bytes"], alpha, beta)
                checks.append({"P": P, "bytes": r["bytes"], "measured_s": r["step_s"],
                               "predicted_s": pred, "error": pred / r["step_s"] - 1,
                               "held_out": P > fit_max})
        net["allreduce"] = checks
        for case in sorted({c for r in runs[hosts].values() for c in r["cases"]}):
            if case == "allreduce":
                continue
            for mode in ("strong", "weak"):
                series = {P: recs[0] for P, recs in _series(runs, hosts, case, mode).items()}
                fit_on = {P: r for P, r in series.items() if P <= fit_max}
                if len(fit_on) < 2:
                    continue
                c, g = fit_case(case, mode, fit_on, cores, alpha, beta)
                pts = []
                base = series.get(min(series))["step_s"]
                for P, r in series.items():
                    pred = predict(case, mode, r, P, cores, alpha, beta, c, g)
                    pts.append({"P": P, "measured_s": r["step_s"], "predicted_s": pred,
                                "error": pred / r["step_s"] - 1, "held_out": P > fit_max,
                                "oversubscribed": P > cores,
                                "speedup": base / r["step_s"] * (min(series) if mode ==
                                                                 "strong" else 1),
                                "efficiency": _efficiency(base, min(series), r["step_s"],
                                                          P, mode)})
                res["cases"].setdefault(hosts, {}).setdefault(case, {})[mode] = {
                    "c_s": c, "g_s": g, "points": pts,
                    "extrapolated": _extrapolate(case, mode, series[max(series)], c, g, net)}
    return res


def _efficiency(base, p0, t, P, mode):
    """Strong: T(p0) p0 / (T(P) P); weak: T(p0) / T(P)."""
    return base * p0 / (t * P) if mode == "strong" else base / t


def _extrapolate(case, mode, rec, c, g, net):
    """Predicted step time and efficiency at P = 1..1024 with a core per rank, on the
    measured network and the named profiles."""
    Ps = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    nets = {"measured": (net["alpha_s"], net["beta_s_per_byte"])}
    nets.update({k: v[:2] for k, v in PROFILES.items()})
    out = {}
    for name, (alpha, beta) in nets.items():
        t = [c + g * work(case, mode, P) + comm_cost(case, rec, P, alpha, beta) for P in Ps]
        eff = [(t[0] / (ti * P) if mode == "strong" else t[0] / ti) for P, ti in zip(Ps, t)]
        out[name] = {"P": Ps, "step_s": t, "efficiency": eff}
    return out


def horovod(profile_alpha, profile_beta):
    """Placeholder replaced below once the published figures are in HOROVOD."""
    return {}


def report(res):
    for hosts, net in res["networks"].items():
        print(f"hosts={hosts}: alpha {net['alpha_s'] * 1e6:.1f} us, beta "
              f"{net['bandwidth_GBps']:.2f} GB/s (fitted on P={net['fitted_on']})")
        for c in net["allreduce"]:
            if c["held_out"]:
                print(f"  allreduce P={c['P']} {c['bytes']:>9} B: measured "
                      f"{c['measured_s'] * 1e3:8.2f} ms, model {c['predicted_s'] * 1e3:8.2f}"
                      f" ms ({c['error']:+.0%})")
    for hosts, cases in res["cases"].items():
        for case, modes in cases.items():
            for mode, f in modes.items():
                line = ", ".join(
                    f"P={p['P']}{'*' if p['oversubscribed'] else ''} "
                    f"{p['measured_s'] * 1e3:.1f}/{p['predicted_s'] * 1e3:.1f} ms"
                    f"{' (' + format(p['error'], '+.0%') + ')' if p['held_out'] else ''}"
                    for p in f["points"])
                print(f"hosts={hosts} {case:13s} {mode}: measured/model {line}")


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
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
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
