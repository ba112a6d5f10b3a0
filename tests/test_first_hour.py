"""A new user's first hour (issue 15): outputs checked before the work and numbers written
before pictures (defect 4), discoverability (item 14): `python -m hpcml`, --version,
console scripts, --help naming mpiexec."""
import json
import os
import shutil
import sys
import sysconfig

import pytest

from hpcml import comm as hc
from procs import run


def _job(*args, limit=120):
    return run([sys.executable, "-m", *args], limit=limit)


@pytest.mark.parametrize("job", ["hpcml.pca", "hpcml.tsne"])
def test_unwritable_output_is_refused_before_the_work(tmp_path, job):
    (tmp_path / "afile").write_text("")
    r = _job(job, "digits", "--output", str(tmp_path / "afile" / "out"))
    assert r.returncode == 1 and r.stderr.count("error: ") == 1, r.stderr
    assert f"--output {tmp_path / 'afile' / 'out'}: cannot write there" in r.stderr
    assert "[t-SNE]" not in r.stdout + r.stderr  # refused before the fit started


@pytest.mark.parametrize("job", ["pca", "tsne"])
def test_numbers_are_written_before_the_picture(tmp_path, monkeypatch, job):
    """A picture that cannot be drawn (here: the plot raises) leaves the numeric results
    on disk and names what failed."""
    import importlib
    mod = importlib.import_module(f"hpcml.{job}")

    def broken(*a, **k):
        raise RuntimeError("no display for you")
    monkeypatch.setattr(mod, "plot", broken)
    cfg = mod.parse_args(["digits", "--output", str(tmp_path), "--max-memory", "off"] +
                         (["--max-iter", "250", "--verbose", "false"] if job == "tsne" else []))
    with pytest.raises(hc.CollectiveError, match="drawing .*png .*no display for you"):
        mod.run(cfg, hc.self_comm())
    names = sorted(os.listdir(tmp_path))
    assert names == (["pca.h5", "summary.json"] if job == "pca" else
                     ["embedding.h5", "summary.json"]), names
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["job"] == job and summary["status"] == "done"
    assert set(summary) >= {"job", "status", "outputs", "seconds"}


def test_python_m_hpcml_lists_the_jobs_and_each_runs():
    r = _job("hpcml")
    assert r.returncode == 0, r.stderr
    for job in ("train", "predict", "evaluate", "pca", "tsne", "data", "bench", "federated"):
        assert f"\n  {job} " in r.stdout, r.stdout
        h = _job(f"hpcml.{job}", "--help")
        assert h.returncode == 0 and f"python -m hpcml.{job}" in h.stdout, (job, h.stderr)
    import hpcml
    for job in ("hpcml", "hpcml.train", "hpcml.data", "hpcml.pca", "hpcml.predict"):
        v = _job(job, "--version")
        assert v.returncode == 0 and v.stdout.strip() == f"hpcml {hpcml.__version__}", job


def test_help_says_how_to_start_on_many_ranks():
    for job in ("hpcml.train", "hpcml.pca", "hpcml.tsne", "hpcml.predict", "hpcml.data",
                "hpcml.federated"):
        r = _job(job, "--help")
        assert "mpiexec -n" in r.stdout and "mpirun" not in r.stdout, job


def test_console_scripts_are_installed():
    """`pip install -e .` puts hpcml-train, hpcml-data, ... on the PATH."""
    scripts = sysconfig.get_path("scripts")
    for name in ("hpcml", "hpcml-train", "hpcml-data", "hpcml-pca", "hpcml-tsne",
                 "hpcml-predict", "hpcml-evaluate", "hpcml-bench", "hpcml-federated",
                 "hpcml-tune"):
        path = shutil.which(name) or os.path.join(scripts, name)
        assert os.path.exists(path), f"{name} not installed (pip install -e .)"
    r = run([shutil.which("hpcml-train") or os.path.join(scripts, "hpcml-train"),
             "--version"], limit=60)
    assert r.returncode == 0 and r.stdout.startswith("hpcml "), r.stderr


_LINE = r"elapsed \d+:\d\d,?\s+ETA \d+:\d\d"


def test_progress_lines_for_every_job_when_output_is_a_pipe(tmp_path):
    """Under mpiexec/Slurm stderr is a pipe: rank 0 prints progress lines (count, share,
    rate, elapsed, ETA) every --log-every seconds instead of a tqdm bar, for synth,
    convert, pca and tsne (training has its own test in test_train_cli.py)."""
    import re
    import numpy as np
    np.savetxt(tmp_path / "t.csv", np.hstack([np.random.default_rng(0).random((30000, 3)),
                                              np.zeros((30000, 1))]), delimiter=",")
    runs = {
        "synth": ("hpcml.data", "synth", str(tmp_path / "s"), "--rows", "300000",
                  "--features", "8", "--classes", "3", "--shards", "6",
                  "--log-every", "1e-9"),
        "convert": ("hpcml.data", "convert", str(tmp_path / "t.csv"), str(tmp_path / "c"),
                    "--chunk-rows", "5000", "--log-every", "1e-9"),
        "pca": ("hpcml.pca", str(tmp_path / "s"), "--batch-size", "50000", "--log-every",
                "1e-9", "--output", str(tmp_path / "p")),
        "tsne": ("hpcml.tsne", "digits", "--log-every", "1e-9", "--max-iter", "250",
                 "--output", str(tmp_path / "ts")),
    }
    for name, args in runs.items():
        r = _job(*args)
        assert r.returncode == 0, (name, r.stderr)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if re.search(_LINE, ln)]
        assert len(lines) >= 2, (name, r.stdout)
        assert "\r" not in r.stdout + r.stderr and "it/s" not in r.stderr, name
    assert re.search(f"synth {re.escape(str(tmp_path / 's'))}: 300,000/300,000 rows "
                     r"\(100%\)  [\d,]+ rows/s  " + _LINE,
                     _job(*runs["synth"][:-2], "--overwrite", "--log-every", "1e-9").stdout)

