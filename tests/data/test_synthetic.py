import numpy as np

from vitkit.data.synthetic import SHAPE_CLASSES, make_shapes


def test_shapes_are_seeded_balanced_and_varied():
    x1, y1 = make_shapes(100, size=24, seed=3)
    x2, y2 = make_shapes(100, size=24, seed=3)
    x3, _ = make_shapes(100, size=24, seed=4)
    assert x1.shape == (100, 24, 24, 3) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert not np.array_equal(x1, x3)
    assert len(SHAPE_CLASSES) >= 10
    assert np.bincount(y1, minlength=10).tolist() == [10] * 10


def test_colour_alone_does_not_give_the_class():
    """Mean colour per class is nearly the same: the classes differ in geometry, not in colour."""
    x, y = make_shapes(1000, size=32, seed=0)
    means = np.stack([x[y == c].reshape(-1, 3).mean(0) for c in range(10)])
    assert np.ptp(means, axis=0).max() < 25  # of 255
