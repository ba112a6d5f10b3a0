"""hpcml: machine learning at HPC scale on MPI ranks, NumPy buffers and Numba kernels."""
from setuptools import setup

setup(
    name="hpcml",
    version="0.1.0",
    description="Distributed training and large-scale ML over MPI (mpi4py), NumPy and Numba",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ is installed as hpcml.kernels: nothing named `kernels` lands in site-packages.
    packages=["hpcml", "hpcml.comm", "hpcml.bench", "hpcml.data", "hpcml.data.builtin",
              "hpcml.parallel", "hpcml.ml", "hpcml.kernels", "hpcml.kernels.cpu", "hpcml.kernels.cuda"],
    package_dir={"hpcml": "hpcml", "hpcml.kernels": "kernels"},
    # built-in datasets (manifest + shards) ship inside the package
    package_data={"hpcml.data.builtin": ["digits/*/manifest.json", "digits/*/*.h5"]},
    install_requires=[
        "mpi4py>=4",
        "numpy>=1.23",
        "numba>=0.58",
        "h5py>=3.8",
        "tqdm>=4.60",  # progress bars on rank 0
        "matplotlib>=3.5",  # every job draws its PNG (the numbers are written first)
        "scipy>=1.9",  # hpcml.tune: Sobol points, the GP's fit (L-BFGS-B), normal CDFs
    ],
    extras_require={
        # The MPI runtime as a wheel from PyPI (no system MPI, no compiler). On a cluster,
        # leave this extra out and build mpi4py against the site MPI (see README).
        "mpich": ["mpich"],
        "plot": [],  # matplotlib is a runtime dependency now; kept so old commands work
        # --tensorboard DIR: event files through tensorboardX's writer (no TensorFlow)
        "tensorboard": ["tensorboardX>=2.6"],
        # Numba CUDA for real GPUs (the CUDA simulator needs nothing extra).
        "cuda": ["numba-cuda"],
        # python -m hpcml.federated --secagg: X25519, HKDF and AES-CTR
        "secagg": ["cryptography>=41"],
        # Benchmark anchors only, never imported by hpcml at run time.
        "bench": ["torch", "matplotlib>=3.5", "scikit-learn", "openTSNE",
                  "optuna",  # hpcml.tune's anchor in python -m hpcml.bench tune
                  "river"],  # the drift detectors' anchor in python -m hpcml.bench ml
        "test": [
            "pytest>=7",
            "pytest-mpi>=0.6",
            "pytest-timeout>=2.1",
            "matplotlib>=3.5",
            "scikit-learn",  # the oracle for PCA and t-SNE (and scipy, its dependency)
            "prometheus_client",  # its text parser checks --prometheus files
            "tensorboardX>=2.6",  # --tensorboard (its protobuf reads the files back)
            "cryptography>=41",  # secure aggregation's tests
            "dp-accounting",  # the oracle for the federated RDP accountant
            "flwr",  # Flower's aggregate functions: the federated aggregators' oracle
            "river",  # ADWIN / Page-Hinkley / DDM: the drift detectors' oracle
        ],
    },
    entry_points={"console_scripts": [
        "hpcml=hpcml.__main__:main",
        "hpcml-train=hpcml.train:main",
        "hpcml-data=hpcml.data.__main__:main",
        "hpcml-pca=hpcml.pca:main",
        "hpcml-tsne=hpcml.tsne:main",
        "hpcml-predict=hpcml.predict:main",
        "hpcml-evaluate=hpcml.evaluate:main",
        "hpcml-bench=hpcml.bench.__main__:main",
        "hpcml-federated=hpcml.federated.job:main",
        "hpcml-tune=hpcml.tune.job:main",
        "hpcml-fit=hpcml.fit:main",
        "hpcml-stream=hpcml.stream:main",
    ]},
)
