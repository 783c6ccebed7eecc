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
    """A nearest-centroid classifier on each image's mean colour stays near chance (10%): the classes differ in
    geometry. (Shapes are lighter than their background, so a class that fills more area is a little brighter.)"""
    x, y = make_shapes(2000, size=32, seed=0)
    colour = x.reshape(len(x), -1, 3).mean(axis=1)
    centroids = np.stack([colour[:1000][y[:1000] == c].mean(axis=0) for c in range(10)])
    predicted = np.argmin(((colour[1000:, None] - centroids[None]) ** 2).sum(axis=-1), axis=1)
    assert (predicted == y[1000:]).mean() < 0.2


def test_the_shape_is_lighter_than_its_background():
    x, _ = make_shapes(200, size=32, seed=5)
    luminance = x.astype(float) @ np.array([0.299, 0.587, 0.114])
    centre, corner = luminance[:, 12:20, 12:20].max(axis=(1, 2)), luminance[:, :3, :3].mean(axis=(1, 2))
    assert (centre > corner).mean() > 0.95  # the brightest pixels are the shape's (noise aside)
