"""numbanorm.torch.convert / revert: in-place class swaps, the report, subclasses, copies."""

import copy
import pickle

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("numbanorm.torch")

pytestmark = pytest.mark.torch

torch.set_num_threads(2)


class StockForwardBN(torch.nn.BatchNorm2d):
    """A third-party subclass that keeps the stock forward (converted)."""

    def extra_method(self):
        return "kept"


class OwnForwardLN(torch.nn.LayerNorm):
    """A third-party subclass with its own forward (left alone)."""

    def forward(self, x):
        return super().forward(x) * 2


class HandWrittenRMSNorm(torch.nn.Module):
    """A norm that does not subclass torch's (left alone, and reported)."""

    def __init__(self, d):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.sub_bn = StockForwardBN(8, momentum=None)
        self.gn = torch.nn.GroupNorm(4, 8)
        self.inorm = torch.nn.InstanceNorm2d(8, affine=True)
        self.ln = torch.nn.LayerNorm(8)
        self.fancy = OwnForwardLN(8)
        self.rms = torch.nn.RMSNorm(8)
        self.hand = HandWrittenRMSNorm(8)
        self.sync = torch.nn.SyncBatchNorm(8)
        self.shared = self.ln  # the same module under two names

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = self.sub_bn(h) + self.gn(h)
        h = self.inorm(h) + h  # residuals, so that every layer's gradient matters
        v = h[:, :, 1, 2] + h[:, :, 3, 4]
        v = self.ln(v) + v
        return self.hand(self.rms(self.fancy(self.shared(v)) + v))


def _model(seed=0):
    torch.manual_seed(seed)
    return Net()


def _x():
    return torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))


def _target():
    return torch.randn(4, 8, generator=torch.Generator().manual_seed(2))


def test_convert_swaps_classes_in_place_and_reports_the_rest():
    model = _model()
    params = {name: p for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    out, report = nt.convert(model)
    assert out is model
    assert type(model.bn) is nt.BatchNorm2d
    assert type(model.gn) is nt.GroupNorm and type(model.inorm) is nt.InstanceNorm2d
    assert type(model.ln) is nt.LayerNorm and model.shared is model.ln and type(model.rms) is nt.RMSNorm
    assert isinstance(model.sub_bn, StockForwardBN) and isinstance(model.sub_bn, nt.BatchNorm2d)
    assert model.sub_bn.extra_method() == "kept" and type(model.sub_bn).__name__ == "StockForwardBN"
    assert type(model.fancy) is OwnForwardLN and type(model.hand) is HandWrittenRMSNorm
    assert type(model.sync) is nt.SyncBatchNorm
    assert {name: p for name, p in model.named_parameters()} == params  # the same objects
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert sorted(name for name, _ in report.converted) == ["bn", "gn", "inorm", "ln", "rms", "sub_bn", "sync"]
    skipped = {name: reason for name, _, reason in report.skipped}
    assert set(skipped) == {"fancy", "hand"}
    assert "overrides forward" in skipped["fancy"]
    assert "own implementation" in skipped["hand"]
    assert "left alone fancy" in str(report)


def test_converted_model_trains_like_stock_and_reverts():
    stock, model = _model(), _model()
    nt.convert(model)
    opt_stock = torch.optim.SGD(stock.parameters(), lr=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        for m, o in ((stock, opt_stock), (model, opt)):
            o.zero_grad()
            (m(_x()) * _target()).sum().backward()
            o.step()
    for (k, a), (k2, b) in zip(stock.state_dict().items(), model.state_dict().items(), strict=True):
        assert k == k2
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=k)
    nt.revert(model)
    assert type(model.bn) is torch.nn.BatchNorm2d and type(model.sub_bn) is StockForwardBN
    assert type(model.ln) is torch.nn.LayerNorm and type(model.inorm) is torch.nn.InstanceNorm2d
    model.eval()
    stock.eval()
    torch.testing.assert_close(model(_x()), stock(_x()), atol=1e-5, rtol=1e-4)


def test_convert_twice_and_a_norm_module_as_the_model():
    bn = torch.nn.BatchNorm1d(3)
    _, report = nt.convert(bn)
    assert type(bn) is nt.BatchNorm1d and report.converted == [("", "torch.nn.modules.batchnorm.BatchNorm1d")]
    _, again = nt.convert(bn)
    assert again.converted == [] and again.skipped[0][2] == "already a numbanorm module"
    assert type(nt.revert(bn)) is torch.nn.BatchNorm1d


def test_converted_models_deepcopy_and_pickle():
    model = _model()
    nt.convert(model)
    model.eval()
    expected = model(_x())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.bn) is nt.BatchNorm2d
        assert isinstance(clone.sub_bn, StockForwardBN) and isinstance(clone.sub_bn, nt.NumbanormModule)
        assert type(clone.sub_bn) is type(model.sub_bn)
        torch.testing.assert_close(clone(_x()), expected)


def test_convert_keeps_memory_format_and_device():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.GroupNorm(2, 8))
    model = model.to(memory_format=torch.channels_last)
    nt.convert(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = _x().to(memory_format=torch.channels_last)
    y = model(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_lazy_modules_are_converted_once_initialized():
    model = torch.nn.Sequential(torch.nn.LazyBatchNorm1d())
    _, report = nt.convert(model)
    assert report.converted == [] and "lazy" in report.skipped[0][2]
    model(torch.randn(4, 3))
    _, report = nt.convert(model)
    assert type(model[0]) is nt.BatchNorm1d
