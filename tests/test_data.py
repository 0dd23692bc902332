import gzip

import numpy as np
import pytest
import torch

from wsmerge.data import check_classes, load_mnist


def test_packaged_copy_splits(mnist):
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (50000, 10000, 10000)
    assert mnist.train.images.shape == (50000, 1, 28, 28) and mnist.train.images.dtype == torch.float32
    assert 0 <= mnist.test.images.min() and mnist.test.images.max() < 1
    assert sorted(mnist.test.labels.unique().tolist()) == list(range(10))


def test_class_views(mnist):
    idx = mnist.train.indices((7, 2), per_class=30)
    assert len(idx) == 60 and torch.equal(idx, idx.sort().values)
    assert set(mnist.train.labels[idx].tolist()) == {2, 7}
    others = mnist.test.others((0, 1, 2, 3, 4, 5, 6, 7, 8))
    assert set(mnist.test.labels[others].tolist()) == {9}
    assert len(mnist.test.others(range(10))) == 0


@pytest.mark.parametrize("bad, message", [((), "empty class set"), ((3, 10), "not MNIST digits")])
def test_bad_class_sets(bad, message):
    with pytest.raises(ValueError, match=message):
        check_classes(bad)


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_torchvision_folder(tmp_path, compressed):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (50003, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(50003) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (7, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(7) % 10,
    }
    for name, arr in files.items():
        data = _idx(arr)
        if compressed:
            (raw / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (raw / name).write_bytes(data)
    m = load_mnist(str(tmp_path))
    assert (len(m.train), len(m.val), len(m.test)) == (50000, 3, 7)
    np.testing.assert_allclose(m.test.images[3, 0].numpy(), files["t10k-images-idx3-ubyte"][3] / 256.0)
    assert m.val.labels.tolist() == [0, 1, 2]


def test_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_mnist(str(tmp_path / "nowhere"))
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(str(tmp_path))
    (raw / "train-images-idx3-ubyte").write_bytes(_idx(np.zeros((5, 28, 28)))[:-10])
    with pytest.raises(ValueError, match="expected 3920 values"):
        load_mnist(str(tmp_path))
