"""Command line: ``python -m numbanorm {demo,bench,info} ...``."""

import argparse
import sys


def _info(argv):
    import numba
    import numpy as np

    from . import __version__, config

    print(f"numbanorm {__version__}  numpy {np.__version__}  numba {numba.__version__}")
    print(f"threads {numba.get_num_threads()}  parallel {config.PARALLEL}  cache {config.CACHE}")
    print(f"fastmath reduce {sorted(config.FASTMATH_REDUCE)}  elementwise {sorted(config.FASTMATH_ELEMENTWISE)}")
    return 0


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m numbanorm",
                                     description="numbanorm: Numba-accelerated normalization layers")
    parser.add_argument("command", choices=["demo", "bench", "info"],
                        help="demo: train small networks on digits with and without BatchNorm; "
                             "bench: benchmark against PyTorch, ONNX Runtime and a memory copy; "
                             "info: versions and flags")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    args = parser.parse_args(argv[:1])
    rest = argv[1:]
    if args.command == "demo":
        from .demo.cli import main as run
    elif args.command == "bench":
        from .bench import main as run
    else:
        run = _info
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
