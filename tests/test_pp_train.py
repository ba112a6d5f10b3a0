"""python -m hpcml.train --pp/--dp (issue 16): data x pipeline parallel training equals one
process at the same global batch in float64 (every schedule, recompute, DP x PP = 2 x 2,
1 x 3), in-process; the CLI under mpiexec learns digits; bad layouts get one message."""
import json
import shutil
import sys

import numpy as np
import pytest

from hpcml import train
from hpcml.comm.inproc import run_ranks
from procs import run


def _cfg(**kw):
    c = {k: v[0] for k, v in train.SETTINGS.items()}
    c.update(dict(test_data="none", hidden="24,16,16", epochs=2, max_steps=30, batch_size=32,
                  dtype="float64", progress=False, warmup=5), **kw)
    return train.validate(c)


REF = {}


@pytest.mark.parametrize("kw,ranks", [
    (dict(pp=2, dp=2), 4),
    (dict(pp=3, micro_batches=5), 3),
    (dict(pp=2, pipeline_schedule="gpipe", micro_batches=1), 2),
    (dict(pp=2, pipeline_schedule="zb-h1", micro_batches=4), 2),
    (dict(pp=2, pipeline_schedule="interleaved", virtual_stages=2), 2),
    (dict(pp=2, dp=2, recompute=True, pipeline_schedule="gpipe"), 4),
    (dict(pp=2, tp=2, dp=2), 8),
    (dict(pp=1, tp=2), 2),
    (dict(pp=3, tp=2, pipeline_schedule="zb-h1", micro_batches=3), 6)])
def test_dp_x_pp_equals_one_process(kw, ranks):
    ref = REF.setdefault("p", train.run(_cfg(), log=lambda *a: None)[1].params)
    out = run_ranks(ranks, lambda c: train.run(_cfg(**kw), c, log=lambda *a: None))
    p = out[0][1].params
    assert all(np.array_equal(o[1].params, p) for o in out)  # the same bytes everywhere
    rel = np.abs(p - ref).max() / np.abs(ref).max()
    assert rel < 1e-12, rel  # measured 1.4e-16 to 1.9e-16
    assert out[0][0]["layout"]["pp"] == kw["pp"]
    assert out[0][0]["layout"]["tp"] == kw.get("tp", 1)


@pytest.mark.parametrize("kw,msg", [
    (dict(accumulation=2), "use --micro-batches .* instead of --accumulation 2"),
    (dict(dropout=0.1), "--dropout is not supported with pipeline parallelism yet"),
    (dict(metrics="m.jsonl"), "--metrics is not supported"),
    (dict(tp=2, hidden="24,1,16"), "--tp 2: hidden layers of 1 units cannot be split")])
def test_what_pipeline_training_does_not_do_yet_is_refused_by_name(kw, msg):
    with pytest.raises(train.ConfigError, match=msg):
        run_ranks(2 * kw.get("tp", 1),
                  lambda c: train.run(_cfg(pp=2, **kw), c, log=lambda *a: None))


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not found")
def test_cli_dp_x_pp_learns_and_bad_layouts_are_one_message():
    mpi = [shutil.which("mpiexec"), "-n"]
    r = run(mpi + ["4", sys.executable, "-m", "hpcml.train", "--pp", "2", "--dp", "2",
                   "--pipeline-schedule", "1f1b", "--micro-batches", "8", "--progress",
                   "false"], limit=150)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert s["layout"] == {"dp": 2, "pp": 2, "tp": 1} and s["test_accuracy"] >= 0.97, s
    for n, args, msg in (("4", ["--pp", "3"], "dp x pp x tp = (auto) x 3 x 1 does not match "
                                              "the 4 ranks"),
                         ("2", ["--pp", "2", "--zero", "1"], "ZeRO is not supported with "
                                                             "pipeline parallelism yet"),
                         ("2", ["--pp", "2", "--hidden", ""], "has 1 parameterised layers, "
                                                              "fewer than 2 stages")):
        r = run(mpi + [n, sys.executable, "-m", "hpcml.train", *args], limit=60)
        assert r.returncode in (1, 2) and r.stderr.count("error: ") == 1, r.stderr
        assert msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_model_too_big_for_one_rank_trains_split_and_is_refused_whole():
    """--max-rank-memory, measured from the arrays: a 64-512-512-512-10 float64 MLP with
    SGD momentum holds 12.9 MiB per rank under data parallelism (3 x 563,722 x 8 bytes),
    about a quarter at pp 2 x tp 2."""
    from hpcml.comm.guard import CollectiveError
    kw = dict(hidden="512,512,512", max_steps=3, max_rank_memory=8 / 1024)  # 8 MiB
    with pytest.raises(CollectiveError, match=r"need 12\.9 MiB on the fullest rank "
                                              r"\(data parallel\); --max-rank-memory "
                                              r"allows 8\.0 MiB: split the model"):
        run_ranks(2, lambda c: train.run(_cfg(**kw), c, log=lambda *a: None))
    out = run_ranks(4, lambda c: train.run(_cfg(pp=2, tp=2, **kw), c, log=lambda *a: None))
    assert out[0][0]["step"] == 3
