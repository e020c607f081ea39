"""Swap a model's normalization modules onto numbanorm's kernels, in place, and back.

:func:`convert` changes the class of each supported module (``module.__class__``) to its
numbanorm counterpart and touches nothing else: the same module objects, parameters,
buffers, hooks, device and memory format, so an optimizer built before the call keeps
working, and a module shared by two parents is converted once. :func:`revert` restores
the original classes.

A third-party subclass of a supported ``torch.nn`` module (timm's, say) is converted to a
class derived from both numbanorm's module and the subclass, so it keeps its other
methods and ``isinstance`` checks, when it does not override the methods numbanorm
replaces (``forward``; for InstanceNorm also ``_apply_instance_norm``); otherwise it is
left alone, and so are modules numbanorm has no kernel for. The returned
:class:`ConversionReport` lists both, with reasons.
"""

import dataclasses
import functools

import torch

from .modules import MODULES, NumbanormModule

__all__ = ["convert", "revert", "ConversionReport"]

# Stock classes numbanorm has no module for, with the reason the report gives.
_UNSUPPORTED = (
    (torch.nn.LocalResponseNorm, "LocalResponseNorm: not a normalization numbanorm implements"),
    (torch.nn.CrossMapLRN2d, "CrossMapLRN2d: not a normalization numbanorm implements"),
)


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: ``converted`` rows ``(name, class name)`` and ``skipped``
    rows ``(name, class name, reason)``; ``name`` is the module's path in the model
    (``""`` for the model itself)."""

    converted: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"numbanorm.torch.convert: {len(self.converted)} module(s) converted, "
                 f"{len(self.skipped)} left alone"]
        counts = {}
        for _, cls in self.converted:
            counts[cls] = counts.get(cls, 0) + 1
        lines += [f"  converted {n} x {cls}" for cls, n in counts.items()]
        lines += [f"  left alone {name or '<model>'} ({cls}): {reason}" for name, cls, reason in self.skipped]
        return "\n".join(lines)


def _qualname(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _stock_base(cls):
    """The stock torch.nn class a class derives from, if numbanorm has a module for it."""
    for stock in MODULES:
        if issubclass(cls, stock):
            return stock
    return None


def _target(cls):
    """``(numbanorm class, None)`` for a module class convert swaps, else ``(None, reason)``."""
    if issubclass(cls, NumbanormModule):
        return None, "already a numbanorm module"
    stock = _stock_base(cls)
    if stock is None:
        for unsupported, reason in _UNSUPPORTED:
            if issubclass(cls, unsupported):
                return None, reason
        if issubclass(cls, torch.nn.modules.lazy.LazyModuleMixin) and "Norm" in cls.__name__:
            return None, "lazy module not initialized yet (run one forward pass, then convert)"
        return None, "not a subclass of a torch.nn norm module numbanorm supports (its own implementation)"
    ours = MODULES[stock]
    if cls is stock:
        return ours, None
    overridden = [m for m in ours._numbanorm_replaces if getattr(cls, m) is not getattr(stock, m)]
    if overridden:
        return None, f"subclass of {stock.__name__} that overrides {', '.join(overridden)}"
    try:
        return _derived(cls, ours), None
    except TypeError as err:  # a layout or MRO conflict with numbanorm's class
        return None, f"subclass of {stock.__name__} that cannot be combined with numbanorm's: {err}"


@functools.cache
def _derived(cls, ours):
    """A class with numbanorm's kernels and everything else of the subclass ``cls``."""
    return type(cls.__name__, (ours, cls), {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_numbanorm_origin": cls,
        "__reduce_ex__": _reduce_derived,
    })


def _reduce_derived(self, protocol):
    # The derived class has no importable name: pickle (and copy.deepcopy) rebuild it
    # from the third-party class it was made from.
    return _new_converted, (type(self)._numbanorm_origin,), self.__getstate__()


def _new_converted(origin):
    cls, reason = _target(origin)
    if cls is None:
        raise TypeError(f"cannot rebuild a numbanorm module from {_qualname(origin)}: {reason}")
    return cls.__new__(cls)


def _norm_like(cls):
    return "norm" in cls.__name__.lower()


def convert(model):
    """Run every supported normalization module of ``model`` on numbanorm's kernels, in place.

    Supported: ``torch.nn.BatchNorm1d/2d/3d``, ``InstanceNorm1d/2d/3d``, ``LayerNorm``,
    ``GroupNorm``, ``RMSNorm``, and subclasses of them that keep the stock ``forward``.
    Modules stay the same objects (parameters, buffers, hooks, device, memory format
    and any optimizer keep working); only their class changes.

    Returns
    -------
    (model, report) : the same ``model`` and a :class:`ConversionReport` of what was
    converted and what was left alone and why (other modules whose class name contains
    "Norm" are listed, so hand-written norms such as ``LlamaRMSNorm`` are visible).
    """
    report = ConversionReport()
    for name, module in model.named_modules():
        cls = type(module)
        if _stock_base(cls) is None and not issubclass(cls, NumbanormModule) and not _norm_like(cls):
            continue
        target, reason = _target(cls)
        if target is None:
            report.skipped.append((name, _qualname(cls), reason))
            continue
        module.__class__ = target
        report.converted.append((name, _qualname(cls)))
    return model, report


def revert(model):
    """Undo :func:`convert`: every numbanorm module of ``model`` gets its original class
    back (numbanorm modules built directly become the stock ``torch.nn`` ones). Returns
    ``model``."""
    for module in model.modules():
        if isinstance(module, NumbanormModule):
            module.__class__ = type(module)._numbanorm_origin
    return model
