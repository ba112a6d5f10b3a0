"""--trace and --prometheus of python -m hpcml.train under mpiexec -n 2: a Chrome trace with
both ranks and every span kind, whose all-reduce time matches the summary's comm time; a
textfile-collector file that Prometheus' own parser reads."""
import json
import os
import shutil
import sys

import pytest

import procs
from hpcml.parallel.trace import KINDS, Tracer, write_prometheus

MPIEXEC = shutil.which("mpiexec")


@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")
def test_trace_and_prometheus_of_a_two_rank_run(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    trace, prom, ck = tmp_path / "t.json", tmp_path / "m.prom", tmp_path / "ck"
    p = procs.run([MPIEXEC, "-n", "2", sys.executable, "-m", "hpcml.train", "--trace",
                   str(trace), "--prometheus", str(prom), "--checkpoint-dir", str(ck),
                   "--hidden", "512,256", "--epochs", "2", "--progress", "false"], limit=90)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    events = json.load(open(trace))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M"}
    assert names == {0: "rank 0", 1: "rank 1"}
    spans = [e for e in events if e["ph"] == "X"]
    for rank in (0, 1):
        kinds = {e["name"] for e in spans if e["pid"] == rank}
        assert kinds == set(KINDS), f"rank {rank}: {sorted(kinds)}"
        assert all(e["dur"] >= 0 and e["ts"] >= -1e6 for e in spans if e["pid"] == rank)
    allreduce = sum(e["dur"] for e in spans if e["pid"] == 0 and e["name"] == "allreduce")
    comm = summary["comm_seconds"] * 1e6
    assert abs(allreduce - comm) <= 0.05 * comm, (allreduce, comm)
    steps = [e for e in spans if e["pid"] == 0 and e["name"] == "optimizer"]
    assert len(steps) == summary["step"] == 46
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert {"hpcml_step", "hpcml_samples_per_second", "hpcml_train_loss",
            "hpcml_train_accuracy", "hpcml_test_accuracy", "hpcml_comm_fraction",
            "hpcml_data_wait_fraction"} <= set(families)
    assert all(f.type == "gauge" and f.documentation for f in families.values())
    assert families["hpcml_step"].samples[0].value == 46
    assert families["hpcml_test_accuracy"].samples[0].value == summary["test_accuracy"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp") or n.startswith(".")]


def test_tracer_without_a_file_keeps_only_totals():
    t = Tracer(None)
    with t.span("forward"):
        pass
    assert t.events is None and set(t.seconds) == {"forward"}
    t = Tracer(None, keep_events=True)
    with t.span("data"):
        pass
    trace = t.gather()
    assert [e["name"] for e in trace["traceEvents"]] == ["process_name", "data"]


def test_prometheus_labels_and_missing_values(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    write_prometheus(tmp_path / "m.prom", {"step": 3, "train_loss": 0.5, "test_accuracy": None},
                     labels={"job": "digits"})
    fams = {f.name: f for f in text_string_to_metric_families((tmp_path / "m.prom").read_text())}
    assert set(fams) == {"hpcml_step", "hpcml_train_loss"}
    assert fams["hpcml_step"].samples[0].labels == {"job": "digits"}
