import os
import shutil
import tempfile

import pytest
import torch

torch.set_num_threads(2)
# Every Ray of the tests runs without token authentication, as the two-node cluster of
# test_cluster.py does. Unset, a local ray.init() turns it on for the rest of the process
# (Ray 2.60 writes RAY_AUTH_MODE=token into os.environ and caches the mode), and a driver
# in token mode loses every actor it starts on a cluster without it ("cancelled before it
# started running"): a sweep test run before the cluster's failed it.
os.environ["RAY_AUTH_MODE"] = "disabled"


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


def _build_zoo(root, mnist, train_per_class, eval_per_class, activations=("relu", "tanh")):
    """A small zoo on digits 0-3, trained in-process (no Ray) and written through the store."""
    from wsmerge.zoo import TrainConfig, ZooConfig, ZooStore, plan_groups, train_group, train_images

    cfg = ZooConfig(name="test", digits=(0, 1, 2, 3), activations=activations,
                    train=TrainConfig(max_epochs=2, bins=(1, 2), train_per_class=train_per_class,
                                      eval_per_class=eval_per_class, cycle_half_epochs=1.0))
    store = ZooStore(root, cfg).open()
    jobs = cfg.jobs()
    # Grouping never changes a model; four a step cost on a CPU what one does.
    for group in plan_groups(jobs, 4, train_images(jobs, cfg.train, mnist)):
        for record in train_group(group, mnist, cfg.train):
            store.write(record)
    return root


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory, mnist):
    return _build_zoo(tmp_path_factory.mktemp("zoo") / "tiny", mnist, 300, 100)


@pytest.fixture(scope="session")
def sweep_zoo(tmp_path_factory, mnist):
    """The tiny zoo's relu models on a third of its images: what sweep tests need is trials
    that run, not CNNs that are good."""
    return _build_zoo(tmp_path_factory.mktemp("zoo") / "sweep", mnist, 100, 20, ("relu",))
