import json

import numpy as np
import pytest

from wsmerge.cnn import N_PARAMS, init_weights
from wsmerge.zoo import (
    ModelRecord,
    TrainConfig,
    ZooConfig,
    ZooStore,
    ZooStoreError,
    export_csv,
    load,
    load_init,
    read_csv,
    weights_matrix,
)

CFG = ZooConfig(name="t", digits=(0, 1, 2), activations=("relu", "sigmoid"),
                train=TrainConfig(max_epochs=3, bins=(2, 3)))


def _record(job, stopped=3):
    rng = np.random.default_rng(abs(hash(job.id)) % 2**32)
    rec = ModelRecord(job, stopped_epoch=stopped, early_stopped=stopped < 3)
    rec.train_loss = [1.0 / e for e in range(1, stopped + 1)]
    rec.val_acc = [50.0 + e for e in range(1, stopped + 1)]
    for e in sorted({min(b, stopped) for b in CFG.train.bins}):
        rec.checkpoints[e] = (rng.standard_normal(N_PARAMS).astype(np.float32), 90.0 + e, 0.0)
    return rec


def _filled(root, jobs=None):
    store = ZooStore(root, CFG).open()
    records = [_record(j, stopped=2 if i == 0 else 3) for i, j in enumerate(jobs or CFG.jobs())]
    for r in records:
        store.write(r)
    return store, records


def test_load_gives_one_row_per_checkpoint(tmp_path):
    _, records = _filled(tmp_path / "z")
    df = load(tmp_path / "z")
    assert len(df) == len(CFG.jobs()) * len(CFG.train.bins) == 16
    assert df.duplicated(["job_id", "epoch_bin"]).sum() == 0
    w = weights_matrix(df)
    assert w.dtype == np.float32 and w.shape == (16, N_PARAMS)
    first = df[df.job_id == records[0].job.id]
    assert first.epoch.tolist() == [2, 2] and first.stopped_epoch.tolist() == [2, 2]
    assert first.early_stopped.all()
    np.testing.assert_array_equal(first.weights.iloc[1], records[0].checkpoints[2][0])
    assert set(df.classes) == {"0-1", "0-2", "1-2", "0-1-2"}
    assert df.history_val_acc.iloc[-1].tolist() == [51.0, 52.0, 53.0]


def test_init_weights_are_kept(tmp_path):
    ZooStore(tmp_path / "z", CFG).open()
    init = load_init(tmp_path / "z")
    assert sorted(init.activation) == ["relu", "sigmoid"]
    row = init[init.activation == "sigmoid"].iloc[0]
    np.testing.assert_array_equal(row.weights, init_weights("sigmoid", "kaiming_uniform", 0).numpy())


def test_csv_round_trip(tmp_path):
    _filled(tmp_path / "z")
    df = load(tmp_path / "z")
    path = export_csv(df, tmp_path / "zoo.csv")
    header = path.read_text().splitlines()[0].split(",")
    assert header[:17] == ["label", *map(str, range(10)), "gelu", "relu", "silu", "tanh", "sigmoid", "leakyrelu"]
    assert header[17] == "weight 0" and header[17 + 200] == "bias 200"
    assert header[17 + 2464 :] == ["Accuracy", "epoch", "job_id", "trained_epoch", "val_acc", "test_acc_out",
                                   "init", "seed"]
    back = read_csv(path)
    for col in ("job_id", "epoch", "init", "seed"):
        assert back[col].tolist() == df[col].tolist()
    np.testing.assert_array_equal(back.val_acc, df.val_acc)
    np.testing.assert_array_equal(back.test_acc_out, df.test_acc_out)
    assert (back.epoch < back.epoch_bin).any()  # the early-stopped model's real epoch survives
    assert back.classes.tolist() == df.classes.tolist()
    assert back.activation.tolist() == df.activation.tolist()
    assert back.epoch_bin.tolist() == df.epoch_bin.tolist()
    np.testing.assert_allclose(back.test_acc_in, df.test_acc_in)
    np.testing.assert_array_equal(weights_matrix(back), weights_matrix(df))


