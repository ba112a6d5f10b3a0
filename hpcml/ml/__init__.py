"""hpcml.ml: large-scale ML estimators with scikit-learn's contract, on an array or a
sharded dataset, across the ranks of an optional communicator.

    from hpcml.ml import PCA, TSNE
"""
__all__ = []

try:
    from .pca import PCA  # noqa: F401
    __all__.append("PCA")
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from .tsne import TSNE  # noqa: F401
    __all__.append("TSNE")
except ImportError:  # pragma: no cover
    pass
