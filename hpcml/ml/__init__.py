"""hpcml.ml: large-scale ML estimators with scikit-learn's contract, on an array or a
sharded dataset, across the ranks of an optional communicator.

    from hpcml.ml import PCA, TSNE, LinearRegression, Ridge, LogisticRegression, KMeans
    from hpcml.ml import SGDClassifier, SGDRegressor
"""
from .kmeans import KMeans
from .linear import LinearRegression, Ridge
from .logistic import LogisticRegression
from .pca import PCA
from .sgd import SGDClassifier, SGDRegressor
from .tsne import TSNE

__all__ = ["PCA", "TSNE", "LinearRegression", "Ridge", "LogisticRegression", "KMeans",
           "SGDClassifier", "SGDRegressor"]
