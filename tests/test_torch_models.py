"""Real models nobody here wrote, built from configs with random init (no downloads):
transformers' ResNet (BatchNorm2d) and ViT (LayerNorm), diffusers' UNet2DModel (GroupNorm),
torch.nn.TransformerEncoder (LayerNorm, norm_first both ways).

20 SGD steps stock and converted from the same initial weights give the same loss at every
step (float32, relative 1e-4) and the same state_dict; eval outputs are equal; a
channels_last model stays channels_last; torch.compile of a converted model equals eager.
"""

import copy

import pytest

torch = pytest.importorskip("torch")
nt = pytest.importorskip("numbanorm.torch")

pytestmark = pytest.mark.torch

torch.set_num_threads(2)

STEPS = 20
LOSS_RTOL = 1e-4


def _resnet():
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=5)
    return transformers.ResNetForImageClassification(config)


def _vit():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=32, num_labels=5)
    return transformers.ViTForImageClassification(config)


def _unet():
    diffusers = pytest.importorskip("diffusers")
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"))


class _Encoder(torch.nn.Module):
    def __init__(self, norm_first):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True,
                                                 norm_first=norm_first)
        self.encoder = torch.nn.TransformerEncoder(layer, 2, norm=torch.nn.LayerNorm(16), enable_nested_tensor=False)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _gen(step):
    return torch.Generator().manual_seed(1000 + step)


def _image_batch(step):
    g = _gen(step)
    return torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 5, (6,), generator=g)


def _classifier_loss(model, batch):
    x, labels = batch
    return torch.nn.functional.cross_entropy(model(x).logits, labels)


def _unet_batch(step):
    g = _gen(step)
    return torch.randn(2, 3, 16, 16, generator=g), torch.randint(0, 100, (2,), generator=g), \
        torch.randn(2, 3, 16, 16, generator=g)


def _unet_loss(model, batch):
    x, t, noise = batch
    return torch.nn.functional.mse_loss(model(x, t).sample, noise)


def _seq_batch(step):
    g = _gen(step)
    return torch.randn(4, 7, 16, generator=g), torch.randint(0, 5, (4,), generator=g)


def _seq_loss(model, batch):
    x, labels = batch
    return torch.nn.functional.cross_entropy(model(x), labels)


def _classifier_output(model, batch):
    return model(batch[0]).logits


def _unet_output(model, batch):
    return model(*batch[:2]).sample


def _seq_output(model, batch):
    return model(batch[0])


# (id, builder, batch maker, loss, eval output, norm class converted, how many)
MODELS = [
    ("resnet", _resnet, _image_batch, _classifier_loss, _classifier_output, "BatchNorm2d", 6),
    ("resnet-channels_last", _resnet, _image_batch, _classifier_loss, _classifier_output, "BatchNorm2d", 6),
    ("vit", _vit, _image_batch, _classifier_loss, _classifier_output, "LayerNorm", 5),
    ("unet2d", _unet, _unet_batch, _unet_loss, _unet_output, "GroupNorm", 21),
    ("encoder-post-norm", lambda: _Encoder(False), _seq_batch, _seq_loss, _seq_output, "LayerNorm", 5),
    ("encoder-norm-first", lambda: _Encoder(True), _seq_batch, _seq_loss, _seq_output, "LayerNorm", 5),
]


def _to_layout(batch, channels_last):
    if not channels_last:
        return batch
    return tuple(b.to(memory_format=torch.channels_last) if b.dim() == 4 else b for b in batch)


@pytest.mark.parametrize("name,build,make_batch,loss_fn,output,norm,count", MODELS, ids=[m[0] for m in MODELS])
def test_training_matches_stock(name, build, make_batch, loss_fn, output, norm, count):
    torch.manual_seed(0)
    stock = build()
    channels_last = name.endswith("channels_last")
    if channels_last:
        stock = stock.to(memory_format=torch.channels_last)
    converted = copy.deepcopy(stock)
    _, report = nt.convert(converted)
    assert len(report.converted) == count and all(cls.endswith(norm) for _, cls in report.converted)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (stock, converted)]
    for step in range(STEPS):
        batch = _to_layout(make_batch(step), channels_last)
        losses = []
        for model, opt in zip((stock, converted), opts, strict=True):
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[1] - losses[0]) <= LOSS_RTOL * abs(losses[0]), f"step {step}: {losses}"
    stock_state, state = stock.state_dict(), converted.state_dict()
    assert list(state) == list(stock_state)
    for key, value in stock_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-5, msg=key)
        if channels_last and value.dim() == 4:
            assert state[key].is_contiguous(memory_format=torch.channels_last), key
    stock.eval()
    converted.eval()
    batch = _to_layout(make_batch(STEPS), channels_last)
    with torch.no_grad():
        expected, got = output(stock, batch), output(converted, batch)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    if channels_last:
        features = converted.resnet.embedder(batch[0])
        assert features.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name,build,make_batch,loss_fn", [
    ("resnet-channels_last", _resnet, _image_batch, _classifier_loss),
    ("encoder-norm-first", lambda: _Encoder(True), _seq_batch, _seq_loss),
], ids=["resnet-channels_last", "encoder-norm-first"])
def test_compiled_converted_model_equals_eager(name, build, make_batch, loss_fn):
    """torch.compile traces the custom ops (graph breaks would be acceptable, wrong results not)."""
    torch.manual_seed(0)
    eager = build()
    channels_last = name.endswith("channels_last")
    if channels_last:
        eager = eager.to(memory_format=torch.channels_last)
    nt.convert(eager)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    for step in range(2):  # training steps: running statistics and gradients
        batch = _to_layout(make_batch(step), channels_last)
        losses = []
        for model in (eager, compiled):
            model.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            losses.append(loss.item())
        assert abs(losses[1] - losses[0]) <= 1e-5 * abs(losses[0]), losses
        for (key, p), q in zip(eager.named_parameters(), compiled_model.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=key)
    for (key, b), c in zip(eager.named_buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=key)
