"""Logging (issue 15, item 13): run id, timestamp and learning rate in every --metrics line,
--tensorboard event files, the summary's outputs and last checkpoint. Oracle for the event
files: their TFRecord framing and TensorBoard's Event protobuf, read here independently of
the writer."""
import json
import struct
import time

import pytest

from hpcml import optim, train


def _events(path):
    """Every (tag, step, value) scalar of a TensorBoard event file."""
    from tensorboardX.proto import event_pb2
    out = []
    with open(path, "rb") as f:
        data = f.read()
    at = 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        ev = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
        at += 12 + n + 4  # length, its CRC, the record, its CRC
        for v in ev.summary.value:
            out.append((v.tag, ev.step, v.simple_value))
    return out


def test_metrics_lines_tensorboard_and_summary(tmp_path):
    pytest.importorskip("tensorboardX")
    cfg = {k: v[0] for k, v in train.SETTINGS.items()}
    cfg.update(progress=False, epochs=3, metrics=str(tmp_path / "m.jsonl"),
               tensorboard=str(tmp_path / "tb"), checkpoint_dir=str(tmp_path / "ck"))
    summary, _ = train.run(train.validate(cfg), log=lambda *a: None)
    lines = [json.loads(ln) for ln in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {ln["run_id"] for ln in lines} == {summary["run_id"]}
    for ln in lines:
        t = time.mktime(time.strptime(ln["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        assert abs(t - time.time()) < 3600
    # the rate each line reports is the schedule's at the epoch's last step
    sched = optim.Schedule(cfg["lr"], cfg["warmup"], cfg["schedule"], total=summary["step"])
    assert [ln["lr"] for ln in lines] == pytest.approx(
        [sched(ln["step"] - 1) for ln in lines], rel=1e-12)
    files = list((tmp_path / "tb").iterdir())
    assert len(files) == 1 and summary["run_id"] in files[0].name
    scalars = _events(files[0])
    for ln in lines:
        for key in ("train_loss", "train_accuracy", "test_accuracy", "lr"):
            assert (key, ln["step"], pytest.approx(ln[key], rel=1e-6)) in scalars, key
    assert summary["outputs"]["last_checkpoint"] == str(tmp_path / "ck" / "step-00000069.h5")
    pointer = json.loads((tmp_path / "ck" / "latest").read_text())
    assert pointer["file"] == "step-00000069.h5"
    assert set(summary) >= {"job", "status", "outputs", "seconds", "run_id"}
