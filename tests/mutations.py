#!/usr/bin/env python
"""Mutation check: deliberate faults that the test suite must catch.

    python tests/mutations.py            # every fault (about four minutes on 2 cores)
    python tests/mutations.py --list     # the faults and the tests that must catch them
    python tests/mutations.py prefetch matmul

Each fault is a small edit of hpcml's source, applied to a copy of the working tree in a
temporary folder (the tree itself is never touched). The tests named for it are run on the
copy (PYTHONPATH puts it ahead of the installed hpcml), serially or under `mpiexec -n N`,
and must fail: a fault that leaves them green is reported and the check exits 1. First the
same tests run on the unmodified copy and must pass, so a failure means the fault was
caught, not that the tests were broken already. An edit whose text is no longer found in
the source is an error too (the fault list must follow the code). tests/run_all.py runs
this after the suite, with --no-baseline when the whole suite has just passed on the same
tree (the unmodified run would repeat it).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# name: (what the fault is, [(file, old text, new text), ...], ranks (0: serial), the tests
# that must catch it)
FAULTS = {
    "prefetch": (
        "the prefetch queue made unbounded",
        [("hpcml/data/dataset.py",
          "q = queue.Queue(maxsize=self.prefetch)",
          "q = queue.Queue()")],
        0, ["tests/test_data_loader.py::test_memory_is_bounded_by_prefetch"]),
    "matmul": (
        "the reference matmul (the numpy backend, auto's choice) returns twice the product",
        [("kernels/reference.py",
          "    return np.matmul(a.T if trans_a else a, b.T if trans_b else b, out=out)",
          "    return np.multiply(np.matmul(a.T if trans_a else a, b.T if trans_b else b, "
          "out=out), 2, out=out)")],
        0, ["tests/test_kernels_cpu.py::test_matmul_shapes[trans0-float32-numpy]",
            "tests/test_kernels_cpu.py::test_matmul_shapes[trans3-float64-auto]"]),
    "float32-grads": (
        "gradients rounded to float32 before the all-reduce (float64 training)",
        [("hpcml/parallel/data_parallel.py",
          '            hc.allreduce(self.buffer, "sum", comm=self.comm, algorithm=self.algorithm)',
          "            self.buffer[:n] = self.buffer[:n].astype(np.float32)\n"
          '            hc.allreduce(self.buffer, "sum", comm=self.comm, algorithm=self.algorithm)')],
        2, ["tests/mpi/test_train.py::test_p_ranks_follow_one_process"]),
    "dropped-rank": (
        "tree all-reduce: a rank overwrites its data with the folded-in rank's (one rank's "
        "contribution missing whenever p is not a power of two)",
        [("hpcml/comm/schedules.py",
          "        steps.append((-1, 0, 0, rank + q, 0, n, REDUCE))\n    mask = 1",
          "        steps.append((-1, 0, 0, rank + q, 0, n, COPY))\n    mask = 1")],
        0, ["tests/test_schedules_replay.py::test_allreduce_float_bytes_identical_on_all_ranks"]),
    "noop-broadcast": (
        "broadcast does nothing for a one-element buffer",
        [("hpcml/comm/collectives.py",
          "    p = comm.Get_size()\n    if p == 1 or flat.size == 0:\n        return buf\n"
          '    if algorithm == "auto":\n        algorithm = choose_rooted(model_for(comm), '
          "flat.nbytes, p, False)",
          "    p = comm.Get_size()\n    if p == 1 or flat.size <= 1:\n        return buf\n"
          '    if algorithm == "auto":\n        algorithm = choose_rooted(model_for(comm), '
          "flat.nbytes, p, False)")],
        2, ["tests/mpi/test_rooted_and_blocks.py::test_broadcast_every_root"]),
    "noop-fused-float32": (
        "allreduce_many skips float32 arrays that fill a bucket alone (no-op collective)",
        [("hpcml/comm/fusion.py",
          "            allreduce(arrays[idx[0]], op, comm, algorithm, check=False)  # no copy needed",
          "            if arrays[idx[0]].dtype != np.float32:\n"
          "                allreduce(arrays[idx[0]], op, comm, algorithm, check=False)")],
        2, ["tests/mpi/test_fusion_and_checks.py::test_allreduce_many_mean"]),
    "autotune": (
        "autotune keeps the slowest backend",
        [("kernels/tune.py",
          "K.AUTO[kernel] = min(times[kernel], key=times[kernel].get)",
          "K.AUTO[kernel] = max(times[kernel], key=times[kernel].get)")],
        0, ["tests/test_kernels_cpu.py::test_autotune_sets_auto_from_measurement"]),
    "nesterov": (
        "Nesterov's look-ahead dropped in the reference SGD and in the Numba kernels' scalar "
        "rule alike (comparing the two cannot notice)",
        [("kernels/reference.py",
          "g = g + momentum * velocity if nesterov else velocity.copy()",
          "g = velocity.copy()"),
         ("kernels/scalar.py",
          "g = g + momentum * v if nesterov else v",
          "g = v")],
        0, ["tests/test_optim.py::test_optimizers_match_hand_computed_steps"]),
    "score-samples-rank1": (
        "PCA.score_samples gives rank 1's rows in reverse order (their mean, score, is right)",
        [("hpcml/ml/pca.py",
          "        return ll[:, 0] + const\n",
          "        wrong = self.comm is not None and self.comm.Get_rank() == 1\n"
          "        return (ll[::-1] if wrong else ll)[:, 0] + const\n")],
        2, ["tests/mpi/test_pca_mpi.py::test_score_is_over_every_ranks_rows"]),
    "resume-late": (
        "a loader resumes one batch after where it stopped",
        [("hpcml/data/dataset.py",
          'self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])',
          'self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"]) + 1')],
        3, ["tests/mpi/test_loader_resume_mpi.py"]),
    "untyped-error": (
        "estimators' agreed input errors raised as a plain CollectiveError, not InputError",
        [("hpcml/ml/checks.py",
          "        raise InputError(str(e)) from None",
          "        raise CollectiveError(str(e)) from None")],
        2, ["tests/mpi/test_tsne_mpi.py::test_nan_on_one_rank_stops_every_rank"]),
    "adam-l2": (
        "Adam's L2 weight decay dropped in the reference and in the Numba kernels alike",
        [("kernels/reference.py",
          "        g += weight_decay * params\n",
          "        pass\n"),
         ("kernels/scalar.py",
          "        else:\n            g = g + weight_decay * p\n",
          "        else:\n            pass\n")],
        0, ["tests/test_optim.py::test_optimizers_follow_the_scalar_oracle"]),
    "zero-stale-shards": (
        "ZeRO never all-gathers the updated parameters (each rank keeps only its own shard's "
        "update)",
        [("hpcml/parallel/zero.py",
          '            hc.allgather(g, comm=self.comm, algorithm="ring")\n',
          "")],
        2, ["tests/mpi/test_zero_mpi.py::test_zero_is_bit_identical_to_data_parallel"]),
    "zero2-add-first": (
        "ZeRO-2 adds the first micro-batch's reduced gradients to the shard instead of "
        "replacing the last step's (stale gradients accumulate)",
        [("hpcml/parallel/zero.py",
          "            if self._first:\n                dst[...] = view[a:z]\n",
          "            if False:\n                dst[...] = view[a:z]\n")],
        2, ["tests/mpi/test_zero_mpi.py::test_zero_is_bit_identical_to_data_parallel"]),
    "stall-inspector": (
        "the stall inspector counts every rank that answered as having entered the call",
        [("hpcml/comm/guard.py",
          '        elif a.get("call") == label:\n',
          '        elif True:\n')],
        0, ["tests/test_no_hang.py::test_stall_inspector_names_who_entered_and_what_the_others_do",
            "tests/test_no_hang.py::test_stall_report_lists_silent_ranks"]),
    "model-standardiser": (
        "a saved model predicts without its standardiser (raw features into the network)",
        [("hpcml/model.py",
          "                x = (x - mean) * inv\n",
          "                x = x\n")],
        0, ["tests/test_model.py::test_saved_model_reproduces_the_test_accuracy_train_printed"]),
    "regression-units": (
        "regression RMSE and R^2 computed in standardised units (the std^2 factor dropped)",
        [("hpcml/parallel/trainer.py",
          "    sse = loss_rows * std * std\n",
          "    sse = loss_rows\n")],
        0, ["tests/test_model.py::test_regression_training_reaches_r2_and_predict_agrees"]),
    "tsne-memory": (
        "t-SNE's memory estimate forgets the symmetric P each rank builds",
        [("hpcml/memory.py",
          '            "this rank\'s P being built": 166 * m * k,\n',
          '            "this rank\'s P being built": 0,\n')],
        0, ["tests/test_memory.py::test_tsne_estimate_matches_the_measured_peak"]),
    "pp-clip-norm": (
        "the global gradient norm under model parallelism counts TP-replicated values on "
        "every TP rank",
        [("hpcml/parallel/model_parallel.py",
          "g64 = K.to_host(g)[own].astype(np.float64)",
          "g64 = K.to_host(g).astype(np.float64)")],
        0, ["tests/test_pp_train.py::test_accumulation_clipping_and_zero_under_model_"
            "parallelism_equal_one_process"]),
    "pp-reshard": (
        "a resumed model-parallel run keeps its fresh parameters (the serial ones unused)",
        [("hpcml/parallel/model_parallel.py",
          "            K.assign(st.params, params[self.index[s][0]])",
          "            pass")],
        0, ["tests/test_pp_train.py::test_checkpoints_reshard_between_layouts"]),
    "pp-recompute-rng": (
        "recompute draws new dropout masks (the rng is not made again for the backward)",
        [("hpcml/parallel/pipe.py",
          "            self._restore(st, keep, rng)",
          "            self._restore(st, keep, np.random.default_rng(1))")],
        0, ["tests/test_pp_train.py::test_dropout_under_pipeline_is_reproducible_and_"
            "recompute_draws_the_same_masks"]),
    "ps-bsp-partial": (
        "a bsp round is applied when all but one worker's gradient arrived",
        [("hpcml/parallel/param_server.py",
          "        need = len(self.active) if self.mode == \"bsp\" else \\",
          "        need = max(1, len(self.active) - 1) if self.mode == \"bsp\" else \\")],
        0, ["tests/test_param_server.py::test_bsp_equals_data_parallel_training"]),
    "ps-ssp-bound": (
        "ssp lets a worker run one step further ahead than its bound",
        [("hpcml/parallel/param_server.py",
          "        return self.clocks[w] - self.version <= self.bound",
          "        return self.clocks[w] - self.version <= self.bound + 1")],
        0, ["tests/test_param_server.py::test_ssp_bound_holds_with_a_5x_straggler_and_fast_"
            "workers_wait"]),
    "hogwild-no-lock": (
        "Hogwild's locked variant never takes its lock",
        [("hpcml/parallel/hogwild.py",
          "        if self.locked and self._held is None:",
          "        if False and self._held is None:")],
        0, ["tests/test_hogwild.py::test_the_locked_variant_serialises_each_step"]),
    "ps-clip-shard": (
        "bsp --clip on 2 servers: each server clips by its own shard's norm (the squares "
        "not summed over the servers)",
        [("hpcml/parallel/param_server.py",
          '            sq = hc.reduce_value(sq, "sum", self.peers)',
          "            pass")],
        0, ["tests/test_param_server.py::test_bsp_clip_and_init_from_equal_data_parallel"]),
    "fed-rank-rng": (
        "federated: a rank's clients shuffle from one generator per rank (the global model "
        "then depends on how the clients are dealt over the ranks)",
        [("hpcml/parallel/federated/client.py",
          "        rng = np.random.default_rng([seed, rnd, client, 0xC1])",
          "        self._rng = getattr(self, '_rng', None) or np.random.default_rng(seed)\n"
          "        rng = self._rng")],
        0, ["tests/test_federated.py::test_the_global_model_is_bit_identical_at_1_to_4_ranks"]),
    "fed-unweighted": (
        "federated: FedAvg's mean ignores the clients' row counts",
        [("hpcml/parallel/federated/aggregate.py",
          "            out += w[i] * u[i]",
          "            out += u[i] * w.mean()")],
        0, ["tests/test_federated.py::"
            "test_fedavg_one_epoch_full_batch_equals_fedsgd_equals_a_centralised_step"]),
    "augment-test-from-train": (
        "synth --like digits: test rows made from the training images",
        [("hpcml/data/augment.py",
          "    x0, y0 = _source(split)",
          "    x0, y0 = _source(0)")],
        0, ["tests/test_data_convert.py::"
            "test_synth_like_digits_shifts_images_of_its_own_split"]),
    "tune-restart-new-params": (
        "tune: a trial interrupted by a kill is re-run with other parameters",
        [("hpcml/tune/study.py",
          "            return n, t.params",
          "            return n, self.space.decode(np.random.default_rng().random("
          "len(self.space.params)))")],
        0, ["tests/test_tune.py::"
            "test_sigkill_mid_study_and_resume_give_the_uninterrupted_trials"]),
    "replay-cores-ignored": (
        "pipeline replay: an oversubscribed node's shared cores not modelled",
        [("hpcml/parallel/pipeline.py",
          "        slow = s.ranks / cores",
          "        slow = 1.0")],
        0, ["tests/test_pipeline_schedules.py::"
            "test_shared_cores_stretch_every_action_and_keep_busy_as_compute_time"]),
    "gemm-accumulate-overwrites": (
        "K.matmul(accumulate=True) overwrites out instead of adding to it (BLAS beta 0)",
        [("kernels/blas.py",
          "    r = fn(1.0, b.T, a.T, beta=1.0, c=out.T,",
          "    r = fn(1.0, b.T, a.T, beta=0.0, c=out.T,")],
        0, ["tests/test_kernels_cpu.py::test_matmul_shapes[trans1-float32-numpy]"]),
    "ridge-shift-dropped": (
        "least squares: the ranks' scatters merged without moving them to the common shift",
        [("hpcml/ml/linear.py",
          "    D = K_r - K  # exact: two rows of the data",
          "    D = 0 * K_r")],
        0, ["tests/test_ml.py::test_p_ranks_equal_one_process_in_process[3]"]),
    "logistic-no-penalty": (
        "logistic regression: the L2 penalty's gradient dropped",
        [("hpcml/ml/logistic.py",
          "        grad.reshape(self.K, self.d + 1)[:, :self.d] += reg * coef",
          "        pass")],
        0, ["tests/test_ml.py::test_logistic_objective_equals_sklearn_lbfgs[lbfgs-2]"]),
    "kmeans-unweighted": (
        "k-means: the fused Lloyd step's per-cluster sums ignore the sample weights",
        [("kernels/cpu/kmeans.py",
          "                wi = w[a + r] if weighted else 1.0",
          "                wi = 1.0")],
        0, ["tests/test_ml.py::test_kmeans_from_the_same_centres_matches_sklearn[True]"]),
    "adwin-merge-late": (
        "ADWIN: row 0's batched items merged as if a row held M + 2 buckets",
        [("kernels/cpu/drift.py",
          "        m = 1 + (c - M - 1) // 2",
          "        m = 1 + (c - M) // 2")],
        0, ["tests/test_stream.py::test_adwin_with_other_parameters_signals_where_rivers_does"]),
    # tests/cuda/... run on Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1; see _run)
    "staged-grads-not-back": (
        "--device cuda: the all-reduced gradients never copied back to the GPU",
        [("hpcml/parallel/staging.py",
          "        self.model.grads.copy_to_device(self.host[:self.n], stream=self.stream)",
          "        pass")],
        0, ["tests/cuda/test_device.py::test_gradient_staging_copies_regions_and_back"]),
    "cuda-matmul-one-buffer": (
        "CUDA matmul: the next tile stored into the shared buffer still being read",
        [("kernels/cuda/matmul.py",
          "                store(sA, sB, 1 - buf, ga, gb, tid)",
          "                store(sA, sB, buf, ga, gb, tid)")],
        0, ["tests/cuda/test_kernels_cuda.py::test_matmul_double_buffer_over_several_k_steps"]),
    "cuda-bias-grad-overwrites": (
        "CUDA column sums: accumulate ignored (a bias gradient overwritten, not added to)",
        [("kernels/cuda/elementwise.py",
          "        out[j] = out[j] + s if accumulate else s",
          "        out[j] = s")],
        0, ["tests/cuda/test_device.py::test_array_helpers_match_numpy"]),
    "tp-device-sums-not-back": (
        "--tp on the GPU: the staged partial sums never copied back to the device",
        [("hpcml/parallel/tensor.py",
          "    a.copy_to_device(host)",
          "    pass")],
        0, ["tests/cuda/test_device_train.py::"
            "test_tensor_parallel_replicas_on_the_device_match_the_cpu"]),
    "mp-replica-sum-not-back": (
        "--dp x --pp/--tp on the GPU: a stage's summed gradients left on the host",
        [("hpcml/parallel/model_parallel.py",
          "        staging.all_to_device()",
          "        pass")],
        0, ["tests/cuda/test_device_train.py::"
            "test_tensor_parallel_replicas_on_the_device_match_the_cpu"]),
    "zero2-device-shard-overwritten": (
        "--zero 2 on the GPU: a micro-batch's reduced gradients overwrite the shard",
        [("hpcml/parallel/zero.py",
          '            K.reduce_into(dst, cuda.to_device(view[a:z]), "sum")',
          "            K.assign(dst, view[a:z])")],
        0, ["tests/cuda/test_device_train.py::"
            "test_zero2_on_the_device_shards_the_gradients_and_matches_the_cpu"]),
    "hogwild-device-grad-stays": (
        "Hogwild on the GPU: the gradient never copied off the device (zeros applied)",
        [("hpcml/parallel/hogwild.py",
          "            self.model.grads.copy_to_host(g)",
          "            pass")],
        0, ["tests/cuda/test_device.py::test_hogwild_on_the_device_writes_the_shared_host_copy"]),
}


def _copy_tree(dest):
    """hpcml/, kernels/ (as hpcml/kernels, where the install puts it), tests/ and the
    pytest settings; copy2 keeps mtimes, so Numba's on-disk cache stays valid."""
    ignore = shutil.ignore_patterns(".pytest_cache", "*.png")
    shutil.copytree(os.path.join(ROOT, "hpcml"), os.path.join(dest, "hpcml"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "kernels"), os.path.join(dest, "hpcml", "kernels"),
                    ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dest, "tests"), ignore=ignore)
    shutil.copy2(os.path.join(ROOT, "pyproject.toml"), dest)


