"""Pictures read well (issue 15, defect 10): t-SNE classes in a discrete legend, no empty
panel or matplotlib warning in `bench dimred --quick`'s figure, titles inside the figure,
benchmark columns that say what they are, the kernels table showing the figure its summary
quotes, and the PCA benchmark emptying the page cache only when asked."""
import io
import warnings

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting code saves, kept open for inspection."""
    import hpcml.atomic
    import matplotlib.pyplot as plt
    kept = []
    monkeypatch.setattr(hpcml.atomic, "atomic_savefig", lambda fig, path, **kw: kept.append(fig))
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    yield kept


def _inside(fig):
    """Every title and tick label lies inside the figure, and no two x tick labels of an
    axis overlap."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box = fig.bbox
    for ax in fig.axes:
        for t in [ax.title, *ax.get_xticklabels()]:
            if t.get_text():
                b = t.get_window_extent(r)
                assert b.x0 >= box.x0 - 1 and b.x1 <= box.x1 + 1, t.get_text()
        ticks = sorted((t.get_window_extent(r) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda b: b.x0)
        for a, b in zip(ticks, ticks[1:]):
            assert a.x1 <= b.x0 + 0.5, "x tick labels overlap"


def test_tsne_classes_get_a_discrete_legend(figures, monkeypatch, tmp_path):
    from hpcml import tsne
    monkeypatch.setattr(tsne, "atomic_savefig", lambda fig, path, **kw: figures.append(fig))
    rng = np.random.default_rng(0)
    emb, labels = rng.standard_normal((300, 2)), rng.integers(0, 10, 300)
    tsne.plot(str(tmp_path / "e.png"), emb, labels, "t-SNE of digits: 300 rows")
    fig = figures[-1]
    assert len(fig.axes) == 1  # no colorbar axis
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [str(c) for c in range(10)]
    _inside(fig)
    tsne.plot(str(tmp_path / "r.png"), emb, rng.standard_normal(300), "regression target")
    assert len(figures[-1].axes) == 2  # a real-valued target: a colour scale


def test_dimred_quick_figure_has_no_empty_panel_or_warning(figures):
    from hpcml.bench.dimred import plot
    records = [{"data": d, "tool": t, "ranks": r, "seconds": s}
               for d in ("digits", "mix3k") for t, r, s in (("hpcml", 1, 3.0),
                                                             ("openTSNE", 1, 5.0))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any matplotlib warning fails the test
        plot("x.png", records, scaling=[])
    fig = figures[-1]
    assert len(fig.axes) == 1 and fig.axes[0].has_data()
    _inside(fig)


def test_pca_benchmark_titles_fit_and_cache_is_dropped_only_when_asked(figures, monkeypatch,
                                                                       tmp_path):
    from hpcml.bench import pca as bp
    monkeypatch.setattr(bp, "atomic_savefig", lambda fig, path, **kw: figures.append(fig))
    drops = []
    monkeypatch.setattr(bp, "drop_page_cache", lambda comm: drops.append(1) or True)
    res = bp.bench_pca(str(tmp_path), rows=3000, stream_rows=4000, repeats=1, batch=1000)
    assert drops == [] and "cold_pca_vs_loader" not in res["streaming"]
    _inside(figures[-1])
    res = bp.bench_pca(str(tmp_path), rows=3000, stream_rows=4000, repeats=1, batch=1000,
                       drop_cache=True)
    assert drops and "cold_pca_vs_loader" in res["streaming"]
    _inside(figures[-1])  # six bars, their labels apart


def test_benchmark_tables_say_what_their_ratios_are():
    from hpcml.bench.allreduce import print_table
    from hpcml.bench.kernels import format_row
    recs = [{"algorithm": a, "bytes": 1 << 20, "median_s": t, "busbw_GBps": 1.0, "valid": True,
             "ratio_vs_mpi": 0.5 / t, "chosen": "ring"} for a, t in (("mpi", 0.5),
                                                                    ("auto", 0.25))]
    out = io.StringIO()
    print_table(recs, ["mpi", "auto"], out)
    head, row = out.getvalue().splitlines()
    assert "auto speedup vs mpi" in head and row.split()[-3] == "2.00"  # mpi time / auto time
    auto = {"kernel": "matmul", "backend": "auto", "threads": 1, "n": 1024, "median_s": 0.0170,
            "gflops": 126.2, "auto_vs_best": 1.0018, "best_backend": "numpy",
            "best_paired_s": 0.0170 / 1.0018}
    line = format_row(auto)
    assert "auto_vs_best=1.00" in line and "vs numpy 16.969 ms timed in alternation" in line
