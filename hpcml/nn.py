"""hpcml.nn: NumPy models with explicit forward and backward passes.

Every parameter of a model lives in one contiguous flat buffer (`model.params`) and every
gradient in another (`model.grads`, same layout); layers hold views into them. So one fused
all-reduce covers all gradients, and one optimizer kernel updates all parameters.

    model = Sequential(Linear(64, 512), ReLU(), Linear(512, 10), seed=0)
    logits = model.forward(x)                       # caches what backward needs
    loss, dlogits = cross_entropy(logits, y)        # mean over the batch
    model.backward(dlogits)                         # writes model.grads
    # model.backward(dlogits, accumulate=True)      # adds to model.grads instead

Losses take `denom`, the number of rows the loss is averaged over (default: this batch).
Data-parallel training passes the global batch size, so each rank's gradient is its share
of the global mean, and the sum over ranks equals one process's gradient at the global
batch.

Layout: Linear stores W as (in, out) row-major, then b (out,), so y = x @ W + b. The
matrix products go through hpcml.kernels (its measured dispatch), activations through
the fused bias_act kernels.
"""
import math

import numpy as np

from hpcml import kernels as K

DTYPES = (np.float32, np.float64)


def on_device(a):
    """True for a CUDA device array (Numba's, or the simulator's)."""
    return hasattr(a, "copy_to_host")


def raise_device_memory(error, nbytes, what):
    """Re-raise an allocation failure on the GPU as a MemoryError naming what and how
    much (anything else is re-raised as it is)."""
    text = f"{type(error).__name__}: {error}"
    if isinstance(error, MemoryError) or "OUT_OF_MEMORY" in text.upper() or \
            "out of memory" in text.lower():
        raise MemoryError(f"out of GPU memory allocating {nbytes / 2**20:.1f} MiB for "
                          f"{what} ({text.splitlines()[0][:200]}): use a smaller model or "
                          f"batch, more GPUs (--zero, --pp), or --device cpu") from None
    raise error


class Layer:
    """A layer: `shapes()` lists its parameters; `bind` gives it views of the flat buffers;
    `forward(x, train, rng)` caches what `backward(dy, accumulate)` needs."""

    def shapes(self):
        return []

    def bind(self, params, grads):
        self.p, self.g = params, grads

    def init(self, rng):
        pass

    def forward(self, x, train=True, rng=None):
        raise NotImplementedError

    def backward(self, dy, accumulate=False):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


INITS = ("torch", "he", "xavier")


class Linear(Layer):
    """y = x @ W + b. init: "torch" (PyTorch's nn.Linear default: W and b uniform in
    +-1/sqrt(in)), "he" (W normal with std sqrt(2/in), b = 0: for ReLU), "xavier" (W
    uniform in +-sqrt(6/(in+out)), b = 0: for tanh)."""

    def __init__(self, in_features, out_features, bias=True, init="torch"):
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {v!r}")
        if init not in INITS:
            raise ValueError(f"Linear: init must be one of {', '.join(INITS)}, got {init!r}")
        self.fan_in, self.fan_out = int(in_features), int(out_features)
        self.has_bias, self.init_name = bool(bias), init

    def shapes(self):
        s = [("weight", (self.fan_in, self.fan_out))]
        return s + [("bias", (self.fan_out,))] if self.has_bias else s

    def init(self, rng):
        W, dt = self.p[0], self.p[0].dtype
        if self.init_name == "torch":
            bound = 1 / math.sqrt(self.fan_in)
            W[...] = rng.uniform(-bound, bound, W.shape).astype(dt)
            if self.has_bias:
                self.p[1][...] = rng.uniform(-bound, bound, self.fan_out).astype(dt)
            return
        if self.init_name == "he":
            W[...] = (rng.standard_normal(W.shape) * math.sqrt(2 / self.fan_in)).astype(dt)
        else:
            bound = math.sqrt(6 / (self.fan_in + self.fan_out))
            W[...] = rng.uniform(-bound, bound, W.shape).astype(dt)
        if self.has_bias:
            self.p[1][...] = 0

    def forward(self, x, train=True, rng=None):
        if x.ndim != 2 or x.shape[1] != self.fan_in:
            raise ValueError(f"Linear({self.fan_in}, {self.fan_out}): input must be rows x "
                             f"{self.fan_in}, got {x.shape}")
        self.x = x
        y = K.matmul(x, self.p[0])
        if self.has_bias:
            if on_device(y):
                K.bias_act(y, self.p[1], "identity", out=y)
            else:
                y += self.p[1]
        return y

    def backward(self, dy, accumulate=False, need_dx=True):
        if self.has_bias:
            K.column_sums(dy, self.g[1], accumulate)
        return self._weight_backward(dy, accumulate, need_dx)

    def _weight_backward(self, dy, accumulate, need_dx):
        x, W, gW = self.x, self.p[0], self.g[0]
        if accumulate:
            K.matmul(x, dy, out=gW, trans_a=True, accumulate=True)
        else:
            K.matmul(x, dy, out=gW, trans_a=True)
        self.x = None
        return K.matmul(dy, W, trans_b=True) if need_dx else None

    def __repr__(self):
        return f"Linear({self.fan_in}, {self.fan_out}, bias={self.has_bias})"


