"""Real models, stock PyTorch vs converted by :func:`numbanorm.torch.convert`.

``run_models(threads=2)`` builds each model from a config with random weights (nothing
is downloaded): transformers' ResNet-18 (BatchNorm2d; contiguous and channels_last)
and a ViT (LayerNorm), diffusers' ``UNet2DModel`` (GroupNorm), and a
``torch.nn.TransformerEncoder`` (LayerNorm; post-norm and norm-first). For each it
times, at ``threads`` threads for PyTorch and Numba:

* a train step: forward, loss, backward and an SGD step;
* inference: ``eval()`` forward under ``torch.no_grad()``;

for the stock model and a converted deep copy of it, interleaved repeat by repeat (the
order alternates) so that load from elsewhere hits both alike. Times are medians over
the repeats; each ratio (stock / converted: above 1, the converted model is faster) is
the median of the per-repeat ratios. ``torch.profiler`` over stock (and converted)
train steps gives the norm layers' share of a step, which bounds the end-to-end gain:
a step whose norm layers take a share ``s`` and become ``k`` times faster runs
``1 / (1 - s + s / k)`` times faster.

``nn.TransformerEncoderLayer`` takes PyTorch's fused fast path in ``eval()`` under
``no_grad`` (``torch._transformer_encoder_layer_fwd``), which reads the norm weights
without calling the norm modules: its inference rows time PyTorch's kernels on both
sides.

``python -m numbanorm.torch.bench_models [--threads N] [--repeat R] [--quick]`` prints the table.
"""

import argparse
import copy
import statistics
import sys
import time

import torch

from .convert import convert

__all__ = ["MODELS", "run_models", "format_table", "main"]

_NORM_NAMES = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
               "batchnorm", "layernorm", "groupnorm", "instancenorm", "rmsnorm")


# -- models: (name, builder(quick) -> (model, make_batch, loss, forward)) ------------------

def _resnet(quick, channels_last=False):
    import transformers

    cfg = transformers.ResNetConfig(num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512],
                                    depths=[2, 2, 2, 2], layer_type="basic", num_labels=10)
    if quick:
        cfg = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                        layer_type="basic", num_labels=10)
    model = transformers.ResNetForImageClassification(cfg)
    batch, size = (4, 32) if quick else (16, 112)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    return model, lambda m: torch.nn.functional.cross_entropy(m(x).logits, labels), lambda m: m(x).logits


def _vit(quick):
    import transformers

    if quick:
        cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64, num_labels=10)
        batch = 4
    else:
        cfg = transformers.ViTConfig(image_size=128, patch_size=16, num_channels=3, hidden_size=384,
                                     num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536, num_labels=10)
        batch = 32
    model = transformers.ViTForImageClassification(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    return model, lambda m: torch.nn.functional.cross_entropy(m(x).logits, labels), lambda m: m(x).logits


def _unet(quick, channels_last=False):
    import diffusers

    if quick:
        model = diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                                      layers_per_block=1, norm_num_groups=4, attention_head_dim=8,
                                      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                      up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        batch, size = 2, 16
    else:
        model = diffusers.UNet2DModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128),
                                      layers_per_block=2, norm_num_groups=32, attention_head_dim=32,
                                      down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                      up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
        batch, size = 8, 32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    noise = torch.randn(batch, 3, size, size, generator=g)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x, noise = x.to(memory_format=torch.channels_last), noise.to(memory_format=torch.channels_last)
    return model, lambda m: torch.nn.functional.mse_loss(m(x, t).sample, noise), lambda m: m(x, t).sample


class _Encoder(torch.nn.Module):
    def __init__(self, d, heads, ff, layers, norm_first):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, dropout=0.0, batch_first=True,
                                                 norm_first=norm_first)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, norm=torch.nn.LayerNorm(d),
                                                   enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, 10)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _encoder(quick, norm_first):
    d, heads, ff, layers, batch, seq = (32, 2, 64, 1, 4, 16) if quick else (512, 8, 2048, 4, 16, 128)
    model = _Encoder(d, heads, ff, layers, norm_first)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, seq, d, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    return model, lambda m: torch.nn.functional.cross_entropy(m(x), labels), lambda m: m(x)


#: name -> builder(quick) returning (model, loss(model), forward(model)).
MODELS = {
    "resnet18 BN2d": lambda quick: _resnet(quick),
    "resnet18 BN2d channels_last": lambda quick: _resnet(quick, channels_last=True),
    "vit LN": _vit,
    "unet2d GN": _unet,
    "unet2d GN channels_last": lambda quick: _unet(quick, channels_last=True),
    "transformer post-norm LN": lambda quick: _encoder(quick, False),
    "transformer norm-first LN": lambda quick: _encoder(quick, True),
}


# -- measuring -----------------------------------------------------------------------------

def _set_threads(threads):
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass


