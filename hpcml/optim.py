"""hpcml.optim: optimizers over a model's flat parameter and gradient buffers.

One fused kernel call (hpcml.kernels, Numba CPU by default) updates every parameter:

    opt = SGD(model, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = Adam(model, lr=1e-3)             # AdamW: Adam(..., decoupled=True) or AdamW(...)
    sched = Schedule(base_lr, warmup=100, decay="cosine", total=steps)
    opt.step(lr=sched(step))                # the rate for this step; default opt.lr

The state (velocity, moments, step count) is flat arrays of the parameters' dtype, so a
checkpoint is `state_dict()` arrays plus a few numbers (no pickle).
"""
import math

import numpy as np

from hpcml import kernels as K


class Optimizer:
    def __init__(self, model, lr):
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr!r}")
        self.model = model
        self.params = model.params
        self.lr = float(lr)
        self.steps = 0

    @property
    def grads(self):
        """The model's gradient buffer as it is now: a strategy may rebind it (DataParallel
        moves it into its all-reduce buffer) after the optimizer was built."""
        return self.model.grads

    def step(self, lr=None):
        self.steps += 1
        self._update(self.lr if lr is None else float(lr))

    def state_dict(self):
        """{name: array or number}: everything step() depends on besides the parameters."""
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = int(state["steps"])
        for name, buf in self._buffers().items():
            src = np.asarray(state[name])
            if src.shape != tuple(buf.shape):
                raise ValueError(f"{type(self).__name__} state {name!r} has shape {src.shape}, "
                                 f"the model needs {tuple(buf.shape)}")
            K.assign(buf, src)

    def _buffers(self):
        return {}


class SGD(Optimizer):
    """PyTorch's SGD: g += weight_decay*p; v = momentum*v + g; p -= lr*(g + momentum*v if
    nesterov else v)."""

    def __init__(self, model, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(model, lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if nesterov and not momentum:
            raise ValueError("SGD: nesterov needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"SGD: weight_decay must be >= 0, got {weight_decay!r}")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = K.zeros_like(self.params) if momentum else None

    def _update(self, lr):
        K.sgd_update(self.params, self.grads, self.velocity, lr, self.momentum, self.nesterov,
                     self.weight_decay)

    def state_dict(self):  # host copies of buffers on the GPU
        return dict(super().state_dict(), **{k: K.to_host(v) for k, v in
                                             self._buffers().items()})

    def _buffers(self):
        return {"velocity": self.velocity} if self.velocity is not None else {}


class Adam(Optimizer):
    """Adam with bias correction; decoupled=True is AdamW (weight decay applied to the
    parameters, not added to the gradient)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled=False):
        super().__init__(model, lr)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas!r}")
        if not eps > 0 or weight_decay < 0:
            raise ValueError("Adam: eps must be > 0 and weight_decay >= 0")
        self.betas, self.eps = (float(b1), float(b2)), float(eps)
        self.weight_decay, self.decoupled = float(weight_decay), bool(decoupled)
        self.m = K.zeros_like(self.params)
        self.v = K.zeros_like(self.params)

    def _update(self, lr):
        K.adam_update(self.params, self.grads, self.m, self.v, self.steps, lr, self.betas[0],
                      self.betas[1], self.eps, self.weight_decay, self.decoupled)

    def state_dict(self):  # host copies of buffers on the GPU
        return dict(super().state_dict(), **{k: K.to_host(v) for k, v in
                                             self._buffers().items()})

    def _buffers(self):
        return {"m": self.m, "v": self.v}


def AdamW(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    return Adam(model, lr, betas, eps, weight_decay, decoupled=True)


def clip_grad_norm(grads, max_norm):
    """Scale grads in place so their global L2 norm is at most max_norm (PyTorch's rule);
    returns the norm before clipping. Call it after the all-reduce: every rank then sees
    the same gradient and makes the same decision."""
    return K.clip_grad_norm(grads, max_norm)


class Schedule:
    """The learning rate at a step (0-based): linear warm-up from 0 over `warmup` steps,
    then `decay`: "constant", "step" (times `gamma` every `step_size` steps) or "cosine"
    (to `min_lr` at step `total`)."""

    DECAYS = ("constant", "step", "cosine")

    def __init__(self, base_lr, warmup=0, decay="constant", total=None, step_size=None,
                 gamma=0.1, min_lr=0.0):
        if decay not in self.DECAYS:
            raise ValueError(f"Schedule: decay must be one of {', '.join(self.DECAYS)}, "
                             f"got {decay!r}")
        if decay == "cosine" and not total:
            raise ValueError("Schedule: cosine decay needs total (the run's steps)")
        if decay == "step" and not step_size:
            raise ValueError("Schedule: step decay needs step_size")
        if warmup < 0:
            raise ValueError(f"Schedule: warmup must be >= 0, got {warmup!r}")
        self.base_lr, self.warmup, self.decay = float(base_lr), int(warmup), decay
        self.total, self.step_size, self.gamma, self.min_lr = total, step_size, gamma, min_lr

    def __call__(self, step):
        if step < self.warmup:
            return self.base_lr * (step + 1) / self.warmup
        if self.decay == "step":
            return self.base_lr * self.gamma ** ((step - self.warmup) // self.step_size)
        if self.decay == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(1.0, (step - self.warmup) / span)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return self.base_lr


def scaled_lr(lr, global_batch, reference_batch):
    """The linear-scaling rule (Goyal et al. 2017): a rate tuned at `reference_batch` becomes
    lr * global_batch / reference_batch at a larger global batch (use with warm-up)."""
    return lr * global_batch / reference_batch
