"""Every family against the float64 reference (tests/reference.py), on the CPU and on CUDA:
functional forward and backward in every mode, layers over several steps and constructor
configurations (running statistics, the batch counter, train/eval), mixed dtypes."""

import numpy as np
import pytest
from backends import backend_param, both
from checks import DTYPES, check_functional, check_step, layer_pair, set_mode, tol
from families import FAMILIES, cfg_id
from helpers import data


def _functional_grid():
    """CPU: every case in every mode, with weight and bias, weight only, neither. CUDA: the
    tiny cases with and without parameters in the first mode, the first one in the others."""
    for fam in FAMILIES:
        for i, case in enumerate(fam.cuda_functional_cases + fam.functional_cases):
            for j, mode in enumerate(fam.modes):
                for affine in ("wb", "w", "none") if fam.bias else ("wb", "none"):
                    ident = f"{fam}-{case}-{mode.name}-{affine}"
                    yield backend_param("cpu", fam, case, mode, affine, id=f"cpu-{ident}")
                    if case in fam.cuda_functional_cases and (j == 0 and affine != "w" or i == 0 and affine == "wb"):
                        yield backend_param("cuda", fam, case, mode, affine, id=f"cuda-{ident}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be,fam,case,mode,affine", list(_functional_grid()))
def test_functional(rng, be, fam, case, mode, affine, dtype):
    x = data(rng, case.shape, dtype)
    dy = rng.standard_normal(case.shape).astype(dtype)
    p = fam.params(rng, case, dtype, affine, running=mode.running)
    check_functional(be, fam, case, mode.opts, p, x, dy)


def _layer_grid():
    for fam in FAMILIES:
        for case, cfg in fam.cuda_layer_cases + fam.layer_cases:
            ident = f"{fam}-{case}-{cfg_id(cfg)}"
            yield backend_param("cpu", fam, case, cfg, id=f"cpu-{ident}")
            if (case, cfg) in fam.cuda_layer_cases:
                yield backend_param("cuda", fam, case, cfg, id=f"cuda-{ident}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("be,fam,case,cfg", list(_layer_grid()))
def test_layer_steps(rng, be, fam, case, cfg, dtype):
    """Three training steps and one in evaluation mode, on data that moves."""
    layer, refl, twin = layer_pair(be, fam, case, rng, dtype, **cfg)
    for step in range(4):
        if step == 3:
            set_mode(False, layer, refl, twin)
        x = data(rng, case.shape, dtype, loc=step - 1.0, scale=0.5 + step)
        dy = rng.standard_normal(case.shape).astype(dtype)
        check_step(be, fam, layer, refl, x, dy, f"step {step}", twin)


def _mixed_grid():
    for fam in FAMILIES:
        for x_dtype, layer_dtype in ((np.float64, np.float32), (np.float32, np.float64)):
            ident = f"{fam}-x_{np.dtype(x_dtype)}-layer_{np.dtype(layer_dtype)}"
            yield from both(fam, x_dtype, layer_dtype, id=ident)


@pytest.mark.parametrize("be,fam,x_dtype,layer_dtype", list(_mixed_grid()))
def test_mixed_dtype(rng, be, fam, x_dtype, layer_dtype):
    """An input of the other float dtype: computed and returned in the input's dtype;
    parameters, running statistics and gradients stay in the layer's."""
    case, cfg = fam.mixed_case
    layer, refl, twin = layer_pair(be, fam, case, rng, layer_dtype, **cfg)
    x = data(rng, case.shape, x_dtype)
    dy = rng.standard_normal(case.shape).astype(x_dtype)
    # values stored in float32 are good to float32 rounding: 1e-6, as the old per-family tests
    stored = 1e-6 if layer_dtype == np.float32 else 1e-5
    check_step(be, fam, layer, refl, x, dy, twin=twin, run_tol={np.dtype(layer_dtype): stored},
               grad_tol=max(stored, tol(x_dtype)), dx_scaled=False)
    for name in ("weight", "bias", "running_mean", "running_var", "grad_weight", "grad_bias"):
        value = getattr(layer, name)
        assert value is None or value.dtype == layer_dtype, name
