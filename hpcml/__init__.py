"""hpcml: machine learning at HPC scale."""
__version__ = "0.1.0"


def load_model(path):
    """The trained model in `path` (a --save-model file, a checkpoint file or folder):
    `.predict(X)`, `.predict_proba(X)`, `.score(X, y)`. See hpcml.model."""
    from hpcml.model import load_model as _load
    return _load(path)
