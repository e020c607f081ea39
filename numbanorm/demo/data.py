"""The demo's data: scikit-learn's bundled 8x8 handwritten digits (no download)."""

from dataclasses import dataclass

import numpy as np

__all__ = ["Digits", "load_digits_split"]


@dataclass
class Digits:
    """A seeded, stratified train/test split of ``sklearn.datasets.load_digits``.

    ``x_*`` are float32 pixels scaled to [0, 1], shape ``(n, 64)``; ``images``
    gives the ``(n, 1, 8, 8)`` view a CNN takes. ``y_*`` are int64 labels 0-9.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @staticmethod
    def images(x):
        return x.reshape(-1, 1, 8, 8)


def load_digits_split(seed=0, test_size=0.25, dtype=np.float32):
    """Load the 1797 digits and split them, stratified by class, with ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(dtype)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y.astype(np.int64), test_size=test_size, random_state=seed, stratify=y
    )
    return Digits(x_train, y_train, x_test, y_test)
