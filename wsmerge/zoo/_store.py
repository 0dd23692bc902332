"""The zoo store: one Parquet shard per training job, a manifest, the shared initial weights.

    <zoo>/manifest.json        format tag, the config that built it, the job ids
    <zoo>/init.parquet         epoch-0 weights of every (activation, init, seed)
    <zoo>/shards/<job>.parquet one row per epoch bin of one model

Every file is written to a temporary name and renamed into place, so a killed build leaves
either a whole shard or none; a shard's presence is what marks its job done.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wsmerge.cnn import ACTIVATIONS, N_PARAMS, init_weights, layer_slices
from wsmerge.files import atomic_write, write_json

from ._config import Job, ZooConfig, class_key, parse_class_key
from ._train import ModelRecord, bin_sources

__all__ = [
    "MANIFEST",
    "ZooStoreError",
    "ZooStore",
    "export_csv",
    "load",
    "load_init",
    "read_csv",
    "weights_matrix",
]

MANIFEST = "manifest.json"
FORMAT = "wsmerge-zoo"
VERSION = 1
# The training recipe's version: the same config trains other weights under another recipe
# (2: each model its own epoch length, schedule, Adam steps and random streams, whatever its
# group). A zoo keeps to the recipe it was started with; `load` reads any.
RECIPE = 2
_WEIGHTS = pa.list_(pa.float32(), N_PARAMS)
SCHEMA = pa.schema(
    [
        ("job_id", pa.string()),
        ("classes", pa.string()),
        ("n_classes", pa.int8()),
        ("activation", pa.string()),
        ("init", pa.string()),
        ("seed", pa.int32()),
        ("epoch_bin", pa.int16()),
        ("epoch", pa.int16()),  # the epoch these weights were taken at
        ("stopped_epoch", pa.int16()),
        ("early_stopped", pa.bool_()),
        ("train_loss", pa.float32()),
        ("val_acc", pa.float32()),
        ("test_acc_in", pa.float32()),
        ("test_acc_out", pa.float32()),
        ("history_train_loss", pa.list_(pa.float32())),
        ("history_val_acc", pa.list_(pa.float32())),
        ("weights", _WEIGHTS),
    ]
)
_INIT_SCHEMA = pa.schema(
    [("activation", pa.string()), ("init", pa.string()), ("seed", pa.int32()), ("weights", _WEIGHTS)]
)


class ZooStoreError(RuntimeError):
    """A zoo directory that cannot be used as asked: foreign, mismatched or corrupted."""


def _weights_array(rows: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(rows, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, N_PARAMS)


def record_table(record: ModelRecord, bins: tuple[int, ...]) -> pa.Table:
    """The shard of one trained model: a row per bin, later bins filled after early stop."""
    job = record.job
    sources = bin_sources(bins, record.stopped_epoch)
    missing = sorted(set(sources) - set(record.checkpoints))
    if missing:
        raise ValueError(f"{job.id}: no checkpoint for epochs {missing}")
    n = len(bins)
    ck = [record.checkpoints[e] for e in sources]
    cols = {
        "job_id": [job.id] * n,
        "classes": [class_key(job.classes)] * n,
        "n_classes": [len(job.classes)] * n,
        "activation": [job.activation] * n,
        "init": [job.init] * n,
        "seed": [job.seed] * n,
        "epoch_bin": list(bins),
        "epoch": sources,
        "stopped_epoch": [record.stopped_epoch] * n,
        "early_stopped": [record.early_stopped] * n,
        "train_loss": [record.train_loss[e - 1] for e in sources],
        "val_acc": [record.val_acc[e - 1] for e in sources],
        "test_acc_in": [c[1] for c in ck],
        "test_acc_out": [c[2] for c in ck],
        "history_train_loss": [record.train_loss] * n,
        "history_val_acc": [record.val_acc] * n,
    }
    arrays = [pa.array(cols[f.name], type=f.type) for f in SCHEMA if f.name != "weights"]
    arrays.append(_weights_array(np.stack([c[0] for c in ck])))
    meta = {"wsmerge.job_id": job.id, "wsmerge.rows": str(n)}
    return pa.Table.from_arrays(arrays, schema=SCHEMA.with_metadata(meta))


class ZooStore:
    """A zoo directory on disk, bound to the config that builds it."""

    def __init__(self, root: str | os.PathLike, config: ZooConfig):
        self.root = Path(root)
        self.config = config
        self.shards = self.root / "shards"
        self.manifest = self.root / MANIFEST

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> "ZooStore":
        """Create the store, or reopen one built by the same config; refuse anything else."""
        if self.root.exists() and not self.root.is_dir():
            raise ZooStoreError(f"{self.root}: exists and is not a directory")
        if self.manifest.exists():
            self._check_manifest()
        elif self.root.exists() and any(self.root.iterdir()):
            raise ZooStoreError(
                f"{self.root}: holds other files and no zoo manifest; choose an empty or new --out"
            )
        else:
            self._create()
        for tmp in self.shards.glob(".*.tmp"):
            tmp.unlink()  # leftovers of a write that was killed before its rename
        return self

    def _create(self) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)
        keys = sorted({(j.activation, j.init, j.seed) for j in self.config.jobs()})
        w = np.stack([init_weights(*k).numpy() for k in keys])
        table = pa.Table.from_arrays(
            [
                pa.array([k[0] for k in keys]),
                pa.array([k[1] for k in keys]),
                pa.array([k[2] for k in keys], pa.int32()),
                _weights_array(w),
            ],
            schema=_INIT_SCHEMA,
        )
        atomic_write(self.root / "init.parquet", lambda p: pq.write_table(table, p))
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "recipe": RECIPE,
            "config": self.config.to_dict(),
            "jobs": [j.id for j in self.config.jobs()],
        }
        # The manifest goes last: its presence says the directory is a complete zoo skeleton.
        write_json(self.manifest, manifest)

    def _check_manifest(self) -> None:
        m = _read_manifest(self.root)
        recipe = m.get("recipe", 1)  # zoos from before the key are recipe 1
        if recipe != RECIPE:
            raise ZooStoreError(
                f"{self.root}: this zoo was trained with training recipe {recipe}, this wsmerge trains with "
                f"recipe {RECIPE}, whose models differ: the zoo cannot be continued. Use another --out "
                "(the finished zoo still loads)"
            )
        old, new = m["config"], self.config.to_dict()
        if old != new:
            diffs = _diff(old, new)
            raise ZooStoreError(
                f"{self.root}: this zoo was built with another config ({'; '.join(diffs)}); "
                "use another --out, or the same settings to resume"
            )

    # -- jobs ------------------------------------------------------------------------------
    def shard_path(self, job: Job) -> Path:
        return self.shards / f"{job.id}.parquet"

    def done(self) -> set[str]:
        """Ids of the finished jobs; every shard is verified, a corrupted one is an error."""
        ids = set()
        for path in sorted(self.shards.glob("*.parquet")):
            _verify_shard(path, len(self.config.train.bins))
            ids.add(path.stem)
        return ids

    def pending(self) -> list[Job]:
        done = self.done()
        return [j for j in self.config.jobs() if j.id not in done]

    def write(self, record: ModelRecord) -> None:
        table = record_table(record, self.config.train.bins)
        atomic_write(self.shard_path(record.job), lambda p: pq.write_table(table, p))


def _diff(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} there, {b!r} now")
    return out


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise ZooStoreError(f"{root}: no {MANIFEST}, not a zoo directory")
    try:
        m = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ZooStoreError(f"{path}: corrupted manifest ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ZooStoreError(f"{path}: not a wsmerge zoo manifest")
    if m.get("version") != VERSION:
        raise ZooStoreError(f"{path}: zoo format version {m.get('version')}, this wsmerge reads {VERSION}")
    return m


def _verify_shard(path: Path, n_rows: int) -> pa.Table:
    hint = f"delete {path} and rerun the build to retrain that job"
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise ZooStoreError(f"{path}: corrupted shard ({type(e).__name__}: {e}); {hint}") from None
    meta = table.schema.metadata or {}
    if meta.get(b"wsmerge.job_id", b"").decode() != path.stem:
        raise ZooStoreError(f"{path}: shard does not belong to job {path.stem}; {hint}")
    if table.num_rows != n_rows or int(meta.get(b"wsmerge.rows", b"-1")) != n_rows:
        raise ZooStoreError(f"{path}: {table.num_rows} rows, expected {n_rows}; {hint}")
    if not table.schema.remove_metadata().equals(SCHEMA):
        raise ZooStoreError(f"{path}: unexpected columns; {hint}")
    return table


def _table_to_frame(table: pa.Table) -> pd.DataFrame:
    w = _weights_from_arrow(table.column("weights"))
    df = table.drop(["weights"]).to_pandas()
    df["weights"] = list(w)  # rows are views of one [R, 2464] block
    return df


def _weights_from_arrow(col: pa.ChunkedArray) -> np.ndarray:
    parts = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks]
    flat = np.concatenate(parts) if parts else np.empty(0, np.float32)
    return flat.astype(np.float32, copy=False).reshape(-1, N_PARAMS)


def weights_matrix(df: pd.DataFrame) -> np.ndarray:
    """The weights column as one float32 [R, 2464] array."""
    if len(df) == 0:
        return np.empty((0, N_PARAMS), np.float32)
    return np.stack(df["weights"].to_numpy()).astype(np.float32, copy=False)


def load(path: str | os.PathLike, require_complete: bool = True) -> pd.DataFrame:
    """One row per checkpoint: classes, activation, init, seed, epoch bin, the epoch its
    weights come from, metrics, and `weights` (float32 [2464])."""
    root = Path(path)
    m = _read_manifest(root)
    config = ZooConfig.from_dict(m["config"], f"{root / MANIFEST}: config")
    n_rows = len(config.train.bins)
    expected = m["jobs"]
    present = {p.stem: p for p in (root / "shards").glob("*.parquet")}
    foreign = sorted(set(present) - set(expected))
    if foreign:
        raise ZooStoreError(f"{root / 'shards'}: shards of jobs this zoo never planned: {foreign[:5]}")
    missing = [j for j in expected if j not in present]
    if missing and require_complete:
        raise ZooStoreError(
            f"{root}: incomplete zoo, {len(missing)} of {len(expected)} jobs missing "
            f"(e.g. {missing[0]}); rerun the build to finish it, or load(require_complete=False)"
        )
    tables = [_verify_shard(present[j], n_rows).replace_schema_metadata(None) for j in expected if j in present]
    if not tables:
        return _table_to_frame(SCHEMA.empty_table())
    return _table_to_frame(pa.concat_tables(tables))


def load_init(path: str | os.PathLike) -> pd.DataFrame:
    """The epoch-0 weights of every (activation, init, seed) the zoo trained from."""
    root = Path(path)
    _read_manifest(root)
    try:
        table = pq.read_table(root / "init.parquet")
    except Exception as e:
        raise ZooStoreError(f"{root / 'init.parquet'}: unreadable ({type(e).__name__}: {e})") from None
    return _table_to_frame(table)


# -- the seed report's CSV layout (figure 1) -----------------------------------------------
# Activation one-hot columns in the order of the seed's figure 1.
_CSV_ACTIVATIONS = ("gelu", "relu", "silu", "tanh", "sigmoid", "leakyrelu")
assert sorted(_CSV_ACTIVATIONS) == sorted(ACTIVATIONS)


def _weight_column_names() -> list[str]:
    names = [""] * N_PARAMS
    for layer, sl in layer_slices().items():
        kind = "bias" if layer.endswith("bias") else "weight"
        for i in range(sl.start, sl.stop):
            names[i] = f"{kind} {i}"
    return names


# Store columns the seed layout has no place for, written after it under their store names
# (`epoch` as `trained_epoch`: the seed layout's `epoch` is the bin).
_CSV_EXTRA = {"job_id": "job_id", "epoch": "trained_epoch", "val_acc": "val_acc",
              "test_acc_out": "test_acc_out", "init": "init", "seed": "seed"}


def export_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write the seed report's layout: label, class one-hot, activation one-hot, the 2464
    weight columns, Accuracy (test, own classes) and epoch (the bin); then job_id,
    trained_epoch (the epoch the weights come from), val_acc, test_acc_out, init and seed."""
    classes = [parse_class_key(c) for c in df["classes"]]
    out: dict[str, Any] = {"label": ["[" + ".".join(map(str, c)) + "]" for c in classes]}
    for d in range(10):
        out[str(d)] = [int(d in c) for c in classes]
    for a in _CSV_ACTIVATIONS:
        out[a] = (df["activation"] == a).astype(float).to_numpy()
    frame = pd.DataFrame(out)
    weights = pd.DataFrame(weights_matrix(df), columns=_weight_column_names())
    tail = pd.DataFrame({"Accuracy": df["test_acc_in"].to_numpy(), "epoch": df["epoch_bin"].to_numpy()})
    extra = pd.DataFrame({name: df[col].to_numpy() for col, name in _CSV_EXTRA.items()})
    frame = pd.concat([frame, weights, tail, extra], axis=1)
    path = Path(path)
    atomic_write(path, lambda p: frame.to_csv(p, index=False, float_format="%.9g"))
    return path


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """Read the seed CSV layout back into the store's column names."""
    raw = pd.read_csv(path)
    needed = ["label", *map(str, range(10)), *_CSV_ACTIVATIONS, "Accuracy", "epoch"]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: not the seed CSV layout, columns {missing} missing")
    onehot = raw[[str(d) for d in range(10)]].to_numpy()
    acts = raw[list(_CSV_ACTIVATIONS)].to_numpy()
    if (acts.sum(1) != 1).any():
        raise ValueError(f"{path}: rows without exactly one activation set")
    df = pd.DataFrame(
        {
            "classes": [class_key(tuple(np.flatnonzero(r))) for r in onehot],
            "activation": [_CSV_ACTIVATIONS[i] for i in acts.argmax(1)],
            "test_acc_in": raw["Accuracy"].astype(np.float32),
            "epoch_bin": raw["epoch"].astype(int),
        }
    )
    for col, name in _CSV_EXTRA.items():
        if name in raw.columns:  # absent from the seed's own files
            df[col] = raw[name]
    w = raw[_weight_column_names()].to_numpy(np.float32)
    df["weights"] = list(w)
    return df

