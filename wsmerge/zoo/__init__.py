"""The model zoo: MNIST CNNs for every class subset × activation × init, trained by Ray
actors into a resumable Parquet store.

    cfg = wsmerge.zoo.profile("tiny")
    wsmerge.zoo.build_zoo(cfg, "zoo/tiny")
    df = wsmerge.zoo.load("zoo/tiny")          # one row per checkpoint

Ray is imported only with the builder (`build_zoo`, `BuildOptions`, `BuildReport`), so the
trainer, the planner and the store work where Ray is not installed.
"""

from ._config import PROFILES, Job, TrainConfig, ZooConfig, class_key, parse_class_key, profile
from ._plan import (
    BuildPlan, ProbeRates, compile_seconds, plan_build, plan_groups, probe_rates, train_images, validation_forward,
)
from ._store import MANIFEST, ZooStore, ZooStoreError, export_csv, load, load_init, read_csv, weights_matrix
from ._train import EarlyStopping, ModelRecord, bin_sources, cyclic_lr, train_group

_BUILDER = ("ActorsLost", "BuildOptions", "BuildReport", "build_zoo")


def __getattr__(name: str):
    if name in _BUILDER:
        from . import _build

        return getattr(_build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST",
    "PROFILES",
    "ActorsLost",
    "BuildOptions",
    "BuildPlan",
    "BuildReport",
    "EarlyStopping",
    "Job",
    "ModelRecord",
    "ProbeRates",
    "TrainConfig",
    "ZooConfig",
    "ZooStore",
    "ZooStoreError",
    "bin_sources",
    "build_zoo",
    "class_key",
    "compile_seconds",
    "cyclic_lr",
    "export_csv",
    "load",
    "load_init",
    "parse_class_key",
    "plan_build",
    "plan_groups",
    "probe_rates",
    "profile",
    "read_csv",
    "train_group",
    "train_images",
    "validation_forward",
    "weights_matrix",
]
