"""`python -m sweeps.levers`: variants of one run trained side by side, then one table."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from runs import tiny_run
from sweeps.levers import LeversConfig, lever_row, main, vs_reference

pytestmark = pytest.mark.slow


def _config(path, zoo, reference=None, **variants):
    run = tiny_run(zoo, "unused", epochs=2).to_dict()
    del run["out"]
    cfg = {"run": run, "variants": variants or {"none": {}, "augment": {"permutations": 2}},
           "bootstrap": 50, "ci": 0.9, "reference": reference}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_each_variant_is_a_run_and_the_table_is_its_test_pairs(tiny_zoo, tmp_path, capsys):
    config = _config(tmp_path / "levers.yaml", tiny_zoo, reference="none")
    assert main(["--config", str(config), "--results", str(tmp_path)]) == 0
    out = tmp_path / "levers"
    table = pd.read_csv(out / "levers.csv", index_col="variant")
    assert table.index.tolist() == ["none", "augment"]
    for name in ("levers.md", "levers.png"):
        assert (out / name).stat().st_size > 0
    assert "| augment |" in capsys.readouterr().out
    # Each variant trained what its config says, in its own folder.
    for name, permutations in (("none", 0), ("augment", 2)):
        result = json.loads((out / name / "result.json").read_text())
        assert result["config"]["permutations"] == permutations
    # The table's numbers, recomputed by hand from the variant's test pairs.
    pairs = pd.read_csv(out / "augment" / "test_pairs.csv")
    by = {m: rows.sort_values("pair") for m, rows in pairs.groupby("method")}
    gen = by["generated"]["acc_in"].to_numpy()
    better = np.maximum(by["copy1"]["acc_in"].to_numpy(), by["copy2"]["acc_in"].to_numpy())
    row = table.loc["augment"]
    assert row["generated"] == pytest.approx(gen.mean())
    assert row["better_parent"] == pytest.approx(better.mean())
    assert row["vs_better_parent"] == pytest.approx((gen - better).mean())
    assert row["vs_average"] == pytest.approx((gen - by["average"]["acc_in"].to_numpy()).mean())
    assert row["target"] == pytest.approx(by["target"]["acc_in"].mean())
    assert row["generated_ft"] == pytest.approx(by["generated"]["ft_acc_in"].mean())
    assert row["n_targets"] == pairs["c3"].nunique()
    # Against the reference variant, pair by pair on the same test triples.
    none = pd.read_csv(out / "none" / "test_pairs.csv")
    none_gen = none[none["method"] == "generated"].sort_values("pair")["acc_in"].to_numpy()
    assert row["vs_reference"] == pytest.approx((gen - none_gen).mean())
    assert np.isnan(table.loc["none", "vs_reference"]) and "| generated − none |" in (out / "levers.md").read_text()
    if row["n_targets"] < 2:  # one test target: no interval by target can be drawn
        assert np.isnan(row["vs_better_parent_lo"]) and "[" not in (out / "levers.md").read_text().split("| augment |")[1]
    else:
        assert row["vs_better_parent_lo"] <= row["vs_better_parent"] <= row["vs_better_parent_hi"]

    # Again: every run is found finished, nothing trains, the table is the same.
    before = {name: (out / name / "checkpoint.pt").stat().st_mtime_ns for name in table.index}
    assert main(["--config", str(config), "--results", str(tmp_path)]) == 0
    assert {name: (out / name / "checkpoint.pt").stat().st_mtime_ns for name in table.index} == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "levers.csv", index_col="variant"), table)


def test_lever_row_on_known_pairs():
    # Two targets, two pairs each: the better parent is chosen pair by pair.
    rows = []
    for pair, (c3, gen, c1, c2, avg) in enumerate([("0-1", 90, 80, 60, 50), ("0-1", 70, 40, 75, 40),
                                                   ("2-3", 85, 85, 20, 30), ("2-3", 95, 10, 90, 60)]):
        for method, acc in (("generated", gen), ("copy1", c1), ("copy2", c2), ("average", avg),
                            ("task_arithmetic", 10), ("target", 99)):
            rows.append({"pair": pair, "method": method, "c3": c3, "acc_in": acc, "ft_acc_in": acc + 1})
    row = lever_row(pd.DataFrame(rows), n_boot=0, ci=0.95, seed=0)
    assert row["better_parent"] == (80 + 75 + 85 + 90) / 4
    assert row["vs_better_parent"] == ((90 - 80) + (70 - 75) + (85 - 85) + (95 - 90)) / 4
    assert row["vs_average"] == ((90 - 50) + (70 - 40) + (85 - 30) + (95 - 60)) / 4
    assert row["generated_ft"] == (90 + 70 + 85 + 95) / 4 + 1
    assert (row["n_pairs"], row["n_targets"]) == (4, 2)


def test_vs_reference_pairs_only_the_same_test_triples():
    def generated(acc, cnn1=(0, 1, 2, 3)):
        return pd.DataFrame({"acc_in": acc, "c3": ["0-1", "0-1", "2-3", "2-3"], "cnn1": cnn1,
                             "cnn2": [4, 5, 6, 7], "target": [8, 8, 9, 9]})
    frames = {"none": generated([50, 60, 70, 80]), "lever": generated([55, 70, 70, 90]),
              "other": generated([90, 90, 90, 90], cnn1=(0, 1, 2, 11))}
    diff = vs_reference(frames, "none", n_boot=200, ci=0.9, seed=0)
    assert diff["lever"]["vs_reference"] == (5 + 10 + 0 + 10) / 4
    # Two targets: an interval from resampling them (their mean differences 7.5 and 5).
    assert 5 <= diff["lever"]["vs_reference_lo"] <= diff["lever"]["vs_reference_hi"] <= 7.5
    assert all(np.isnan(v) for name in ("none", "other") for v in diff[name].values())


def test_variants_change_only_the_keys_they_name(tiny_zoo, tmp_path):
    cfg = LeversConfig.from_yaml(_config(tmp_path / "c.yaml", tiny_zoo, seeds={"pairs": {"max_pairs_per_target": 1}}))
    run = cfg.run_config("seeds", tmp_path)
    assert run.pairs.max_pairs_per_target == 1
    assert run.pairs.overlap == (0, 1) and run.pairs.epoch_bins == (2,)  # the rest of pairs: kept
    assert run.out == str(tmp_path / "seeds")


@pytest.mark.parametrize("variants, message", [
    ({"bad name!": {}}, "not a usable directory name"),
    ({"x": {"align": "spin"}}, "variants.x: align must be one of"),
    ({"x": {"permutations": -1}}, "variants.x: permutations must be an integer >= 0"),
    ({"x": {"pairs": {"split_by": "zoo"}}}, "variants.x"),
    ({"x": {}, "reference": "y"}, "reference: 'y' is not a variant"),
])
def test_bad_variants_are_exit_code_2_before_training(tiny_zoo, tmp_path, capsys, variants, message):
    config = _config(tmp_path / "bad.yaml", tiny_zoo, **variants)
    assert main(["--config", str(config), "--results", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("sweeps/configs/levers_*.yaml")), ids=lambda p: p.stem)
def test_shipped_levers_configs_load(path):
    cfg = LeversConfig.from_yaml(path)
    assert cfg.zoo_profile == "small" and cfg.run["zoo"] == "zoo/small"