def _train_step(model, loss, opt):
    opt.zero_grad(set_to_none=True)
    loss(model).backward()
    opt.step()


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _paired(pairs):
    """(median stock, median converted, median of per-repeat stock/converted)."""
    stock = [a for a, _ in pairs]
    conv = [b for _, b in pairs]
    return statistics.median(stock), statistics.median(conv), statistics.median(a / b for a, b in pairs)


def _norm_share(step, steps=3):
    """Share of train steps' CPU time spent in norm operators (self times, forward and
    backward; summed over ``steps`` profiled steps, which steadies the estimate)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function("numbanorm-bench-step"):
                step()
    total = norm = 0.0
    for event in prof.key_averages():
        if event.key == "numbanorm-bench-step":
            total = event.cpu_time_total
        elif any(n in event.key.lower() for n in _NORM_NAMES):
            norm += event.self_cpu_time_total
    return norm / total if total else float("nan")


def _measure(name, build, quick, repeat, warmup, profile):
    torch.manual_seed(0)
    stock, loss, forward = build(quick)
    converted = copy.deepcopy(stock)
    convert(converted)
    opts = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3) for m in (stock, converted)}
    models = (stock, converted)

    def train(m):
        return lambda: _train_step(m, loss, opts[id(m)])

    for m in models:
        m.train()
        for _ in range(warmup):
            train(m)()
    train_pairs = []
    for r in range(repeat):
        order = models if r % 2 == 0 else models[::-1]
        times = {id(m): _timed(train(m)) for m in order}
        train_pairs.append((times[id(stock)], times[id(converted)]))
    share_stock = _norm_share(train(stock)) if profile else float("nan")
    share_conv = _norm_share(train(converted)) if profile else float("nan")

    with torch.no_grad():
        for m in models:
            m.eval()
            for _ in range(warmup):
                forward(m)
        infer_pairs = []
        for r in range(repeat):
            order = models if r % 2 == 0 else models[::-1]
            times = {id(m): _timed(lambda m=m: forward(m)) for m in order}
            infer_pairs.append((times[id(stock)], times[id(converted)]))
    train_s, train_c, train_ratio = _paired(train_pairs)
    infer_s, infer_c, infer_ratio = _paired(infer_pairs)
    return {
        "model": name,
        "train_stock_ms": 1e3 * train_s,
        "train_converted_ms": 1e3 * train_c,
        "train_ratio": train_ratio,
        "infer_stock_ms": 1e3 * infer_s,
        "infer_converted_ms": 1e3 * infer_c,
        "infer_ratio": infer_ratio,
        "norm_share_stock": share_stock,
        "norm_share_converted": share_conv,
    }


def run_models(threads=2, *, models=None, repeat=7, warmup=2, quick=False, profile=True, progress=None):
    """Time every model of :data:`MODELS` (or those named in ``models``) stock vs converted.

    Returns a list of dicts, one per model: ``model``, ``train_stock_ms``,
    ``train_converted_ms``, ``train_ratio`` (stock / converted), ``infer_stock_ms``,
    ``infer_converted_ms``, ``infer_ratio``, ``norm_share_stock`` and
    ``norm_share_converted`` (fractions of a train step spent in norm operators, from
    ``torch.profiler``). :func:`format_table` prints them. ``quick`` uses tiny models
    (a smoke test, not a measurement); ``progress`` is called with each model's name.
    """
    _set_threads(threads)
    names = list(MODELS) if models is None else list(models)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; known: {list(MODELS)}")
    rows = []
    for name in names:
        if progress is not None:
            progress(name)
        row = _measure(name, MODELS[name], quick, repeat, warmup, profile)
        row["threads"] = threads
        rows.append(row)
    return rows


def format_table(rows):
    """The rows of :func:`run_models` as a text table (ratios: stock / converted time)."""
    head = (f"{'model':<30} {'train stock':>12} {'converted':>10} {'ratio':>6}   {'infer stock':>12} "
            f"{'converted':>10} {'ratio':>6}   {'norm share stock':>16} {'converted':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:<30} {r['train_stock_ms']:>10.1f}ms {r['train_converted_ms']:>8.1f}ms "
                     f"{r['train_ratio']:>6.2f}   {r['infer_stock_ms']:>10.1f}ms {r['infer_converted_ms']:>8.1f}ms "
                     f"{r['infer_ratio']:>6.2f}   {100 * r['norm_share_stock']:>15.0f}% "
                     f"{100 * r['norm_share_converted']:>8.0f}%")
    threads = {r.get("threads") for r in rows}
    lines.append(f"threads {', '.join(str(t) for t in sorted(threads, key=str))}; times: medians; ratio = stock / "
                 "converted (median of per-repeat ratios, above 1: converted faster); norm share: norm operators' "
                 "self CPU time / train step (torch.profiler)")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m numbanorm.torch.bench_models",
                                description="Train-step and inference time of real models, stock vs converted")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="tiny models (smoke test)")
    p.add_argument("--model", action="append", default=None, choices=list(MODELS))
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)
    rows = run_models(args.threads, models=args.model, repeat=args.repeat, quick=args.quick,
                      profile=not args.no_profile, progress=lambda name: print(f"... {name}", file=sys.stderr))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
