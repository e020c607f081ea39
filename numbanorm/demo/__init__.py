"""``python -m numbanorm demo``: BatchNorm on real data, with numbanorm as the normalization.

Trains small NumPy networks on scikit-learn's bundled digits with and without
numbanorm's BatchNorm, folds the trained BatchNorms into the preceding layers for
inference (:mod:`numbanorm.fuse`), and shows the train/eval pitfall. Needs the
``demo`` extra: ``pip install "numbanorm[demo]"``. Entry point: :func:`numbanorm.demo.cli.main`.
"""
