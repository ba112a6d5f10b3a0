"""python -m hpcml.bench <benchmark> [options]: benchmarks that write JSON and PNG.

    mpiexec -n 4 python -m hpcml.bench allreduce     # hand-written vs MPI_Allreduce
    mpiexec -n 2 python -m hpcml.bench calibrate     # measure the alpha-beta cost model
    python -m hpcml.bench kernels                    # Numba/CUDA kernels vs NumPy
    python -m hpcml.bench io                         # data loader vs plain h5py
    python -m hpcml.bench train                      # hpcml.train vs PyTorch DDP
    python -m hpcml.bench dimred                     # PCA, t-SNE vs scikit-learn, openTSNE
    mpiexec -n 2 python -m hpcml.bench p2p           # per-call overhead vs mpi4py's own calls
    mpiexec -n 2 python -m hpcml.bench zero          # ZeRO-1/2 vs data parallelism
    python -m hpcml.bench pipeline                   # pipeline bubble vs the replay; torch pipelining
    python -m hpcml.bench ps                         # parameter server modes vs data parallel
    python -m hpcml.bench federated                  # McMahan's Table 1, FedProx, vs Flower
    python -m hpcml.bench tune                       # hpcml.tune's samplers vs Optuna's
    python -m hpcml.bench ml                         # linear models, k-means, SGD vs
                                                     # scikit-learn; drift detectors vs river
    python -m hpcml.bench scaling --quick            # strong/weak scaling, 1 and 2 hosts,
                                                     # with a fitted alpha-beta-gamma model
    python -m hpcml.bench gpu                        # CUDA paths vs cuBLAS (CuPy), PyTorch
                                                     # on the GPU, PCA/t-SNE vs the CPU
"""
import sys

BENCHMARKS = {
    "allreduce": "hpcml.bench.allreduce",
    "calibrate": "hpcml.bench.calibrate",
    "kernels": "hpcml.bench.kernels",
    "io": "hpcml.bench.io",
    "train": "hpcml.bench.train",
    "dimred": "hpcml.bench.dimred",
    "pca": "hpcml.bench.pca",
    "p2p": "hpcml.bench.p2p",
    "zero": "hpcml.bench.zero",
    "pipeline": "hpcml.bench.pipeline",
    "ps": "hpcml.bench.ps",
    "federated": "hpcml.bench.federated",
    "tune": "hpcml.bench.tune",
    "ml": "hpcml.bench.ml",
    "scaling": "hpcml.bench.scaling",
    "gpu": "hpcml.bench.gpu",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print(__doc__.strip())
        print("\nbenchmarks: " + ", ".join(BENCHMARKS))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib
    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
