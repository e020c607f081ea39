"""Every family's analytic gradients against central finite differences of its own forward,
in float64 on tiny inputs: functional (each mode) and layer.

CPU only: finite differences cost two forward calls per input value, too many for the CUDA
simulator. CUDA's backward is held to the reference in test_families_reference.py, and the
reference to finite differences in test_reference.py.
"""

import numpy as np
import pytest
import reference as ref
from families import FAMILIES, Params
from helpers import assert_close, randomize_affine


def _check_fd(f, inputs, analytic, g):
    fd = ref.fd_grads(f, inputs, g)
    for name, grad in analytic.items():
        assert_close(grad, fd[name], 1e-6, name=f"d{name} vs finite differences")


@pytest.mark.parametrize("fam,mode", [(fam, mode) for fam in FAMILIES for mode in fam.modes],
                         ids=lambda v: getattr(v, "name", None) or str(v))
def test_functional_matches_finite_differences(rng, fam, mode):
    case = fam.fd_case
    x = rng.standard_normal(case.shape) * 1.5 + 0.3
    g = rng.standard_normal(case.shape)
    p = fam.params(rng, case, np.float64, "wb", running=mode.running)
    opts = dict(mode.opts, eps=1e-3) if "eps" in mode.opts and mode.opts["eps"] is not None else mode.opts

    def forward(x, weight, bias=None):  # running statistics: fresh copies every call
        run = Params(weight, bias, *(None if a is None else a.copy() for a in p[2:]))
        return fam.forward(x, case, run, **opts)

    _, mean, rstd = forward(x, p.weight, p.bias)
    dx, dw, db = fam.backward(g, x, case, mean, rstd, p, fam.input_stats(opts, p))
    inputs = {"x": x, "weight": p.weight} | ({"bias": p.bias} if fam.bias else {})
    analytic = {"x": dx, "weight": dw} | ({"bias": db} if fam.bias else {})
    _check_fd(lambda **kw: forward(**kw)[0], inputs, analytic, g)


@pytest.mark.parametrize("fam", FAMILIES, ids=str)
def test_layer_matches_finite_differences(rng, fam):
    case = fam.fd_case
    layer = fam.make(case, np.float64, **fam.unit[1])
    w0, b0 = randomize_affine(layer, rng)
    x = rng.standard_normal(case.shape)
    g = rng.standard_normal(case.shape)

    def f(x, weight, bias=None):
        layer.weight[...] = weight
        if bias is not None:
            layer.bias[...] = bias
        return layer(x)

    inputs = {"x": x, "weight": w0} | ({"bias": b0} if fam.bias else {})
    fd = ref.fd_grads(f, inputs, g)
    f(x, w0, b0)
    assert_close(layer.backward(g), fd["x"], 1e-6, name="dx")
    assert_close(layer.grad_weight, fd["weight"], 1e-6, name="grad_weight")
    if fam.bias:
        assert_close(layer.grad_bias, fd["bias"], 1e-6, name="grad_bias")
