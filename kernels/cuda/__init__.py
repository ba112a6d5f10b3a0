"""Numba CUDA kernels (same signatures as the NumPy references), real GPU or simulator.

Importing this package does not need a GPU; `available()` says whether kernels can run
(a CUDA device, or the simulator with NUMBA_ENABLE_CUDASIM=1).
"""


def available():
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # no CUDA toolkit/driver, or numba-cuda not installed
        return False


def why_unavailable():
    if available():
        return None
    return ("no CUDA GPU and the simulator is off (set NUMBA_ENABLE_CUDASIM=1 to run the "
            "CUDA kernels on the CPU simulator)")


def is_device_array(a):
    """True for a CUDA device array (numba's, or any __cuda_array_interface__ object;
    also the simulator's fake device arrays)."""
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host")
