"""hpcml.kernels: compute kernels with one signature and three backends.

    from hpcml import kernels as K
    c = K.matmul(a, b)                     # 'auto': the measured-fastest backend
    K.adam_update(p, g, m, v, step=1, lr=1e-3)
    K.set_backend("cpu")                   # or "numpy", "cuda", "auto"

Backends: ``numpy`` (reference.py, the specification), ``cpu`` (Numba JIT, cpu/) and
``cuda`` (Numba CUDA, cuda/; device arrays stay on the device). ``auto`` sends device
arrays to ``cuda`` and otherwise picks, per kernel, the backend measured fastest on CPU
(AUTO, measured by benchmarks/kernels.py; `hpcml.kernels.tune.autotune()` re-measures it on
the machine at hand in a few seconds). Pure compute: no MPI, no I/O.
"""
import os

# Idle OpenMP workers (Numba's parallel kernels) sleep instead of spinning, so they do not
# steal the cores BLAS and the other ranks on the node need between kernels. Set before
# Numba starts its thread pool; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from . import reference  # noqa: E402
from .reference import ACTIVATIONS  # noqa: E402
from .reduce import OP_NAMES, UFUNCS  # noqa: E402
from .reduce import reduce_into as reference_reduce  # noqa: E402  (the tests' oracle)

BACKENDS = ("auto", "numpy", "cpu", "cuda")
FLOATS = (np.dtype("float32"), np.dtype("float64"))

#: auto's choice on CPU per kernel, from benchmarks/kernels.py on the 2-core CI machine:
#: BLAS (numpy) wins matmul at every size (Numba reaches 0.6-0.77x); the fused Numba kernels
#: win the updates, bias+activation and softmax+cross-entropy (fewer passes, no temporaries).
AUTO = {"matmul": "numpy", "bias_act": "cpu", "bias_act_backward": "cpu",
        "softmax_xent": "cpu", "sgd_update": "cpu", "adam_update": "cpu",
        "clip_grad_norm": "cpu", "reduce_into": "cpu"}

_backend = os.environ.get("HPCML_KERNEL_BACKEND", "auto")
if _backend not in BACKENDS:
    raise ValueError(f"HPCML_KERNEL_BACKEND must be one of {', '.join(BACKENDS)}, "
                     f"got {_backend!r}")


