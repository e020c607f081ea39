"""The common base of every layer: parameters, buffers, modes, state dicts, dtype."""

import copy
import math
from collections import namedtuple

import numpy as np

from .. import _device, _memory
from .. import _validation as v

__all__ = ["NormBase", "Epilogue", "IncompatibleKeys"]

#: What ``load_state_dict`` returns, as in PyTorch.
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class NormBase:
    """Owns a layer's parameters (``weight``, ``bias``), buffers (running statistics),
    training flag, gradients, state dict and dtype.

    Subclasses call :meth:`_init_state` in ``__init__`` and implement ``forward`` (which
    keeps what backward needs in ``self._saved``), ``_backward(saved, dy)`` returning
    ``(dx, dweight, dbias)`` (and the residual's gradient fourth when the forward added a
    residual), and ``extra_repr``. Parameters and
    buffers are NumPy arrays; ``state_dict()`` uses PyTorch's keys, so the arrays of
    a PyTorch checkpoint load unchanged.
    """

    #: The gradient of the last forward's residual (set by backward; None without one).
    grad_residual = None

    #: state_dict keys of parameters and float buffers, in PyTorch's order.
    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var")

    def __init__(self, dtype=np.float32):
        self.dtype = v.check_dtype(dtype)
        self.training = True
        self.weight = None
        self.bias = None
        self.running_mean = None
        self.running_var = None
        self.num_batches_tracked = None
        self.grad_weight = None
        self.grad_bias = None
        self.grad_residual = None
        self._saved = None

    # -- construction ---------------------------------------------------------------
    def _init_state(self, shape, weight=False, bias=False, running=False):
        self._param_shape = tuple(shape)
        # Aligned whatever their size: LayerNorm and RMSNorm read them in every inner loop.
        if weight:
            self.weight = _memory.full(shape, 1, self.dtype, work=math.inf)
        if bias:
            self.bias = _memory.full(shape, 0, self.dtype, work=math.inf)
        if running:
            self.running_mean = _memory.full(shape, 0, self.dtype, work=math.inf)
            self.running_var = _memory.full(shape, 1, self.dtype, work=math.inf)
            self.num_batches_tracked = np.array(0, dtype=np.int64)

    def reset_running_stats(self):
        """Set running_mean to 0, running_var to 1 and num_batches_tracked to 0."""
        if self.running_mean is not None:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked[...] = 0

    def reset_parameters(self):
        """Reset the running statistics, weight to 1 and bias to 0."""
        self.reset_running_stats()
        if self.weight is not None:
            self.weight[...] = 1
        if self.bias is not None:
            self.bias[...] = 0

    # -- modes ----------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode; return the layer."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        self.training = mode
        return self

    def eval(self):
        """Set evaluation mode; return the layer."""
        return self.train(False)

    def parameters(self):
        """Yield the learnable parameters (weight, then bias) that exist."""
        for name in self._param_names:
            p = getattr(self, name)
            if p is not None:
                yield p

    def named_parameters(self):
        """Yield ``(name, array)`` for the learnable parameters that exist."""
        for name in self._param_names:
            p = getattr(self, name)
            if p is not None:
                yield name, p

    def zero_grad(self):
        """Forget the gradients of the last backward."""
        self.grad_weight = None
        self.grad_bias = None
        self.grad_residual = None

    # -- calls ----------------------------------------------------------------------
    def __call__(self, x, *args, **kwargs):
        return self.forward(x, *args, **kwargs)

    def backward(self, dy):
        """Return dL/dx for the last forward input; set ``grad_weight`` and ``grad_bias``
        (and ``grad_residual``: the gradient of the forward's residual, None without one).

        What forward keeps for this: a reference to its input ``x`` (not a copy) and the
        float64 statistics it used (the mean and rstd, one per normalized group). dx is
        computed from ``x`` read again, so ``x`` must hold the same values: changing it
        in place between forward and backward gives wrong gradients without an error
        (NumPy arrays have no version counter that would tell, unlike PyTorch tensors).
        Parameters are read at backward time too, as PyTorch reads them in autograd.

        Raises
        ------
        RuntimeError
            Called before any forward.
        TypeError, ValueError
            ``dy`` of another shape, dtype or device than the forward input.
        """
        return self._run_backward(dy)

    def _run_backward(self, dy, **options):
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before forward(): "
                               "call the layer on an input first")
        grads = self._backward(self._saved, dy, **options)
        self._store_grads(grads[1], grads[2])
        self.grad_residual = grads[3] if len(grads) > 3 else None
        return grads[0]

    def _store_grads(self, dweight, dbias):
        self.grad_weight = None if dweight is None else _device.astype(dweight, self.weight.dtype, copy=False)
        self.grad_bias = None if dbias is None else _device.astype(dbias, self.bias.dtype, copy=False)

    # -- state ----------------------------------------------------------------------
    def _state_names(self):
        names = [n for n in self._param_names if getattr(self, n) is not None]
        names += [n for n in self._buffer_names if getattr(self, n) is not None]
        if self.num_batches_tracked is not None:
            names.append("num_batches_tracked")
        return names

    def state_dict(self):
        """Copies of parameters and buffers under PyTorch's keys."""
        return {name: _device.to_host(getattr(self, name)) for name in self._state_names()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy values into the existing arrays, cast to the layer's dtype.

        All keys and shapes are checked before anything is written, so a bad state
        dict leaves the layer unchanged. Values may be NumPy arrays or anything
        ``numpy.asarray`` accepts (a PyTorch tensor on the CPU, say).

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, both empty after a strict load.

        Raises
        ------
        RuntimeError
            Missing or unexpected keys (with ``strict``), or a shape mismatch.
        TypeError
            A value that is not numeric.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        expected = self._state_names()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                               f"missing keys {missing}, unexpected keys {unexpected} "
                               f"(expected exactly {expected})")
        values = {}
        for name in expected:
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            target = getattr(self, name)
            if value.dtype.kind not in "fiu":
                raise TypeError(f"state_dict[{name!r}] must be numeric, got dtype {value.dtype}")
            if value.shape != target.shape:
                raise RuntimeError(f"size mismatch for {name}: expected shape {target.shape}, "
                                   f"got {value.shape} in the state_dict")
            values[name] = value
        for name, value in values.items():
            getattr(self, name)[...] = value
        return IncompatibleKeys(missing, unexpected)

    def to(self, target):
        """Convert parameters and running statistics to ``np.float32``/``np.float64``
        (or ``"float32"``/``"float64"``), or move them to ``"cuda"`` (Numba device arrays)
        or ``"cpu"``; return the layer. ``num_batches_tracked`` stays a host counter."""
        device = target.lower() if isinstance(target, str) and target.lower() in ("cuda", "cpu") else None
        if device is None:
            self.dtype = v.check_dtype(target, "target dtype")
        for name in self._param_names + self._buffer_names:
            arr = getattr(self, name)
            if arr is not None:
                setattr(self, name, _device.move(arr, device) if device else _device.astype(arr, self.dtype))
        self._saved = None
        return self

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_saved"] = None  # the forward input is not state
        # Device arrays do not pickle: they travel as host copies and go back to the
        # device on unpickling (as PyTorch does with CUDA tensors).
        on_cuda = [name for name, value in state.items() if _device.is_cuda_array(value)]
        for name in on_cuda:
            state[name] = _device.to_host(state[name])
        if on_cuda:
            state["_cuda_names"] = on_cuda
        return state

    def __setstate__(self, state):
        state = dict(state)
        for name in state.pop("_cuda_names", ()):
            state[name] = _device.move(state[name], "cuda")
        self.__dict__.update(state)

    def __copy__(self):
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo):
        new = type(self).__new__(type(self))
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Epilogue:
    """The fused epilogue of the channel-wise layers (BatchNorm, GroupNorm, InstanceNorm):
    ``layer(x, residual)`` returns ``activation(norm(x) + residual)`` from one pass.

    ``activation`` (None or ``"relu"``) is a constructor keyword, kept in the layer's repr
    and pickled state but not in ``state_dict()`` (it is not a tensor). Forward keeps its
    output for ReLU's mask (``y > 0``) and whether a residual was added; backward then sets
    ``grad_residual``. The output must hold its values until backward, as ``x`` must.
    """

    activation = None

    def _init_epilogue(self, activation):
        v.check_activation(activation)
        self.activation = activation

    def _epilogue_saved(self, y, residual):
        """What backward needs of the epilogue: the output (with an activation), the activation
        and whether a residual was added, as of this forward."""
        return {"y": y if self.activation is not None else None, "activation": self.activation,
                "residual": residual is not None}

    @staticmethod
    def _epilogue_options(saved):
        """The epilogue keywords of the ``*_backward`` call for ``saved``."""
        return {"y": saved["y"], "activation": saved["activation"], "residual": saved["residual"]}

    def _epilogue_repr(self):
        return "" if self.activation is None else f", activation={self.activation!r}"
