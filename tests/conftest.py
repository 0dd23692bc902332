import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist():
    from wsmerge.data import load_mnist

    return load_mnist()


@pytest.fixture
def ray_local():
    """A local Ray with a short temp dir (socket paths have a length limit), shut down after."""
    import ray

    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        yield tmp
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def ray_env(tmp_path):
    """Environment for a subprocess that starts its own Ray under a short temp dir."""
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    yield env
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory, mnist):
    """A small zoo on digits 0-3, trained in-process (no Ray) and written through the store."""
    from wsmerge.zoo import TrainConfig, ZooConfig, ZooStore, train_group

    cfg = ZooConfig(name="test", digits=(0, 1, 2, 3), activations=("relu", "tanh"),
                    train=TrainConfig(max_epochs=2, bins=(1, 2), train_per_class=300, eval_per_class=100,
                                      cycle_half_epochs=1.0))
    root = tmp_path_factory.mktemp("zoo") / "tiny"
    store = ZooStore(root, cfg).open()
    for act in cfg.activations:
        for record in train_group([j for j in cfg.jobs() if j.activation == act], mnist, cfg.train):
            store.write(record)
    return root
