"""The demo (python -m numbanorm demo): its NumPy layers, folding, pitfall and CLI."""

import json
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

from numbanorm.demo import cli  # noqa: E402
from numbanorm.demo.data import load_digits_split  # noqa: E402
from numbanorm.demo.inference import fold_network, train_mode_pitfall  # noqa: E402
from numbanorm.demo.nets import Conv2d, Linear  # noqa: E402
from numbanorm.demo.train import RunResult, make_cnn, make_mlp, predict, train_run  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_digits_split(seed=0)


@pytest.mark.torch
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 1), (1, 0)])
def test_conv2d_matches_torch(stride, padding):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    conv = Conv2d(3, 4, 3, stride=stride, padding=padding, rng=rng, dtype=np.float64)
    conv.bias[...] = rng.standard_normal(4)
    x = rng.standard_normal((2, 3, 8, 8))
    y = conv(x)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(conv.weight, requires_grad=True)
    bt = torch.tensor(conv.bias, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(conv.grad_weight, wt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(conv.grad_bias, bt.grad.numpy(), atol=1e-12)


def test_linear_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    lin = Linear(4, 3, rng=rng, dtype=np.float64)
    x = rng.standard_normal((5, 4))
    dy = rng.standard_normal((5, 3))
    lin(x)
    dx = lin.backward(dy)
    h = 1e-6
    for i, j in [(0, 0), (2, 3), (4, 1)]:
        xp, xm = x.copy(), x.copy()
        xp[i, j] += h
        xm[i, j] -= h
        numeric = ((lin(xp) - lin(xm)) * dy).sum() / (2 * h)
        assert abs(numeric - dx[i, j]) < 1e-6


@pytest.mark.parametrize("model", ["MLP", "CNN"])
def test_folded_network_equals_eval_network(digits, model):
    if model == "MLP":
        net, x_train, x_test = make_mlp(batchnorm=True), digits.x_train, digits.x_test
    else:
        net = make_cnn(batchnorm=True)
        x_train, x_test = digits.images(digits.x_train), digits.images(digits.x_test)
    # one epoch, so the running statistics and BatchNorm parameters are not the defaults
    train_run(net, x_train, digits.y_train, x_test, digits.y_test, lr=0.1, epochs=1)
    folded = fold_network(net)
    assert len(folded) < len(net)
    assert not any(hasattr(layer, "running_mean") for layer in folded)
    expected = predict(net.eval(), x_test)
    got = predict(folded, x_test)
    assert got.dtype == expected.dtype == np.float32
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))


def test_batchnorm_beats_no_batchnorm_at_the_largest_learning_rate(digits):
    lr = max(cli.LEARNING_RATES)
    acc = {}
    for bn in (False, True):
        net = make_mlp(batchnorm=bn, init_scale=1.0, seed=0)
        run = train_run(net, digits.x_train, digits.y_train, digits.x_test, digits.y_test,
                        lr=lr, epochs=3, seed=0, result=RunResult("MLP", bn, lr, 1.0))
        acc[bn] = run.final_acc
    assert acc[True] > acc[False], acc


def test_train_mode_pitfall(digits):
    net = make_mlp(batchnorm=True)
    train_run(net, digits.x_train, digits.y_train, digits.x_test, digits.y_test, lr=0.1, epochs=2)
    info = train_mode_pitfall(net, digits.x_test, digits.y_test, batch_sizes=(1, 2))
    single, pairs = info["train_mode"]
    assert "more than 1 value per channel" in single["error"]
    assert single["state_unchanged"]
    assert pairs["acc"] < info["eval_acc"]
    assert info["eval_acc"] > 0.5


def test_demo_quick_writes_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert cli.main(["--quick", "--epochs", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    png = tmp_path / cli.FIGURE_NAME
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epochs to 90%" in out and "diverged" in out
    assert "identical predicted labels: yes" in out
    assert "more than 1 value per channel" in out
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 2 * len(cli.LEARNING_RATES) * len(cli.INIT_SCALES) + 2
    assert all(len(run["test_acc"]) == 1 for run in results["runs"])
    assert results["folding"]["MLP"]["labels_identical"]
    assert results["folding"]["CNN"]["labels_identical"]


@pytest.mark.parametrize("module, package", [("sklearn", "scikit-learn"), ("tqdm", "tqdm"),
                                             ("matplotlib", "matplotlib")])
def test_missing_extra_is_one_line(monkeypatch, capsys, tmp_path, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    assert cli.main(["--quick", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert package in lines[0] and 'pip install "numbanorm[demo]"' in lines[0]
    assert not (tmp_path / "results.json").exists()


def test_no_plot_does_not_need_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli._missing_extra(plot=False) is None
    assert cli._missing_extra(plot=True) == "matplotlib"


def test_parser():
    parser = cli.build_parser()
    assert parser.prog == "python -m numbanorm demo"
    args = parser.parse_args([])
    assert (args.quick, args.epochs, args.seed, args.out, args.no_plot) == (
        False, None, 0, "numbanorm-demo", False)
    with pytest.raises(SystemExit):
        cli.main(["--epochs", "0"])