class Dense(Linear):
    """act(x @ W + b) in one layer: the bias and the activation are applied in one fused
    pass (hpcml.kernels.bias_act) over the matrix product, and the backward pass gets the
    bias gradient from the same pass that applies the activation's derivative. Same
    parameters and layout as Linear."""

    def __init__(self, in_features, out_features, activation="relu", init="torch"):
        super().__init__(in_features, out_features, bias=True, init=init)
        if activation not in K.ACTIVATIONS:
            raise ValueError(f"Dense: activation must be one of {', '.join(K.ACTIVATIONS)}, "
                             f"got {activation!r}")
        self.act = activation

    def forward(self, x, train=True, rng=None):
        if x.ndim != 2 or x.shape[1] != self.fan_in:
            raise ValueError(f"Dense({self.fan_in}, {self.fan_out}): input must be rows x "
                             f"{self.fan_in}, got {x.shape}")
        self.x = x
        self.z = K.matmul(x, self.p[0])  # before bias and activation
        return K.bias_act(self.z, self.p[1], self.act)

    def backward(self, dy, accumulate=False, need_dx=True):
        dz, db = K.bias_act_backward(dy, self.z, self.p[1], self.act)
        self.z = None
        if accumulate:
            K.reduce_into(self.g[1], db, "sum")
        else:
            K.assign(self.g[1], db)
        return self._weight_backward(dz, accumulate, need_dx)

    def __repr__(self):
        return f"Dense({self.fan_in}, {self.fan_out}, {self.act})"


class _Activation(Layer):
    act = None

    def forward(self, x, train=True, rng=None):
        self.x = x
        return K.bias_act(x, self._zero(x), self.act)

    def backward(self, dy, accumulate=False):
        dx, _ = K.bias_act_backward(dy, self.x, self._zero(self.x), self.act)
        self.x = None
        return dx

    def _zero(self, x):
        z = getattr(self, "_z", None)
        if z is None or z.shape[0] != x.shape[1] or z.dtype != x.dtype or \
                on_device(z) != on_device(x):
            if on_device(x):
                from numba import cuda
                z = self._z = K.fill(cuda.device_array(x.shape[1], x.dtype), 0)
            else:
                z = self._z = np.zeros(x.shape[1], x.dtype)
        return z


class ReLU(_Activation):
    act = "relu"


class Tanh(_Activation):
    act = "tanh"


