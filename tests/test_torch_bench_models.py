"""Smoke test of the model benchmark (tiny models, one repeat; no timing is asserted)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
bench_models = pytest.importorskip("numbanorm.torch.bench_models")

pytestmark = pytest.mark.torch


def test_run_models_rows_and_table():
    names = ["resnet18 BN2d channels_last", "transformer norm-first LN"]
    rows = bench_models.run_models(threads=2, models=names, repeat=1, warmup=1, quick=True)
    assert [r["model"] for r in rows] == names
    for r in rows:
        assert r["train_stock_ms"] > 0 and r["train_converted_ms"] > 0 and r["infer_ratio"] > 0
        assert 0 < r["norm_share_stock"] < 1 and 0 < r["norm_share_converted"] < 1
    table = bench_models.format_table(rows)
    assert all(name in table for name in names) and "norm share" in table


def test_unknown_model_is_an_error():
    with pytest.raises(ValueError, match="unknown models"):
        bench_models.run_models(models=["alexnet"], quick=True)
