"""The benchmark rows: layer family, shape, layout and dtype, and their inputs.

:func:`canonical_cases` is numbanorm's list of performance rows (the shapes its
targets are stated on); :func:`fused_cases` are the rows of the fused epilogue (a
normalization with the add, and ReLU, that follow it in a network: :data:`FUSED_OPS`);
:func:`quick_cases`, :func:`scaling_cases`, :func:`tiny_cases` and
:func:`tiny_fused_cases` are the subsets and extensions the command line offers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DTYPES",
    "FUSED_OPS",
    "LAYOUTS",
    "OPS",
    "PASSES",
    "Case",
    "canonical_cases",
    "fused_cases",
    "make_epilogue_input",
    "make_input",
    "quick_cases",
    "scaling_cases",
    "tiny_cases",
    "tiny_fused_cases",
]

#: The passes of every row, in table order.
PASSES = ("train_forward", "train_step", "eval_forward")
#: ``channels_last`` is an NCHW-shaped view of NHWC memory (channel axis last in memory).
LAYOUTS = ("contiguous", "channels_last")
DTYPES = ("float32", "float64")

#: Supported layer families: name -> (minimum ndim, maximum ndim).
OPS = {
    "BatchNorm1d": (2, 3),
    "BatchNorm2d": (4, 4),
    "BatchNorm3d": (5, 5),
    "LayerNorm": (2, 8),
    "RMSNorm": (2, 8),
    "GroupNorm": (2, 8),
    "InstanceNorm1d": (3, 3),
    "InstanceNorm2d": (4, 4),
    "InstanceNorm3d": (5, 5),
    "BatchNorm2d+add+relu": (4, 4),
    "add+LayerNorm": (2, 8),
    "add+RMSNorm": (2, 8),
}

#: The fused-epilogue rows: row op -> (layer family, activation, skip). A channel-wise
#: row (``skip`` False) times ``layer(x, residual)`` of a layer made with ``activation``,
#: ``act(norm(x) + residual)``: the tail of a ResNet block. A skip row (``skip`` True)
#: times ``layer(x, residual)`` returning ``(norm(x + residual), x + residual)``, and its
#: backward with ``dsum``, the gradient that reaches the sum through the residual stream:
#: a transformer block's pre-norm residual. Every pass reads the residual (and the step
#: ``dy`` and ``dsum``) from the row's pool. Their op names contain ``add``, so
#: ``--filter add+`` selects exactly these rows.
FUSED_OPS = {
    "BatchNorm2d+add+relu": ("BatchNorm2d", "relu", False),
    "add+LayerNorm": ("LayerNorm", None, True),
    "add+RMSNorm": ("RMSNorm", None, True),
}


@dataclass(frozen=True)
class Case:
    """One benchmark shape: layer family, input shape, memory layout and dtype.

    Parameters
    ----------
    op : str
        Layer class name, the same in numbanorm and ``torch.nn`` (a key of :data:`OPS`),
        or a fused-epilogue row (a key of :data:`FUSED_OPS`, such as
        ``"BatchNorm2d+add+relu"`` or ``"add+LayerNorm"``).
    shape : tuple of int
        Logical (NCHW-ordered) input shape.
    layout : {"contiguous", "channels_last"}
        Memory order of the input; ``channels_last`` puts the channel axis last in memory.
    dtype : {"float32", "float64"}
    groups : int, optional
        GroupNorm group count, default ``gcd(32, C)`` (32 for the canonical shapes).
        LayerNorm and RMSNorm normalize over the last axis.

    Raises
    ------
    ValueError
        For an unknown op, layout or dtype, a rank the op does not take, or a group
        count that does not divide the channels.
    """

    op: str
    shape: tuple
    layout: str = "contiguous"
    dtype: str = "float32"
    groups: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; expected one of {sorted(OPS)}")
        lo, hi = OPS[self.op]
        if not lo <= len(self.shape) <= hi:
            raise ValueError(
                f"{self.op} takes inputs with {lo} to {hi} dimensions, got shape {self.shape}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; expected one of {LAYOUTS}")
        if self.layout == "channels_last" and len(self.shape) < 3:
            raise ValueError(
                f"channels_last needs an input with at least 3 dimensions, got {self.shape}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; expected one of {DTYPES}")
        if self.op == "GroupNorm":
            if self.groups is None:
                object.__setattr__(self, "groups", math.gcd(32, self.shape[1]))
            if self.shape[1] % self.groups:
                raise ValueError(
                    f"GroupNorm: {self.shape[1]} channels are not divisible "
                    f"by {self.groups} groups"
                )

    @property
    def fused(self):
        """True for a fused-epilogue row (:data:`FUSED_OPS`)."""
        return self.op in FUSED_OPS

    @property
    def layer_op(self):
        """The layer class name in numbanorm and ``torch.nn`` (``op`` without the epilogue)."""
        return FUSED_OPS[self.op][0] if self.fused else self.op

    @property
    def activation(self):
        """The fused activation (None or ``"relu"``); None for a row without an epilogue."""
        return FUSED_OPS[self.op][1] if self.fused else None

    @property
    def skip(self):
        """True for the skip form (LayerNorm/RMSNorm of ``x + residual``, returning the sum too)."""
        return self.fused and FUSED_OPS[self.op][2]

    @property
    def plain(self):
        """The row of the same shape without the epilogue (``self`` for a plain row)."""
        if not self.fused:
            return self
        return Case(self.layer_op, self.shape, self.layout, self.dtype, self.groups)

    @property
    def passes(self):
        """The passes this row is measured in, of :data:`PASSES`. A skip row has no eval
        forward: LayerNorm and RMSNorm keep no running state, so their eval forward is
        the train forward (the plain rows keep it as ONNX Runtime's pass)."""
        if self.skip:
            return tuple(p for p in PASSES if p != "eval_forward")
        return PASSES

    @property
    def nbytes(self):
        """Bytes of one input array."""
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    @property
    def label(self):
        """``"op shape layout dtype"``, the text that ``--filter`` matches."""
        shape = "x".join(str(s) for s in self.shape)
        extra = f" G={self.groups}" if self.op == "GroupNorm" else ""
        return f"{self.op}{extra} {shape} {self.layout} {self.dtype}"

    @property
    def memory_shape(self):
        """Shape of the input's memory: the channel axis moved last for ``channels_last``."""
        if self.layout == "channels_last":
            return (self.shape[0],) + self.shape[2:] + (self.shape[1],)
        return self.shape

    def as_layout(self, memory):
        """The NCHW-shaped view of an array shaped :attr:`memory_shape`."""
        return np.moveaxis(memory, -1, 1) if self.layout == "channels_last" else memory


def canonical_cases():
    """numbanorm's performance rows, in table order.

    BatchNorm2d (32, 64, 56, 56) and (64, 128, 56, 56); BatchNorm1d (4096, 1024);
    LayerNorm and RMSNorm (8192, 768); GroupNorm (32, 64, 56, 56) with 32 groups;
    InstanceNorm2d (32, 64, 56, 56); the small LayerNorm (32, 768) and BatchNorm1d
    (64, 256); channels-last BatchNorm2d, GroupNorm and InstanceNorm2d; float64
    BatchNorm2d and LayerNorm. Everything float32 and contiguous unless said.
    """
    return [
        Case("BatchNorm2d", (32, 64, 56, 56)),
        Case("BatchNorm2d", (64, 128, 56, 56)),
        Case("BatchNorm1d", (4096, 1024)),
        Case("LayerNorm", (8192, 768)),
        Case("RMSNorm", (8192, 768)),
        Case("GroupNorm", (32, 64, 56, 56), groups=32),
        Case("InstanceNorm2d", (32, 64, 56, 56)),
        Case("LayerNorm", (32, 768)),
        Case("BatchNorm1d", (64, 256)),
        Case("BatchNorm2d", (32, 64, 56, 56), "channels_last"),
        Case("GroupNorm", (32, 64, 56, 56), "channels_last", groups=32),
        Case("InstanceNorm2d", (32, 64, 56, 56), "channels_last"),
        Case("BatchNorm2d", (32, 64, 56, 56), dtype="float64"),
        Case("LayerNorm", (8192, 768), dtype="float64"),
    ]


def fused_cases():
    """The fused-epilogue rows, in table order (they follow the canonical rows).

    BatchNorm2d (32, 64, 56, 56) + add + ReLU, contiguous and channels-last (a ResNet
    block's tail); add + LayerNorm and add + RMSNorm (8192, 768) (a transformer block's
    pre-norm residual). float32.
    """
    return [
        Case("BatchNorm2d+add+relu", (32, 64, 56, 56)),
        Case("BatchNorm2d+add+relu", (32, 64, 56, 56), "channels_last"),
        Case("add+LayerNorm", (8192, 768)),
        Case("add+RMSNorm", (8192, 768)),
    ]


def quick_cases():
    """``--quick``: the canonical rows without the largest shape (64, 128, 56, 56)."""
    return [c for c in canonical_cases() if c.shape != (64, 128, 56, 56)]


def scaling_cases():
    """``--scaling``: BatchNorm2d from (8,64,56,56) to (64,128,56,56), time vs bytes."""
    shapes = [(8, 64, 56, 56), (16, 64, 56, 56), (32, 64, 56, 56), (64, 64, 56, 56),
              (64, 128, 56, 56)]
    return [Case("BatchNorm2d", s) for s in shapes]


def tiny_cases():
    """Very small shapes of every family and layout: for tests of the bench code paths."""
    return [
        Case("BatchNorm2d", (2, 4, 3, 3)),
        Case("BatchNorm2d", (2, 4, 3, 3), "channels_last"),
        Case("BatchNorm1d", (8, 4)),
        Case("LayerNorm", (4, 8)),
        Case("LayerNorm", (4, 8), dtype="float64"),
        Case("RMSNorm", (4, 8)),
        Case("GroupNorm", (2, 4, 3, 3), groups=2),
        Case("InstanceNorm2d", (2, 4, 3, 3), "channels_last"),
    ]


def tiny_fused_cases():
    """Very small fused-epilogue rows of each form and layout: for tests."""
    return [
        Case("BatchNorm2d+add+relu", (2, 4, 3, 3)),
        Case("BatchNorm2d+add+relu", (2, 4, 3, 3), "channels_last"),
        Case("add+LayerNorm", (4, 8)),
        Case("add+RMSNorm", (4, 8)),
    ]


def make_input(case, seed=0):
    """Deterministic ``(x, dy)`` for ``case``: standard normal, ``case.dtype``.

    Parameters
    ----------
    case : Case
    seed : int, default 0
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    x, dy : ndarray
        Shaped ``case.shape``. For ``channels_last`` both are NCHW-shaped views of
        channel-last memory (``x_nhwc.transpose(0, 3, 1, 2)`` for 4-D inputs).
    """
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    x = rng.standard_normal(case.memory_shape, dtype=dtype)
    dy = rng.standard_normal(case.memory_shape, dtype=dtype)
    return case.as_layout(x), case.as_layout(dy)


def make_epilogue_input(case, seed=1):
    """Deterministic ``(residual, dsum)`` of a fused row: standard normal, ``case.dtype``.

    Parameters
    ----------
    case : Case
        A fused row (:attr:`Case.fused`).
    seed : int, default 1
        Seed of ``numpy.random.default_rng`` (another stream than :func:`make_input`'s).

    Returns
    -------
    residual : ndarray
        Shaped and laid out as :func:`make_input`'s x.
    dsum : ndarray or None
        The gradient reaching ``x + residual`` from the residual stream, for a skip row;
        None for a channel-wise row (its sum is not an output).

    Raises
    ------
    ValueError
        For a row without an epilogue.
    """
    if not case.fused:
        raise ValueError(f"{case.op} has no fused epilogue; expected one of {sorted(FUSED_OPS)}")
    rng = np.random.default_rng(seed)
    dtype = np.dtype(case.dtype)
    residual = rng.standard_normal(case.memory_shape, dtype=dtype)
    dsum = rng.standard_normal(case.memory_shape, dtype=dtype) if case.skip else None
    return case.as_layout(residual), None if dsum is None else case.as_layout(dsum)