def set_backend(name):
    """Process-wide backend: auto, numpy, cpu or cuda."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    if name == "cuda":
        _require_cuda()
    _backend = name


def get_backend():
    return _backend


def _require_cuda():
    from .cuda import available, why_unavailable
    if not available():
        raise RuntimeError(f"backend 'cuda' is not usable: {why_unavailable()}")


def _is_device(a):
    return hasattr(a, "__cuda_array_interface__") or hasattr(a, "copy_to_host")


def pick(kernel, backend, *arrays, table=None, cuda=True):
    """The one backend dispatcher of every kernel module: `backend`, else the process-wide
    one; "auto" sends device arrays to cuda and host arrays to table[kernel] (the measured
    choice; this module's AUTO by default). cuda=False: the kernel has no CUDA version: the
    process-wide cuda backend then runs it on the CPU (as auto would), and asking for cuda
    by name, or passing device arrays, is an error. Checks that cuda is usable and that
    device arrays meet cuda."""
    b = backend or _backend
    if b not in BACKENDS:
        raise ValueError(f"{kernel}: unknown backend {b!r}; expected one of "
                         f"{', '.join(BACKENDS)}")
    on_device = any(_is_device(a) for a in arrays)
    if b == "cuda" and not cuda:
        if backend == "cuda" or on_device:
            raise ValueError(f"{kernel}: there is no CUDA version; use backend 'cpu' or "
                             f"'numpy' with host arrays")
        b = "auto"  # the process-wide cuda backend: this helper runs on the CPU
    if b == "auto":
        b = "cuda" if on_device else (table if table is not None else AUTO)[kernel]
    if b == "cuda":
        _require_cuda()
    elif on_device:
        raise TypeError(f"{kernel}: device arrays need backend 'cuda' or 'auto', not {b!r}")
    return b


_pick = pick  # (the name this module's kernels use)


def _float(kernel, name, a):
    if np.dtype(a.dtype) not in FLOATS:
        raise TypeError(f"{kernel}: {name} must be float32 or float64, got {a.dtype}")
    return np.dtype(a.dtype)


def _same(kernel, ref_name, ref, **arrays):
    for name, a in arrays.items():
        if a.shape != ref.shape:
            raise ValueError(f"{kernel}: {name} has shape {a.shape}, {ref_name} {ref.shape}")
        if np.dtype(a.dtype) != np.dtype(ref.dtype):
            raise TypeError(f"{kernel}: {name} is {a.dtype}, {ref_name} {ref.dtype}")


def _flat_inplace(kernel, name, a):
    if not _is_device(a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{kernel}: {name} must be a numpy array, got {type(a).__name__}")
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{kernel}: {name} must be a writable C-contiguous buffer "
                             f"(updates are in place over the flat buffer)")
        return a.reshape(-1)
    return a.reshape(a.size) if len(a.shape) != 1 else a


# --- matmul ----------------------------------------------------------------------------

def matmul(a, b, out=None, trans_a=False, trans_b=False, backend=None, accumulate=False):
    """out = op(a) @ op(b) where op transposes when asked (A^T B and A B^T for backward
    passes, without transposed copies). float32/float64, any shapes. accumulate: out +=
    op(a) @ op(b) instead (out required; on CPU one BLAS gemm with beta = 1)."""
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise ValueError(f"matmul: a and b must be 2-D, got {a.shape} and {b.shape}")
    dt = _float("matmul", "a", a)
    if np.dtype(b.dtype) != dt:
        raise TypeError(f"matmul: a is {a.dtype} but b is {b.dtype}")
    M, K = (a.shape[1], a.shape[0]) if trans_a else a.shape
    K2, N = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if K != K2:
        raise ValueError(f"matmul: inner dimensions differ: op(a) is {M}x{K}, op(b) {K2}x{N}")
    _check_out("matmul", out, (M, N), dt)
    be = _pick("matmul", backend, a, b, *(() if out is None else (out,)))
    if accumulate:
        return _matmul_accumulate(a, b, out, trans_a, trans_b, be)
    if be == "numpy":
        return reference.matmul(a, b, out, trans_a, trans_b)
    # the kernels write C while still reading A and B: an out that overlaps an input, or is
    # not C-contiguous, gets a fresh result buffer that is copied into it at the end
    direct = out is not None and not _overlaps(out, a) and not _overlaps(out, b) and \
        (_is_device(out) or out.flags.c_contiguous)
    if be == "cuda":
        from .cuda.matmul import matmul as cuda_matmul
        res = cuda_matmul(_c(a, be), _c(b, be), out if direct else None, trans_a, trans_b)
    else:
        from .cpu.matmul import gemm
        res = out if direct else np.empty((M, N), dt)
        gemm(np.ascontiguousarray(a), np.ascontiguousarray(b), res, bool(trans_a),
             bool(trans_b))
    if out is not None and res is not out:
        out[...] = res.copy_to_host() if (_is_device(res) and not _is_device(out)) else res
        return out
    return res


def _matmul_accumulate(a, b, out, trans_a, trans_b, be):
    if out is None:
        raise ValueError("matmul: accumulate=True needs out (the array added to)")
    if not _is_device(out):  # host: BLAS adds the product in place (also for backend
        # 'cpu': the Numba gemm has no accumulating form, and BLAS wins matmul here)
        from .blas import gemm_accumulate
        return gemm_accumulate(a, b, out, trans_a, trans_b)
    product = matmul(a, b, None, trans_a, trans_b, be)
    return reduce_into(out, product, "sum", backend=be)


# --- fused layer helpers ---------------------------------------------------------------

def _act_code(kernel, act):
    from .cpu.elementwise import ACT_CODES
    if act not in ACT_CODES:
        raise ValueError(f"{kernel}: unknown activation {act!r}; expected one of "
                         f"{', '.join(ACTIVATIONS)}")
    return ACT_CODES[act]


def _check_layer(kernel, x, bias):
    if len(x.shape) != 2 or len(bias.shape) != 1 or bias.shape[0] != x.shape[1]:
        raise ValueError(f"{kernel}: x must be rows x features and bias (features,), got "
                         f"{x.shape} and {bias.shape}")
    dt = _float(kernel, "x", x)
    if np.dtype(bias.dtype) != dt:
        raise TypeError(f"{kernel}: bias is {bias.dtype}, x {x.dtype}")
    return dt


def bias_act(x, bias, act="relu", out=None, backend=None):
    """y = act(x + bias), one pass (act: identity, relu, tanh, gelu (tanh approximation))."""
    dt = _check_layer("bias_act", x, bias)
    code = _act_code("bias_act", act)
    _check_out("bias_act", out, tuple(x.shape), dt)
    be = _pick("bias_act", backend, x, bias, *(() if out is None else (out,)))
    if be == "numpy":
        return reference.bias_act(x, bias, act, out)
    direct = out is not None and (_is_device(out) or out.flags.c_contiguous)
    res = out if direct else (np.empty(x.shape, dt) if be == "cpu" else _device_like(x))
    _mod(be).bias_act(_c(x, be), _c(bias, be), code, res, dt.type(0))
    if out is not None and res is not out:
        out[...] = res
        return out
    return res


def bias_act_backward(dy, x, bias, act="relu", backend=None):
    """(dx, dbias) for y = act(x + bias); the pre-activation is recomputed, not stored."""
    dt = _check_layer("bias_act_backward", x, bias)
    _same("bias_act_backward", "x", x, dy=dy)
    code = _act_code("bias_act_backward", act)
    be = _pick("bias_act_backward", backend, dy, x, bias)
    if be == "numpy":
        return reference.bias_act_backward(dy, x, bias, act)
    dx = np.empty(x.shape, dt) if be == "cpu" else _device_like(x)
    db = _mod(be).bias_act_backward(_c(dy, be), _c(x, be), _c(bias, be), code, dx,
                                    dt.type(0), dt.type(1))
    return dx, (db if _is_device(db) else db.astype(dt))


def softmax_xent(logits, labels, backend=None):
    """(mean cross-entropy, d loss / d logits) of softmax(logits) vs integer labels, in one
    pass over each row."""
    for name, arr in (("logits", logits), ("labels", labels)):
        if not (_is_device(arr) or isinstance(arr, np.ndarray)):
            raise TypeError(f"softmax_xent: {name} must be an array, got {type(arr).__name__}")
    if len(logits.shape) != 2 or len(labels.shape) != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"softmax_xent: logits must be rows x classes and labels (rows,), "
                         f"got {logits.shape} and {labels.shape}")
    dt = _float("softmax_xent", "logits", logits)
    if not np.issubdtype(np.dtype(labels.dtype), np.integer):
        raise TypeError(f"softmax_xent: labels must be integers, got {labels.dtype}")
    host_labels = labels.copy_to_host() if _is_device(labels) else labels  # n ints: cheap
    if host_labels.size and (host_labels.min() < 0 or host_labels.max() >= logits.shape[1]):
        raise ValueError(f"softmax_xent: labels must be in 0..{logits.shape[1] - 1}, got "
                         f"{host_labels.min()}..{host_labels.max()}")
    if logits.shape[1] == 0 and logits.shape[0]:
        raise ValueError("softmax_xent: no classes")
    be = _pick("softmax_xent", backend, logits, labels)
    if be == "numpy":
        return reference.softmax_xent(logits, labels)
    grad = np.empty(logits.shape, dt) if be == "cpu" else _device_like(logits)
    loss = _mod(be).softmax_xent(_c(logits, be), _c(labels, be), grad)
    return float(loss), grad


# --- optimizer updates (in place over flat buffers) ------------------------------------

def sgd_update(params, grads, velocity, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
               backend=None):
    """SGD in place (PyTorch's rule): g += wd*p; v = mu*v + g; p -= lr*(g + mu*v if nesterov
    else v). velocity is unused (may be None) when momentum is 0."""
    dt = _float("sgd_update", "params", params)
    if nesterov and not momentum:
        raise ValueError("sgd_update: nesterov needs momentum > 0")
    if velocity is None:
        if momentum:
            raise ValueError("sgd_update: momentum needs a velocity buffer")
        velocity = np.empty(0, dt)  # never read or written when momentum == 0
    else:
        _same("sgd_update", "params", params, velocity=velocity)
    _same("sgd_update", "params", params, grads=grads)
    be = _pick("sgd_update", backend, params, grads, velocity)
    if be == "numpy":
        return reference.sgd_update(params, grads, velocity, lr, momentum, nesterov,
                                    weight_decay)
    p = _flat_inplace("sgd_update", "params", params)
    vel = _flat_inplace("sgd_update", "velocity", velocity) if velocity.size else velocity
    _mod(be).sgd_update(p, _flat(grads, be), vel, dt.type(lr), dt.type(momentum),
                        bool(nesterov), dt.type(weight_decay))
    return params


def adam_update(params, grads, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.0, decoupled=False, backend=None):
    """Adam in place with bias correction at `step` (1-based); decoupled=True is AdamW."""
    dt = _float("adam_update", "params", params)
    _same("adam_update", "params", params, grads=grads, m=m, v=v)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"adam_update: step must be an integer (1, 2, ...), got {step!r}")
    if step < 1:
        raise ValueError(f"adam_update: step counts from 1, got {step}")
    be = _pick("adam_update", backend, params, grads, m, v)
    if be == "numpy":
        return reference.adam_update(params, grads, m, v, step, lr, beta1, beta2, eps,
                                     weight_decay, decoupled)
    bc1 = 1 - beta1 ** int(step)
    bc2 = 1 - beta2 ** int(step)
    t = dt.type
    _mod(be).adam_update(_flat_inplace("adam_update", "params", params), _flat(grads, be),
                         _flat_inplace("adam_update", "m", m),
                         _flat_inplace("adam_update", "v", v), t(lr), t(beta1), t(beta2),
                         t(eps), t(weight_decay), bool(decoupled), t(bc1), t(bc2), t(1))
    return params


def clip_grad_norm(grads, max_norm, backend=None):
    """Scale grads in place to global L2 norm <= max_norm (PyTorch's rule); returns the norm
    before clipping. A non-finite norm leaves grads untouched."""
    dt = _float("clip_grad_norm", "grads", grads)
    if not max_norm > 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    be = _pick("clip_grad_norm", backend, grads)
    if be == "numpy":
        return reference.clip_grad_norm(grads, max_norm)
    flat = _flat_inplace("clip_grad_norm", "grads", grads)
    mod = _mod(be)
    norm = float(np.sqrt(mod.sum_squares(flat)))
    coef = max_norm / (norm + 1e-6)
    if np.isfinite(norm) and coef < 1:
        mod.scale(flat, dt.type(coef))
    return norm


def reduce_into(acc, x, op="sum", incoming_first=False, backend=None):
    """acc = op(acc, x) in place (op(x, acc) when incoming_first): sum, prod, max, min."""
    if op not in UFUNCS:
        raise ValueError(f"reduce_into: unknown op {op!r}; expected one of {', '.join(UFUNCS)}")
    _same("reduce_into", "acc", acc, x=x)
    compiled_ok = np.dtype(acc.dtype) in _REDUCE_COMPILED
    if (backend or _backend) == "auto" and not compiled_ok and not _is_device(acc):
        backend = "numpy"  # float16, complex, small ints: NumPy's ufuncs handle them
    be = _pick("reduce_into", backend, acc, x)
    if be != "numpy" and not compiled_ok:
        raise TypeError(f"reduce_into: backend {be!r} supports "
                        f"{', '.join(str(d) for d in _REDUCE_COMPILED)}; got {acc.dtype} "
                        f"(use backend 'numpy' or 'auto')")
    if be == "numpy":
        from .reduce import reduce_into as ref
        return ref(acc, x, op, incoming_first)
    code = ("sum", "prod", "max", "min").index(op)
    _mod(be).reduce_into(_flat_inplace("reduce_into", "acc", acc), _flat(x, be), code,
                         bool(incoming_first))
    return acc


# --- device-aware array helpers (host arrays: NumPy; device arrays: CUDA kernels) -----

def zeros_like(a):
    """Zeros of a's shape and dtype where a lives (host, or the GPU for device arrays)."""
    if not _is_device(a):
        return np.zeros_like(a)
    from numba import cuda
    return fill(cuda.device_array(a.shape, a.dtype), 0)


def fill(a, value):
    """a[...] = value in place (a host or device array)."""
    if not _is_device(a):
        a[...] = value
        return a
    from .cuda import elementwise
    if a.size:
        elementwise.fill(a.reshape(a.size) if len(a.shape) != 1 else a,
                         np.dtype(a.dtype).type(value))
    return a


def to_host(a):
    """A NumPy copy of a device array (host arrays are returned as they are)."""
    return a.copy_to_host() if _is_device(a) else a


def assign(dst, src):
    """dst[...] = src, host or device on either side (a device dst gets one copy)."""
    if not _is_device(dst):
        dst[...] = to_host(src)
    elif _is_device(src):
        dst.copy_to_device(src)
    else:
        dst.copy_to_device(np.ascontiguousarray(np.broadcast_to(
            np.asarray(src, dst.dtype), dst.shape)))
    return dst


def scale(x, factor):
    """x *= factor in place, factor cast to x's dtype (as NumPy's `x *= dtype(factor)`)."""
    f = np.dtype(x.dtype).type(factor)
    if not _is_device(x):
        x *= f
        return x
    from .cuda import elementwise
    if x.size:
        elementwise.scale(x.reshape(x.size) if len(x.shape) != 1 else x, f)
    return x


def column_sums(x, out, accumulate=False):
    """out = (or +=, accumulate) x.sum(axis=0): a layer's bias gradient."""
    if not _is_device(x):
        if accumulate:
            out += x.sum(axis=0)
        else:
            np.sum(x, axis=0, out=out)
        return out
    from .cuda import elementwise
    return elementwise.column_sums(x, out, accumulate)


def multiply(x, y):
    """x * y (same shape and dtype), a new array where x lives."""
    _same("multiply", "x", x, y=y)
    if not _is_device(x):
        return x * y
    from .cuda import elementwise
    out = _device_like(x)
    if x.size:
        n = x.size
        elementwise.multiply(x.reshape(n), y.reshape(n), out.reshape(n))
    return out


# --- helpers ---------------------------------------------------------------------------

_REDUCE_COMPILED = tuple(np.dtype(t) for t in ("float32", "float64", "int32", "int64"))


def _check_out(kernel, out, shape, dtype):
    if out is None:
        return
    if not (_is_device(out) or isinstance(out, np.ndarray)):
        raise TypeError(f"{kernel}: out must be an array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != dtype:
        raise ValueError(f"{kernel}: out must be {'x'.join(map(str, shape))} {dtype}, got "
                         f"{'x'.join(map(str, out.shape))} {out.dtype}")
    if not _is_device(out) and not out.flags.writeable:
        raise ValueError(f"{kernel}: out is read-only")


def _overlaps(x, y):
    """Whether two (host or device) arrays may share memory."""
    if _is_device(x) or _is_device(y):
        if not (_is_device(x) and _is_device(y)):
            return False
        try:
            bx = x.__cuda_array_interface__["data"][0]
            by = y.__cuda_array_interface__["data"][0]
            return bx < by + y.nbytes and by < bx + x.nbytes
        except (AttributeError, KeyError, TypeError):  # simulator arrays: compare objects
            return x is y
    return np.may_share_memory(x, y)

def _mod(backend):
    if backend == "cpu":
        from .cpu import elementwise
        return elementwise
    from .cuda import elementwise
    return elementwise


def _c(a, backend):
    """A C-contiguous version of a host array (device arrays are passed as they are)."""
    return a if (_is_device(a) or a.flags.c_contiguous) else np.ascontiguousarray(a)


def _flat(a, backend):
    a = _c(a, backend)
    return a.reshape(-1) if len(a.shape) != 1 else a


def _device_like(a):
    from numba import cuda
    return cuda.device_array(a.shape, a.dtype) if _is_device(a) else np.empty(a.shape, a.dtype)


# dimensionality-reduction kernels live in their own modules (reference + dispatch):
# hpcml.kernels.covariance (blocked scatter, Chan merge), hpcml.kernels.tsne
from .covariance import scatter_block, merge_scatter  # noqa: E402
from . import tsne  # noqa: E402

__all__ = ["zeros_like", "fill", "to_host", "assign", "scale", "column_sums", "multiply",
           "scatter_block", "merge_scatter", "tsne", "matmul", "bias_act", "bias_act_backward", "softmax_xent", "sgd_update",
           "adam_update", "clip_grad_norm", "reduce_into", "set_backend", "get_backend",
           "BACKENDS", "AUTO", "ACTIVATIONS", "OP_NAMES", "reference_reduce"]
