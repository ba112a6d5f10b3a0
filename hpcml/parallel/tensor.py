"""Tensor parallelism (Megatron-LM's MLP split): consecutive Linear layers as pairs, the
first split by output columns over T ranks, the second by input rows.

    tp_model = tensor_parallel(serial_model, tp_comm)   # same function, 1/T of each pair

Column-parallel layer: rank t holds W[:, cols_t] and b[cols_t] and computes its slice of
the hidden units (the activation is elementwise, so it stays local). Row-parallel layer:
rank t holds W[rows_t, :] (rows_t = cols_t of the layer before), computes a partial
product that one all-reduce sums (forward), then adds the replicated bias and activation.
Backward: the row-parallel layer's input gradient is local; the column-parallel layer's
input gradient is a partial sum, and one all-reduce completes it. So one all-reduce in
forward and one in backward per pair. A layer left over (an odd count) is replicated: every
rank computes it on identical bytes (hpcml's all-reduce gives every rank the same bytes).

On a GPU (the Sequential moved with `to_device()`), the shards' products, activations and
gradients stay on the device; the two all-reduces per pair go through the host (the
partial sums copied off the GPU, summed by hpcml's ring, copied back), or with a
CUDA-aware MPI (`cuda_aware=True`) MPI_Allreduce takes the device buffer.
"""
import numpy as np

from hpcml import comm as hc
from hpcml import kernels as K
from hpcml import nn


def _cols(n, T, t):
    return n * t // T, n * (t + 1) // T


class ColumnParallel(nn.Layer):
    """y[:, cols_t] = act(x @ W[:, cols_t] + b[cols_t]); backward all-reduces dx."""

    cuda_aware = False  # on a GPU: MPI_Allreduce takes the device buffer (else staged)

    def __init__(self, serial, comm):
        self.comm, self.T, self.t = comm, comm.Get_size(), comm.Get_rank()
        self.lo, self.hi = _cols(serial.fan_out, self.T, self.t)
        self.fan_in, self.fan_out = serial.fan_in, self.hi - self.lo
        self.act = getattr(serial, "act", None)  # Dense: fused activation; Linear: none
        self.has_bias = serial.has_bias
        self.values = [serial.p[0][:, self.lo:self.hi].copy()] + (
            [serial.p[1][self.lo:self.hi].copy()] if serial.has_bias else [])

    def shapes(self):
        s = [("weight", (self.fan_in, self.fan_out))]
        return s + [("bias", (self.fan_out,))] if self.has_bias else s

    def init(self, rng):
        for p, v in zip(self.p, self.values):
            p[...] = v

    def forward(self, x, train=True, rng=None):
        self.x = x
        self.z = K.matmul(x, self.p[0])
        return _bias_act(self, self.z)

    def backward(self, dy, accumulate=False):
        dx = _local_backward(self, dy, accumulate)
        if self.T > 1:  # each rank's dx covers its columns only: the sum is the whole
            dx = _allreduce(dx, self.comm, self.cuda_aware)
        return dx


class RowParallel(nn.Layer):
    """y = act(allreduce(x[:, rows_t] @ W[rows_t, :]) + b); input gradient stays local."""

    cuda_aware = False

    def __init__(self, serial, comm, rows):
        self.comm, self.T, self.t = comm, comm.Get_size(), comm.Get_rank()
        self.lo, self.hi = rows
        self.fan_in, self.fan_out = self.hi - self.lo, serial.fan_out
        self.act = getattr(serial, "act", None)
        self.has_bias = serial.has_bias
        self.values = [serial.p[0][self.lo:self.hi, :].copy()] + (
            [serial.p[1].copy()] if serial.has_bias else [])

    shapes = ColumnParallel.shapes
    init = ColumnParallel.init

    def forward(self, x, train=True, rng=None):
        self.x = x
        z = K.matmul(x, self.p[0])
        if self.T > 1:
            z = _allreduce(z, self.comm, self.cuda_aware)
        self.z = z
        return _bias_act(self, z)

    def backward(self, dy, accumulate=False):
        return _local_backward(self, dy, accumulate)  # rows_t of dx: already this rank's


class ShardedDropout(nn.Dropout):
    """Dropout on a column-parallel layer's slice of the hidden units: the mask of the
    whole width is drawn (the same rng on every TP rank) and this rank's columns used, so
    the pair drops the units the serial layer would with that rng, and no two shards share
    a mask pattern."""

    def __init__(self, rate, lo, hi, width):
        super().__init__(rate)
        self.lo, self.hi, self.width = lo, hi, width

    def _keep(self, rng, x):
        return rng.random((x.shape[0], self.width))[:, self.lo:self.hi]


def _allreduce(a, comm, cuda_aware=False):
    """The sum of `a` over the TP ranks (ring), on the host or the GPU: a device array is
    copied to the host and back (or, with a CUDA-aware MPI, reduced where it is)."""
    if not nn.on_device(a):
        a = np.ascontiguousarray(a)
        hc.allreduce(a, "sum", comm=comm, algorithm="ring")
        return a
    if cuda_aware:
        hc.allreduce_device(a, comm)
        return a
    host = a.copy_to_host()
    hc.allreduce(host, "sum", comm=comm, algorithm="ring")
    a.copy_to_device(host)
    return a


