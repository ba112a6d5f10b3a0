"""python -m hpcml (or `hpcml`): the jobs, and how to start each.

Run a job on one process with `python -m hpcml.<job>`, on P ranks with
`mpiexec -n P python -m hpcml.<job>`, on a Slurm cluster with `sbatch slurm/train.sbatch`.
Every job takes --help (each setting with its default), --config FILE.toml and --version.
"""
import sys

#: job: (module, what it does, an example)
JOBS = {
    "train": ("hpcml.train", "data-parallel MLP training (ZeRO, checkpoints, resume)",
              "mpiexec -n 4 python -m hpcml.train --epochs 10"),
    "predict": ("hpcml.predict", "predictions of a trained model for a dataset",
                "python -m hpcml.predict model.h5 digits:test --output preds.h5"),
    "evaluate": ("hpcml.evaluate", "a trained model's metrics on a dataset",
                 "python -m hpcml.evaluate model.h5 digits:test"),
    "pca": ("hpcml.pca", "principal components of a sharded dataset",
            "mpiexec -n 2 python -m hpcml.pca digits --components 10"),
    "tsne": ("hpcml.tsne", "a t-SNE embedding of a sharded dataset",
             "mpiexec -n 2 python -m hpcml.tsne digits --output out/tsne"),
    "federated": ("hpcml.federated", "federated learning: virtual clients on MPI ranks "
                  "(FedAvg, FedProx, robust, secure and private aggregation)",
                  "mpiexec -n 4 python -m hpcml.federated --clients 1000 --fraction 0.05"),
    "tune": ("hpcml.tune", "hyperparameter search (grid, random, Sobol, TPE, GP-BO; ASHA) "
             "over MPI ranks, resumable from its journal",
             "mpiexec -n 5 python -m hpcml.tune --objective branin --sampler gp"),
    "fit": ("hpcml.fit", "classic models on ranks: linear, ridge, logistic, SGD, k-means",
            "mpiexec -n 4 python -m hpcml.fit kmeans data/blobs --clusters 16"),
    "stream": ("hpcml.stream", "online learning on a stream, test-then-train, with drift "
               "detection (ADWIN, Page-Hinkley, DDM)",
               "python -m hpcml.stream sgd data/stream --detector adwin"),
    "data": ("hpcml.data", "make, convert, inspect and verify sharded datasets",
             "python -m hpcml.data synth data/blobs --rows 100000 --features 32 "
             "--classes 10 --test-rows 10000"),
    "launch": ("hpcml.launch", "start a job on ranks over several hosts (host list, slots "
               "and reachability checked before any rank starts)",
               "python -m hpcml.launch -n 8 -H node1:4,node2:4 python -m hpcml.train"),
    "bench": ("hpcml.bench", "benchmarks against MPI, PyTorch, scikit-learn, openTSNE",
              "mpiexec -n 2 python -m hpcml.bench allreduce"),
}


def main(argv=None):
    import hpcml
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        print(f"hpcml {hpcml.__version__}")
        return 0
    if argv and argv[0] not in ("-h", "--help"):
        print(f"error: unknown command {argv[0]!r}: hpcml has no sub-commands; start a job "
              f"as python -m hpcml.<job> (jobs below)", file=sys.stderr)
    print(f"hpcml {hpcml.__version__}: machine learning at HPC scale\n")
    print(__doc__.split("\n", 2)[2].strip() + "\n")
    print("jobs:")
    for name, (module, text, example) in JOBS.items():
        print(f"  {name:9} {text}\n  {'':9} {example}")
    return 0 if not argv or argv[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
