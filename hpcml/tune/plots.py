"""A study's pictures: history.png (each trial's value and the best so far) and params.png
(each parameter against the value)."""
import math
import os


def plot_study(out, rows, space, sign):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hpcml.atomic import atomic_savefig
    ok = [r for r in rows if r["state"] == "complete" and r["value"] is not None
          and math.isfinite(r["value"])]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if ok:
        xs = [r["trial"] for r in ok]
        ys = [r["value"] for r in ok]
        best, cur = [], None
        for y in ys:
            cur = y if cur is None or sign * y < sign * cur else cur
            best.append(cur)
        ax.plot(xs, ys, "o", ms=3, alpha=0.5, label="trial")
        ax.step(xs, best, where="post", color="tab:red", label="best so far")
    pruned = [r for r in rows if r["state"] == "pruned" and r["value"] is not None]
    if pruned:
        ax.plot([r["trial"] for r in pruned], [r["value"] for r in pruned], "x",
                color="grey", ms=4, label="pruned (last value)")
    ax.set_xlabel("trial")
    ax.set_ylabel("value")
    ax.set_title(f"{len(rows)} trials ({'minimise' if sign > 0 else 'maximise'})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, os.path.join(out, "history.png"), dpi=100)
    plt.close(fig)
    _plot_params(out, ok, space, plt, atomic_savefig)


def _plot_params(out, ok, space, plt, save):
    n = len(space.params)
    cols = min(n, 3)
    rows_n = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(4 * cols, 3.2 * rows_n), squeeze=False)
    for ax, p in zip(axes.flat, space.params):
        pts = [(r["params"][p.name], r["value"]) for r in ok if p.name in r["params"]]
        if p.kind == "categorical":
            idx = {repr(c): i for i, c in enumerate(p.choices)}
            ax.plot([idx[repr(v)] for v, _ in pts], [y for _, y in pts], "o", ms=3)
            ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices], fontsize=7)
        else:
            ax.plot([v for v, _ in pts], [y for _, y in pts], "o", ms=3)
            if p.log:
                ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.set_ylabel("value")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save(fig, os.path.join(out, "params.png"), dpi=100)
    plt.close(fig)