def test_incomplete_zoo(tmp_path):
    _filled(tmp_path / "z", CFG.jobs()[:3])
    with pytest.raises(ZooStoreError, match="incomplete zoo, 5 of 8 jobs missing"):
        load(tmp_path / "z")
    assert len(load(tmp_path / "z", require_complete=False)) == 6
    assert len(ZooStore(tmp_path / "z", CFG).open().pending()) == 5


def test_output_dir_holding_something_else(tmp_path):
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "notes.txt").write_text("mine")
    with pytest.raises(ZooStoreError, match="holds other files"):
        ZooStore(tmp_path / "z", CFG).open()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ZooStoreError, match="not a directory"):
        ZooStore(tmp_path / "f", CFG).open()


def test_zoo_of_an_older_recipe_is_not_continued(tmp_path):
    ZooStore(tmp_path / "z", CFG).open()
    manifest = tmp_path / "z" / "manifest.json"
    old = json.loads(manifest.read_text())
    del old["recipe"]  # as written before the recipe had a version
    manifest.write_text(json.dumps(old))
    with pytest.raises(ZooStoreError, match="trained with training recipe 1, this wsmerge trains with recipe 2"):
        ZooStore(tmp_path / "z", CFG).open()


def test_zoo_of_another_config(tmp_path):
    ZooStore(tmp_path / "z", CFG).open()
    other = CFG.replace(activations=("relu",))
    with pytest.raises(ZooStoreError, match=r"activations: \['relu', 'sigmoid'\] there, \['relu'\] now"):
        ZooStore(tmp_path / "z", other).open()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_shard_is_an_error_naming_it(tmp_path, damage):
    store, _ = _filled(tmp_path / "z")
    shard = sorted(store.shards.glob("*.parquet"))[2]
    data = shard.read_bytes()
    shard.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\0" * len(data), "empty": b""}[damage])
    for action in (store.pending, lambda: load(tmp_path / "z")):
        with pytest.raises(ZooStoreError, match=f"{shard.name}.*corrupted shard.*delete"):
            action()


def test_shard_under_the_wrong_name(tmp_path):
    store, _ = _filled(tmp_path / "z")
    a, b = sorted(store.shards.glob("*.parquet"))[:2]
    b.write_bytes(a.read_bytes())
    with pytest.raises(ZooStoreError, match="does not belong"):
        store.pending()


def test_corrupted_manifest(tmp_path):
    store = ZooStore(tmp_path / "z", CFG).open()
    store.manifest.write_text("{not json")
    with pytest.raises(ZooStoreError, match="corrupted manifest"):
        load(tmp_path / "z")
    store.manifest.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ZooStoreError, match="not a wsmerge zoo"):
        ZooStore(tmp_path / "z", CFG).open()


def test_leftover_temp_files_are_removed(tmp_path):
    store = ZooStore(tmp_path / "z", CFG).open()
    tmp = store.shards / ".relu_x.parquet.abc.tmp"
    tmp.write_bytes(b"half")
    ZooStore(tmp_path / "z", CFG).open()
    assert not tmp.exists()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(activations=("relu", "swish")), "unknown activation"),
        (dict(inits=("orthogonal",)), "unknown init"),
        (dict(digits=()), "empty"),
        (dict(digits=(0, 11)), "not MNIST digits"),
        (dict(min_classes=4), "min_classes"),
        (dict(activations=()), "activations is empty"),
    ],
)
def test_bad_zoo_configs(change, message):
    with pytest.raises(ValueError, match=message):
        CFG.replace(**change)


def test_bad_train_config_from_dict():
    with pytest.raises(ValueError, match="unknown keys.*epochz"):
        ZooConfig.from_dict({"train": {"epochz": 3}})
    with pytest.raises(ValueError, match="past max_epochs"):
        ZooConfig.from_dict({"train": {"max_epochs": 3, "bins": [2, 5]}})
    with pytest.raises(ValueError, match="increasing"):
        TrainConfig(bins=(5, 2))
