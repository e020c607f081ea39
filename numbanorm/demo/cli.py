"""Command line of ``python -m numbanorm demo``."""

import argparse
import importlib
import json
import os
import sys
import time

__all__ = ["build_parser", "main", "run_demo"]

LEARNING_RATES = (0.01, 0.1, 1.0)
INIT_SCALES = (1.0, 0.1)
CNN_LR = 0.1
EPOCHS, QUICK_EPOCHS = 30, 8
TIMING_REPEATS, QUICK_TIMING_REPEATS = 50, 10
FIGURE_NAME = "training_curves.png"

# module to import -> PyPI name, for the message when it is missing
_EXTRAS = {"tqdm": "tqdm", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m numbanorm demo",
        description=(
            "Train small NumPy networks on scikit-learn's digits with and without numbanorm "
            "BatchNorm, fold the BatchNorms away for inference, and show the train/eval "
            "pitfall. Prints a table and writes a PNG of the training curves."
        ),
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EPOCHS} epochs and fewer timing repeats "
                             "(under a minute on 2 cores)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help=f"epochs per run (default {EPOCHS}, {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the train/test split, the weights and the batch order "
                             "(default 0)")
    parser.add_argument("--out", default="numbanorm-demo", metavar="DIR",
                        help="output folder for the PNG and results.json "
                             "(default ./numbanorm-demo)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not draw the figure (matplotlib is then not needed)")
    parser.add_argument("--ranks", type=int, default=None, metavar="N",
                        help="instead: train the CNN data-parallel on N MPI ranks with SyncBatchNorm and "
                             "compare its loss with one process on the whole batches "
                             '(needs pip install "numbanorm[mpi]"; default 3 epochs, 2 with --quick)')
    return parser


def _missing_extra(plot):
    """The PyPI name of the first missing optional package, or None."""
    for module, package in _EXTRAS.items():
        if module == "matplotlib" and not plot:
            continue
        try:
            importlib.import_module(module)
        except ImportError:
            return package
    return None


def run_demo(*, epochs, seed=0, out="numbanorm-demo", plot=True, timing_repeats=TIMING_REPEATS,
             echo=print):
    """Run every part of the demo, print as it goes, and return the results as a dict."""
    import numbanorm

    start = time.perf_counter()
    # The demo interleaves tiny numbanorm calls with NumPy matmuls. OpenBLAS's idle threads
    # spin, so a numbanorm parallel region started right after a matmul waits for a core
    # (measured here: ~8 ms per switch on 2 cores). At these sizes the serial kernels are
    # fast anyway: run them serially, and restore the setting afterwards.
    parallel, numbanorm.config.PARALLEL = numbanorm.config.PARALLEL, False
    try:
        return _run_demo(epochs=epochs, seed=seed, out=out, plot=plot, timing_repeats=timing_repeats,
                         echo=echo, start=start)
    finally:
        numbanorm.config.PARALLEL = parallel


def _run_demo(*, epochs, seed, out, plot, timing_repeats, echo, start):
    from tqdm import tqdm

    import numbanorm

    from . import report
    from .data import load_digits_split
    from .inference import compare_folded, train_mode_pitfall
    from .train import RunResult, make_cnn, make_mlp, train_run

    os.makedirs(out, exist_ok=True)
    data = load_digits_split(seed)
    x_img_train, x_img_test = data.images(data.x_train), data.images(data.x_test)
    echo(f"numbanorm {numbanorm.__version__} demo: scikit-learn digits, "
         f"{len(data.x_train)} train / {len(data.x_test)} test images (8x8), seed {seed}, "
         f"{epochs} epochs of SGD (batch 64, cosine step size)")

    configs = [("MLP", bn, lr, init) for init in INIT_SCALES for lr in LEARNING_RATES
               for bn in (False, True)]
    configs += [("CNN", bn, CNN_LR, 1.0) for bn in (False, True)]
    results = []
    for model, bn, lr, init in configs:
        result = RunResult(model, bn, lr, init)
        if model == "MLP":
            net = make_mlp(batchnorm=bn, init_scale=init, seed=seed)
            x_train, x_test = data.x_train, data.x_test
        else:
            net = make_cnn(batchnorm=bn, init_scale=init, seed=seed)
            x_train, x_test = x_img_train, x_img_test

        def progress(iterable, label=result.label):
            return tqdm(iterable, desc=label, unit="epoch", leave=False, file=sys.stderr)

        train_run(net, x_train, data.y_train, x_test, data.y_test, lr=lr, epochs=epochs,
                  seed=seed, result=result, progress=progress)
        results.append(result)

    echo("\nTraining (test accuracy in eval mode, after the last epoch):")
    echo(report.format_table(results))

    figure = None
    if plot:
        figure = report.save_figure(results, os.path.join(out, FIGURE_NAME))
        echo(f"\nFigure: {figure}")

    def trained(model, lr):
        """The BatchNorm run of ``model`` at ``lr`` with the default init."""
        return next(r for r in results if r.model == model and r.batchnorm and r.lr == lr
                    and r.init_scale == 1.0)

    nets = {
        "MLP": (trained("MLP", 0.1), data.x_test),
        "CNN": (trained("CNN", CNN_LR), x_img_test),
    }
    echo("\nInference with BatchNorm folded into the preceding layer (numbanorm.fuse):")
    folding = {}
    for name, (run, inputs) in nets.items():
        folding[name] = compare_folded(run.net, inputs, repeats=timing_repeats)
        echo(report.format_fold(f"{name} (BN, lr {run.lr:g})", folding[name]))

    echo("\nThe train/eval pitfall: the same trained networks left in training mode:")
    pitfall = {}
    for name, (run, inputs) in nets.items():
        pitfall[name] = train_mode_pitfall(run.net, inputs, data.y_test)
        echo(report.format_pitfall(name, pitfall[name]))
    echo("In training mode BatchNorm normalizes each batch with that batch's own statistics: "
         "call eval() before inference.")

    summary = {
        "seed": seed, "epochs": epochs,
        "runs": [r.summary() for r in results],
        "folding": folding, "pitfall": pitfall, "figure": figure,
        "seconds": time.perf_counter() - start,
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    echo(f"\nResults: {os.path.join(out, 'results.json')} ({summary['seconds']:.1f} s in all)")
    summary["results"] = results
    return summary


def main(argv=None):
    """Entry point of ``python -m numbanorm demo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        build_parser().error("--epochs must be at least 1")
    missing = _missing_extra(plot=not args.no_plot)
    if missing is not None:
        print(f"numbanorm demo needs the optional package {missing!r}: "
              'pip install "numbanorm[demo]"', file=sys.stderr)
        return 1
    if args.ranks is not None:
        if args.ranks < 1:
            build_parser().error("--ranks must be at least 1")
        from .parallel import run_ranks

        epochs = args.epochs if args.epochs is not None else (2 if args.quick else 3)
        run_ranks(args.ranks, epochs=epochs, seed=args.seed, out=args.out, plot=not args.no_plot)
        return 0
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else EPOCHS)
    run_demo(epochs=epochs, seed=args.seed, out=args.out, plot=not args.no_plot,
             timing_repeats=QUICK_TIMING_REPEATS if args.quick else TIMING_REPEATS)
    return 0
