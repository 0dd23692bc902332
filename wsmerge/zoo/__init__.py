"""The model zoo: MNIST CNNs for every class subset × activation × init, trained by Ray
actors into a resumable Parquet store.

    cfg = wsmerge.zoo.profile("tiny")
    wsmerge.zoo.build_zoo(cfg, "zoo/tiny")
    df = wsmerge.zoo.load("zoo/tiny")          # one row per checkpoint
"""

from ._build import BuildOptions, BuildReport, build_zoo, plan_groups
from ._config import PROFILES, Job, TrainConfig, ZooConfig, class_key, parse_class_key, profile
from ._store import ZooStore, ZooStoreError, export_csv, load, load_init, read_csv, weights_matrix
from ._train import EarlyStopping, ModelRecord, bin_sources, cyclic_lr, train_group

__all__ = [
    "PROFILES",
    "BuildOptions",
    "BuildReport",
    "EarlyStopping",
    "Job",
    "ModelRecord",
    "TrainConfig",
    "ZooConfig",
    "ZooStore",
    "ZooStoreError",
    "bin_sources",
    "build_zoo",
    "class_key",
    "cyclic_lr",
    "export_csv",
    "load",
    "load_init",
    "parse_class_key",
    "plan_groups",
    "profile",
    "read_csv",
    "train_group",
    "weights_matrix",
]
