"""hpcml.ml: large-scale ML estimators with scikit-learn's contract, on an array or a
sharded dataset, across the ranks of an optional communicator.

    from hpcml.ml import PCA, TSNE, LinearRegression, Ridge, LogisticRegression, KMeans
    from hpcml.ml import SGDClassifier, SGDRegressor
"""
from .kmeans import KMeans, MiniBatchKMeans
from .linear import LinearRegression, Ridge
from .logistic import LogisticRegression
from .pca import PCA
from .sgd import SGDClassifier, SGDRegressor
from .tsne import TSNE

__all__ = ["PCA", "TSNE", "LinearRegression", "Ridge", "LogisticRegression", "KMeans",
           "MiniBatchKMeans", "SGDClassifier", "SGDRegressor"]

# SciPy (imported above) brings its own OpenBLAS: if the ranks' thread count was set
# before this import (hpcml.kernels.threads.configure), give it that count too, or each
# rank's SciPy BLAS calls start a thread per core (2 ranks on 2 cores: LogisticRegression
# took 1.1-1.3 s instead of 0.55-0.75 s in python -m hpcml.bench ml)
from hpcml.kernels import threads as _threads  # noqa: E402

_threads.reapply()