def _bias_act(layer, z):
    """The layer's bias and activation on z (a new array; on the GPU as nn.Linear does)."""
    if layer.act is not None:
        return K.bias_act(z, layer.p[1], layer.act)
    if not layer.has_bias:
        return z
    return K.bias_act(z, layer.p[1], "identity") if nn.on_device(z) else z + layer.p[1]


def _local_backward(layer, dy, accumulate):
    """A split layer's own gradients (bias, weight shard) and its local input gradient
    dz @ W_t^T (as hpcml.nn.Dense / Linear do)."""
    if layer.act is None:
        dz = dy
        if layer.has_bias:
            K.column_sums(dy, layer.g[1], accumulate)
    else:
        dz, db = K.bias_act_backward(dy, layer.z, layer.p[1], layer.act)
        if accumulate:
            K.reduce_into(layer.g[1], db, "sum")
        else:
            K.assign(layer.g[1], db)
    if accumulate:
        K.matmul(layer.x, dz, out=layer.g[0], trans_a=True, accumulate=True)
    else:
        K.matmul(layer.x, dz, out=layer.g[0], trans_a=True)
    dx = K.matmul(dz, layer.p[0], trans_b=True)
    layer.x = layer.z = None
    return dx


def tensor_parallel(model, comm, cuda_aware=False):
    """The serial MLP `model` (hpcml.nn.Sequential of Linear/Dense and activations) as this
    rank's tensor-parallel Sequential on `comm` (T = its size): Linear layers paired
    column-then-row in order; a last unpaired one replicated. Each pair's hidden width must
    be >= T. Parameters come from the serial model. cuda_aware: once the result is moved
    to a GPU, its all-reduces pass device buffers to MPI (a CUDA-aware MPI only)."""
    T = comm.Get_size()
    linear = [i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Linear)]
    pairs = [(linear[k], linear[k + 1]) for k in range(0, len(linear) - 1, 2)]
    role = {}
    for a, b in pairs:
        if model.layers[a].fan_out < T:
            raise ValueError(f"tensor parallelism over {T} ranks: layer {a} has "
                             f"{model.layers[a].fan_out} outputs to split, fewer than {T}")
        role[a], role[b] = "col", "row"
    layers, last_cols = [], None
    a_of = {}  # a dropout between a pair's layers -> the column-parallel layer before it
    for a, b in pairs:
        a_of.update({k: a for k in range(a + 1, b)})
    for i, layer in enumerate(model.layers):
        if role.get(i) == "col":
            new = ColumnParallel(layer, comm)
            new.cuda_aware, last_cols = bool(cuda_aware), (new.lo, new.hi)
        elif role.get(i) == "row":
            new = RowParallel(layer, comm, last_cols)
            new.cuda_aware, last_cols = bool(cuda_aware), None
        elif isinstance(layer, nn.Dropout) and last_cols is not None:
            new = ShardedDropout(layer.rate, *last_cols, model.layers[a_of[i]].fan_out)
        elif isinstance(layer, nn.Linear):  # replicated: a copy with the same values
            new = type(layer).__new__(type(layer))
            new.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in ("p", "g")})
            new.values = [p.copy() for p in layer.p]
            new.init = ColumnParallel.init.__get__(new)
        else:
            new = layer
        layers.append(new)
    tp = nn.Sequential(*layers, dtype=model.dtype)
    tp.tp_roles = role
    return tp


def serial_index(tp_model, model, t0=True):
    """(index, owned): where each element of `tp_model`'s flat vector (parameters,
    gradients or optimizer state) sits in the serial `model`'s, and whether this rank is
    the one that counts it (a replicated value is counted by TP rank 0 only: `t0`)."""
    idx = np.empty(tp_model.size, np.int64)
    owned = np.ones(tp_model.size, bool)
    serial, local = model.layer_regions(), tp_model.layer_regions()
    for i, layer in enumerate(tp_model.layers):
        if i not in local:
            continue
        s0, l0 = serial[i][0], local[i][0]
        n_in, n_out = model.layers[i].fan_in, model.layers[i].fan_out
        W = s0 + np.arange(n_in * n_out, dtype=np.int64).reshape(n_in, n_out)
        b = s0 + n_in * n_out + np.arange(n_out, dtype=np.int64)
        if isinstance(layer, ColumnParallel):
            parts, own = [W[:, layer.lo:layer.hi], b[layer.lo:layer.hi]], [True, True]
        elif isinstance(layer, RowParallel):
            parts, own = [W[layer.lo:layer.hi, :], b], [True, t0]
        else:
            parts, own = [W, b], [t0, t0]
        if not model.layers[i].has_bias:
            parts, own = parts[:1], own[:1]
        at = l0
        for part, o in zip(parts, own):
            idx[at:at + part.size] = part.ravel()
            owned[at:at + part.size] = o
            at += part.size
    return idx, owned


def serial_params(tp_model, model, comm):
    """The serial flat parameter vector from every rank's shards (on every rank)."""
    idx, owned = serial_index(tp_model, model, comm.Get_rank() == 0)
    out = np.zeros(model.size, model.dtype)
    out[idx[owned]] = K.to_host(tp_model.params)[owned]
    if comm.Get_size() > 1:
        hc.allreduce(out, "sum", comm=comm, algorithm="ring")
    return out
