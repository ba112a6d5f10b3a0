"""`mpiexec -n 2 python -m hpcml.train --device cuda` against `--device cpu` (simulator in
CI: one simulated GPU, so the two ranks share it with --share-gpus), and the bad inputs:
no GPU, more ranks than GPUs, too little GPU memory, a strategy without a GPU path."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

from hpcml.kernels.cuda import available, why_unavailable
from procs import finish, start

MPIEXEC = shutil.which("mpiexec")
pytestmark = [pytest.mark.skipif(not available(), reason=str(why_unavailable())),
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found")]
#: 20 steps, 2 ranks, float32: measured max |cpu - cuda| 7.5e-8 on the 6-feature data below
#: (params up to 0.91, moved up to 0.67 from their start); 6.0e-8 on digits
ATOL = 5e-7
RUN = ["--hidden", "8", "--batch-size", "16", "--epochs", "1", "--test-data", "none",
       "--progress", "false"]
SHARE = ["--share-gpus", "true"]  # the simulator shows one GPU: two ranks share it


@pytest.fixture(scope="module", autouse=True)
def _data(tmp_path_factory):
    """6 features, 3 classes: the simulator runs a matmul launch per 8 columns of the
    input (K), so the runs stay short (digits' 64 features cost 5x the time per step)."""
    from procs import run
    folder = str(tmp_path_factory.mktemp("data") / "synth")
    r = run([sys.executable, "-m", "hpcml.data", "synth", folder, "--rows", "400",
             "--features", "6", "--classes", "3", "--shards", "2", "--seed", "0"], limit=60)
    assert r.returncode == 0, r.stderr
    RUN.extend(["--data", folder])
    yield
    del RUN[-2:]  # (the data option)


def _train(tmp_path, name, args, env=None, limit=240, ranks=2):
    proc = start([MPIEXEC, "-n", str(ranks), sys.executable, "-m", "hpcml.train", *RUN,
                  *SHARE, *args,
                  "--save-model", str(tmp_path / f"{name}.h5")], env=env)
    rc, out, err = finish(proc, limit)
    assert rc == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _params(path):
    import hpcml
    return hpcml.load_model(str(path)).net.params


@pytest.mark.timeout(420)
def test_two_ranks_on_cuda_follow_the_cpu_run_for_20_steps(tmp_path):
    cpu = _train(tmp_path, "cpu", ["--max-steps", "20", "--device", "cpu"])
    gpu = _train(tmp_path, "gpu", ["--max-steps", "20", "--device", "cuda"])
    assert gpu["device"] == "cuda" and gpu["comm"] == "staged" and gpu["gpu_shared"]
    assert gpu["step"] == cpu["step"] == 20
    a, b = _params(tmp_path / "cpu.h5"), _params(tmp_path / "gpu.h5")
    np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
    start_ = _params_at_init(tmp_path)
    assert np.abs(a - start_).max() > 100 * ATOL  # the runs moved far beyond the tolerance


def _params_at_init(tmp_path):
    _train(tmp_path, "init", ["--max-steps", "1", "--lr", "1e-30", "--device", "cpu"])
    return _params(tmp_path / "init.h5")


@pytest.mark.timeout(300)
def test_overlapped_staging_matches_the_cpu_overlap(tmp_path):
    args = ["--max-steps", "2", "--overlap", "true", "--accumulation", "2", "--clip", "1.0"]
    _train(tmp_path, "cpu", args + ["--device", "cpu"])
    _train(tmp_path, "gpu", args + ["--device", "cuda"])
    np.testing.assert_allclose(_params(tmp_path / "gpu.h5"), _params(tmp_path / "cpu.h5"),
                               atol=ATOL, rtol=0)


def _fails(args, env=None):
    proc = start([MPIEXEC, "-n", "2", sys.executable, "-m", "hpcml.train", *RUN,
                  "--max-steps", "1", *args], env=env)
    rc, out, err = finish(proc, 120)
    assert rc != 0
    assert "Traceback" not in err, err
    return err


def test_no_gpu_and_no_simulator_is_one_message_naming_both_ranks():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    err = _fails(["--device", "cuda"], env)
    assert "failed on 2 of 2 ranks: ranks 0-1: --device cuda on" in err
    assert "no CUDA GPU" in err and "--device cpu" in err


def test_more_ranks_than_gpus_needs_share_gpus():
    err = _fails(["--device", "cuda"])
    assert "2 ranks on" in err and "1 GPU(s)" in err and "--share-gpus" in err


def test_too_little_gpu_memory_is_refused_before_training():
    err = _fails(["--device", "cuda", "--share-gpus", "true", "--gpu-memory", "1e-6"])
    assert "placing the model on the GPU failed on 2 of 2 ranks" in err
    assert "--gpu-memory allows" in err and "--batch-size" in err


@pytest.mark.parametrize("args", [["--zero", "2"], ["--parallel", "hogwild"], ["--pp", "2"]])
def test_strategies_without_a_gpu_path_are_named(args):
    err = _fails(["--device", "cuda", *args])
    assert "--device cuda runs data parallel training, ZeRO-1 and the parameter" in err


@pytest.mark.timeout(300)
def test_parameter_server_workers_on_the_device_match_the_cpu(tmp_path):
    """2 GPU workers push gradients from pinned copies to a CPU server and pull the
    parameters back onto the GPU (bsp, so both runs apply the same rounds)."""
    args = ["--max-steps", "3", "--parallel", "ps", "--servers", "1"]
    _train(tmp_path, "cpu", args + ["--device", "cpu"], ranks=3)
    gpu = _train(tmp_path, "gpu", args + ["--device", "cuda"], ranks=3)
    assert gpu["step"] == 3
    np.testing.assert_allclose(_params(tmp_path / "gpu.h5"), _params(tmp_path / "cpu.h5"),
                               atol=ATOL, rtol=0)


@pytest.mark.timeout(300)
def test_zero1_on_the_device_matches_zero1_on_the_cpu(tmp_path):
    """Reduce-scatter of the staged gradients, the shard's Adam update and clipping on the
    GPU, the all-gather back through the host."""
    args = ["--max-steps", "4", "--zero", "1", "--algorithm", "ring", "--clip", "0.5",
            "--optimizer", "adam"]
    cpu = _train(tmp_path, "cpu", args + ["--device", "cpu"])
    gpu = _train(tmp_path, "gpu", args + ["--device", "cuda"])
    assert gpu["optimizer_state_bytes"] == cpu["optimizer_state_bytes"]  # the shard's
    np.testing.assert_allclose(_params(tmp_path / "gpu.h5"), _params(tmp_path / "cpu.h5"),
                               atol=ATOL, rtol=0)


def _one_rank(args):
    proc = start([sys.executable, "-m", "hpcml.train", *RUN, "--device", "cuda",
                  "--optimizer", "adam", "--schedule", "constant", *args])
    rc, out, err = finish(proc, 150)
    assert rc == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_resume_on_the_device_is_bit_identical(tmp_path):
    """The optimizer state and parameters go to the checkpoint as host copies and come
    back onto the GPU: 2 + 1 steps equal 3 uninterrupted, bit for bit."""
    whole = _one_rank(["--max-steps", "3"])
    ck = str(tmp_path / "ck")
    _one_rank(["--max-steps", "2", "--checkpoint-dir", ck, "--checkpoint-every", "2"])
    resumed = _one_rank(["--max-steps", "3", "--checkpoint-dir", ck, "--resume", "auto"])
    assert resumed["resumed_from"] and resumed["step"] == 3
    assert resumed["params_sha256"] == whole["params_sha256"]