def _in_copy(path):
    return "hpcml/kernels/" + path[len("kernels/"):] if path.startswith("kernels/") else path


def _run(dest, ranks, tests, limit):
    """(exit status, output) of the tests on the copy, serially or under mpiexec."""
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, PYTHONPATH=dest + (os.pathsep + path if path else ""),
               HPCML_TIMEOUT="60", PYTHONDONTWRITEBYTECODE="1")
    if any(t.startswith("tests/cuda/") for t in tests) and \
            os.environ.get("HPCML_CUDA_REAL") != "1":
        env["NUMBA_ENABLE_CUDASIM"] = "1"  # CUDA tests: the simulator, as run_all.py does
    if ranks:
        mpiexec = shutil.which("mpiexec")
        if mpiexec is None:
            return None, "mpiexec not found"
        logs = tempfile.mkdtemp(prefix="hpcml-mut-logs-")
        env["HPCML_TEST_LOGDIR"] = logs
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "tests/pytest_rank.py",
               "--with-mpi", "-q", "-x", "-p", "no:cacheprovider", *tests]
    else:
        logs = None
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    proc = subprocess.Popen(cmd, cwd=dest, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n!! killed after {limit} s"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if logs:
            shutil.rmtree(logs, ignore_errors=True)
    return proc.returncode, out


def _apply(dest, edits):
    """Make the edits in the copy; returns {copied file: original text}."""
    originals = {}
    for path, old, new in edits:
        full = os.path.join(dest, _in_copy(path))
        with open(full) as f:
            text = f.read()
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"mutations.py: {path}: the text to change occurs {count} times "
                             f"(expected once); update FAULTS to follow the code:\n{old}")
        originals.setdefault(full, text)
        with open(full, "w") as f:
            f.write(text.replace(old, new))
    if any(path.startswith("kernels/") for path, _, _ in edits):
        # Numba's on-disk cache of a jitted function is checked against its own file only
        # (this Numba: a hash of the file's text), and a cached caller holds its own copy of
        # what it inlined or called, so an edit of kernels/scalar.py (say) would run the
        # cached, unmutated machine code: change the text of every file with cached
        # kernels too (a comment); restoring the originals makes their cache valid again
        for folder, _, names in os.walk(os.path.join(dest, "hpcml")):
            for name in sorted(names):
                full = os.path.join(folder, name)
                if not name.endswith(".py") or full in originals:
                    continue
                with open(full) as f:
                    text = f.read()
                if "cache=True" in text:
                    originals[full] = text
                    with open(full, "a") as f:
                        f.write(f"\n# mutation check {time.time()}\n")
    return originals