class GELU(_Activation):
    """GELU, tanh approximation (as PyTorch's approximate="tanh")."""
    act = "gelu"


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability p and scale the rest
    by 1/(1-p); identity in evaluation. The mask comes from the rng the model is given per
    step, so a run is reproducible (and resumable) from its seed."""

    def __init__(self, p=0.5):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.rate = float(p)

    def forward(self, x, train=True, rng=None):
        if not train or self.rate == 0:
            self.mask = None
            return x
        if rng is None:
            raise ValueError("Dropout: training needs an rng (Sequential.forward(x, rng=...))")
        dt = np.dtype(x.dtype)
        keep = self._keep(rng, x) >= self.rate
        self.mask = keep.astype(dt) / dt.type(1 - self.rate)
        if on_device(x):  # the same draws as on the CPU (host rng), the mask copied over
            from numba import cuda
            self.mask = cuda.to_device(self.mask)
        return K.multiply(x, self.mask)

    def _keep(self, rng, x):
        """Uniform draws, one per value of x (a value is kept where >= the rate)."""
        return rng.random(x.shape)

    def backward(self, dy, accumulate=False):
        return dy if self.mask is None else K.multiply(dy, self.mask)

    def __repr__(self):
        return f"Dropout({self.rate})"


class Sequential:
    """Layers applied in order, their parameters in one flat buffer `params` and their
    gradients in one flat buffer `grads` (same layout; see `layout`)."""

    def __init__(self, *layers, dtype=np.float32, seed=0, allocate=True):
        """allocate=False: the layout only (no parameter or gradient buffers, layers
        unbound): a model-parallel rank builds the stages it holds from it
        (`init_values` gives their initial values, the same as an allocated model's)."""
        if np.dtype(dtype).type not in DTYPES:
            raise ValueError(f"Sequential: dtype must be float32 or float64, got {dtype!r}")
        for layer in layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: {layer!r} is not an hpcml.nn layer")
        self.layers, self.dtype = list(layers), np.dtype(dtype)
        self.device = "cpu"
        self.layout = []  # (layer index, name, shape, offset)
        n = 0
        for i, layer in enumerate(self.layers):
            for name, shape in layer.shapes():
                self.layout.append((i, name, shape, n))
                n += int(np.prod(shape))
        self.size, self.seed = n, seed
        if not allocate:
            self.params = self.grads = None
            return
        self.params = np.zeros(n, self.dtype)
        self.grads = np.zeros(n, self.dtype)
        views = [([], []) for _ in self.layers]
        for i, name, shape, off in self.layout:
            m = int(np.prod(shape))
            views[i][0].append(self.params[off:off + m].reshape(shape))
            views[i][1].append(self.grads[off:off + m].reshape(shape))
        for layer, (p, g) in zip(self.layers, views):
            layer.bind(p, g)
        self.init(seed)

    def init_values(self, keep):
        """{layer index: [its parameter arrays]} for the layers in `keep`, with the values
        `init(self.seed)` gives them, one layer's temporaries at a time (the model's own
        buffers, if any, are left alone)."""
        rng = np.random.default_rng(self.seed)
        out = {}
        for i, layer in enumerate(self.layers):
            tmp = [np.zeros(shape, self.dtype) for _, shape in layer.shapes()]
            bound = (getattr(layer, "p", None), getattr(layer, "g", None))
            layer.bind(tmp, tmp)
            layer.init(rng)
            layer.bind(*bound)
            if i in keep:
                out[i] = tmp
        return out

    def init(self, seed):
        """(Re)initialise every parameter from `seed` (numpy's default_rng)."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.init(rng)

    def forward(self, x, train=True, rng=None):
        if self.device == "cuda" and not on_device(x):
            from numba import cuda
            x = cuda.to_device(np.ascontiguousarray(x, self.dtype))
        elif not on_device(x):
            x = np.asarray(x)
            if x.dtype != self.dtype:
                x = x.astype(self.dtype)
        elif np.dtype(x.dtype) != self.dtype:
            raise TypeError(f"Sequential.forward: a device input must be {self.dtype}, "
                            f"got {x.dtype}")
        for layer in self.layers:
            x = layer.forward(x, train, rng)
        return x

    __call__ = forward

    def backward(self, dy, accumulate=False, input_grad=True, on_layer=None):
        """Back-propagate dy (d loss / d output); gradients go to `grads` (added to them
        when accumulate). Returns d loss / d input, or None with input_grad=False (which
        spares the first Linear layer's input-gradient product: a quarter of the
        backward work of a wide first layer). on_layer(i), if given, is called as soon as
        layer i's gradients are complete, last layer first (a strategy starts their
        all-reduce there, overlapping the rest of the backward pass)."""
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if i == 0 and not input_grad and isinstance(layer, Linear):
                dy = layer.backward(dy, accumulate, need_dx=False)
            else:
                dy = layer.backward(dy, accumulate)
            if on_layer is not None:
                on_layer(i)
        return None if not input_grad else dy

    def backward_input(self, dy, input_grad=True):
        """The backward pass without the weight-gradient products (zero-bubble pipeline
        schedules run those later, as W): adds bias gradients, returns (d loss / d input
        or None, tasks) where `tasks` hold what `backward_weight` needs. backward_input
        then backward_weight adds exactly what backward(accumulate=True) adds."""
        tasks = []
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if not isinstance(layer, Linear):
                dy = layer.backward(dy, True)
                continue
            if isinstance(layer, Dense):
                dz, db = K.bias_act_backward(dy, layer.z, layer.p[1], layer.act)
                layer.z = None
                K.reduce_into(layer.g[1], db, "sum")
            else:
                dz = dy
                if layer.has_bias:
                    K.column_sums(dy, layer.g[1], accumulate=True)
            tasks.append((layer, layer.x, dz))
            layer.x = None
            dy = K.matmul(dz, layer.p[0], trans_b=True) if (i > 0 or input_grad) else None
        return dy, tasks

    @staticmethod
    def backward_weight(tasks):
        """The weight gradients backward_input left: gW += x^T dz per Linear layer."""
        for layer, x, dz in tasks:
            K.matmul(x, dz, out=layer.g[0], trans_a=True, accumulate=True)

    def rebind_params(self, buffer):
        """Make `buffer` (flat, `size` elements of the model's dtype) hold the parameters:
        layers get views of it (Hogwild's shared memory); its values are kept."""
        if buffer.shape != (self.size,) or buffer.dtype != self.dtype:
            raise ValueError(f"rebind_params: need a flat {self.dtype} buffer of "
                             f"{self.size}, got {buffer.dtype} {buffer.shape}")
        self.params = buffer
        for layer, p in zip(self.layers, self._views(buffer)):
            layer.p = p

    def _views(self, buffer):
        """Per layer, the views of `buffer` its arrays are (the flat layout)."""
        views = [[] for _ in self.layers]
        for i, name, shape, off in self.layout:
            views[i].append(buffer[off:off + int(np.prod(shape))].reshape(shape))
        return views

    def rebind_grads(self, buffer):
        """Make `buffer` (a flat array of `size` elements and the model's dtype) hold the
        gradients: layers get views of it; the current gradients are copied in."""
        if tuple(buffer.shape) != (self.size,) or np.dtype(buffer.dtype) != self.dtype:
            raise ValueError(f"rebind_grads: need a flat {self.dtype} buffer of {self.size}, "
                             f"got {buffer.dtype} {buffer.shape}")
        if on_device(buffer) != on_device(self.grads):
            raise ValueError("rebind_grads: the buffer must live where the model does "
                             f"({self.device})")
        if buffer is not self.grads:
            K.assign(buffer, self.grads)
        self.grads = buffer
        for layer, g in zip(self.layers, self._views(buffer)):
            layer.g = g

    def zero_grad(self):
        K.fill(self.grads, 0)

    def to_device(self):
        """Move the parameter and gradient buffers to the current CUDA device (Numba
        device arrays; layers get views of them): forward and backward then run as CUDA
        kernels. Returns self."""
        if self.device == "cuda":
            return self
        if self.params is None:
            raise ValueError("to_device: the model has no buffers (allocate=False)")
        from numba import cuda
        try:
            params, grads = cuda.to_device(self.params), cuda.to_device(self.grads)
        except Exception as e:  # CUDA_ERROR_OUT_OF_MEMORY, or the simulator's MemoryError
            raise_device_memory(e, 2 * self.params.nbytes, "the model's parameters and "
                                "gradients")
        self.params, self.grads, self.device = params, grads, "cuda"
        for layer, p, g in zip(self.layers, self._views(params), self._views(grads)):
            layer.bind(p, g)
        return self

    def host_params(self):
        """The parameters as a NumPy array (a copy when they live on the GPU)."""
        return K.to_host(self.params)

    def layer_regions(self):
        """{layer index: (lo, hi)}: each parameterised layer's range of the flat layout."""
        regions = {}
        for i, _, shape, off in self.layout:
            lo, hi = regions.get(i, (off, off))
            regions[i] = (min(lo, off), max(hi, off + int(np.prod(shape))))
        return regions

    def __repr__(self):
        inner = ", ".join(map(repr, self.layers))
        return f"Sequential({inner}; {self.size} parameters, {self.dtype})"


def mlp(features, hidden, classes, activation="relu", dropout=0.0, dtype=np.float32, seed=0,
        init="torch", allocate=True):
    """features -> hidden... -> classes: each hidden layer a Dense (Linear and activation
    fused), then Dropout if asked; the output layer a Linear."""
    acts = {"relu": ReLU, "tanh": Tanh, "gelu": GELU}
    if activation not in acts:
        raise ValueError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
    layers, n = [], features
    for h in hidden:
        layers.append(Dense(n, h, activation, init=init))
        if dropout:
            layers.append(Dropout(dropout))
        n = h
    layers.append(Linear(n, classes, init=init))
    return Sequential(*layers, dtype=dtype, seed=seed, allocate=allocate)


def cross_entropy(logits, labels, denom=None):
    """(mean softmax cross-entropy of this batch, d(sum of losses / denom) / d logits);
    denom defaults to the batch's rows."""
    n = logits.shape[0]
    if n == 0:
        return 0.0, K.zeros_like(logits)
    if on_device(logits) and not on_device(labels):
        from numba import cuda
        labels = cuda.to_device(np.ascontiguousarray(labels))
    loss, grad = K.softmax_xent(logits, labels if on_device(labels) else
                                np.ascontiguousarray(labels))
    if denom is not None and denom != n:
        K.scale(grad, n / denom)
    return loss, grad


def mse(pred, target, denom=None):
    """(mean over rows of the squared error summed over outputs, its gradient scaled by
    1/denom). pred: rows x outputs; target: same shape, or (rows,) for one output."""
    if on_device(pred):  # a column of rows: computed on the host, the gradient sent back
        from numba import cuda
        loss, grad = mse(pred.copy_to_host(), K.to_host(target), denom)
        return loss, cuda.to_device(grad)
    target = np.asarray(target, pred.dtype).reshape(pred.shape)
    n = pred.shape[0]
    diff = pred - target
    loss = float((diff.astype(np.float64) ** 2).sum() / max(n, 1))
    return loss, diff * pred.dtype.type(2 / (denom if denom is not None else max(n, 1)))
