"""hpcml: machine learning at HPC scale."""
__version__ = "0.1.0"