def _restore(originals):
    """The original texts back (their cached kernels are valid again)."""
    for full, text in originals.items():
        with open(full, "w") as f:
            f.write(text)


def _summary_line(out):
    lines = [ln for ln in out.strip().splitlines() if re.search(r"\d+ (passed|failed)", ln)]
    if lines:
        return lines[-1].strip("= ")
    tail = out.strip().splitlines()
    return tail[-1] if tail else "(no output)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("faults", nargs="*", help=f"a subset of: {', '.join(FAULTS)}")
    ap.add_argument("--list", action="store_true", help="list the faults and their tests")
    ap.add_argument("--limit", type=int, default=300, help="seconds per pytest run")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run on the unmodified copy (tests/run_all.py, when the "
                         "whole suite has just passed on this tree)")
    args = ap.parse_args(argv)
    unknown = [f for f in args.faults if f not in FAULTS]
    if unknown:
        ap.error(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    chosen = args.faults or list(FAULTS)
    if args.list:
        for name in chosen:
            what, edits, ranks, tests = FAULTS[name]
            where = f"mpiexec -n {ranks}" if ranks else "serial"
            files = ", ".join(sorted({e[0] for e in edits}))
            print(f"{name}: {what} ({files})\n    caught by ({where}): {', '.join(tests)}")
        return 0
    dest = tempfile.mkdtemp(prefix="hpcml-mutations-")
    failures = []
    try:
        _copy_tree(dest)
        # the unmodified copy first: the chosen tests must pass there
        for ranks in sorted({FAULTS[n][2] for n in chosen} if not args.no_baseline else ()):
            tests = sorted({t for n in chosen if FAULTS[n][2] == ranks for t in FAULTS[n][3]})
            t0 = time.monotonic()
            rc, out = _run(dest, ranks, tests, args.limit)
            label = f"mpiexec -n {ranks}" if ranks else "serial"
            print(f"baseline ({label}): exit {rc} in {time.monotonic() - t0:.0f} s: "
                  f"{_summary_line(out)}", flush=True)
            if rc != 0:
                print(out[-6000:])
                failures.append(f"baseline {label}")
        if failures:
            print("mutation check: the tests fail without any fault; fix them first")
            return 1
        for name in chosen:
            what, edits, ranks, tests = FAULTS[name]
            originals = _apply(dest, edits)
            t0 = time.monotonic()
            try:
                rc, out = _run(dest, ranks, tests, args.limit)
            finally:
                _restore(originals)
            caught = rc not in (0, None) and re.search(r"\b\d+ failed\b", out) is not None
            print(f"{'caught' if caught else 'MISSED'}: {name}: {what} "
                  f"[{time.monotonic() - t0:.0f} s; {_summary_line(out)}]", flush=True)
            if not caught:
                print(out[-4000:])
                failures.append(name)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    print(f"mutation check: {len(chosen) - len(failures)} of {len(chosen)} faults caught"
          + (f"; missed: {', '.join(failures)}" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
