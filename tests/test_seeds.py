"""A configuration repeated over seeds: one result per seed, their spread, resume per seed."""

import json

import numpy as np
import pytest
import yaml
from runs import Crash, tiny_run

from sweeps.train_one import main as train_one
from wsmerge.seeds import SEEDS_FILE, seed_config, spread, train_seeds
from wsmerge.train import RunConfig, train


def test_three_seeds_report_three_results_their_spread_and_resume_per_seed(tiny_zoo, tmp_path, capsys):
    cfg = tiny_run(tiny_zoo, tmp_path / "rep", epochs=2, seeds=[0, 1, 2])

    def crash_in_seed_1(seed, metrics):
        if seed == 1 and metrics["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train_seeds(cfg, report=crash_in_seed_1)
    assert (tmp_path / "rep/seed-0/result.json").exists() and not (tmp_path / "rep/seed-1/result.json").exists()
    result = train_seeds(cfg, resume=True)
    assert list(result.runs) == [0, 1, 2]
    # Seed 0 was finished: it is read back, not run again; seed 1 resumed; seed 2 started.
    assert [r.already_complete for r in result.runs.values()] == [True, False, False]
    for s, run in result.runs.items():
        saved = json.loads((run.out / "result.json").read_text())["config"]
        assert (saved["seed"], saved["order_seed"], saved["pairs"]["seed"], saved["seeds"]) == (s, s, 0, [])
    accs = np.array([r.test["generated/acc_in"] for r in result.runs.values()])
    assert len(set(accs)) > 1  # another init and batch order is another model
    got = result.spread["generated/acc_in"]
    assert (got["mean"], got["std"], got["min"], got["max"], got["n"]) == pytest.approx(
        (accs.mean(), accs.std(ddof=1), accs.min(), accs.max(), 3))
    written = json.loads((tmp_path / "rep" / SEEDS_FILE).read_text())
    assert sorted(written["seeds"]) == ["0", "1", "2"] and written["spread"]["generated/acc_in"]["n"] == 3
    # A second resume runs nothing.
    again = train_seeds(cfg, resume=True)
    assert all(r.already_complete for r in again.runs.values())
    # The command line prints each seed's results with their unit, then the spread.
    path = tmp_path / "rep.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    capsys.readouterr()
    assert train_one(["--config", str(path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert [f"== seed {s} ==" in out for s in (0, 1, 2)] == [True] * 3
    assert "bootstrap intervals resampling test targets" in out and "generated − average" in out
    assert "== across seeds [0, 1, 2] (varying init, order)" in out
    assert f"| generated/acc_in | {accs.mean():.2f} | {accs.std(ddof=1):.2f} |" in out


def test_vary_picks_what_each_seed_sets(tmp_path):
    base = RunConfig.from_dict({"zoo": "z", "out": str(tmp_path), "seed": 7, "seeds": [3], "vary": ["split"]})
    one = seed_config(base, 3)
    assert (one.seed, one.order_seed, one.pairs.seed, one.out) == (7, None, 3, str(tmp_path / "seed-3"))
    both = seed_config(base.replace(vary=["init", "order"]), 3)
    assert (both.seed, both.order_seed, both.pairs.seed) == (3, 3, base.pairs.seed)
    with pytest.raises(ValueError, match="vary must name"):
        base.replace(vary=["weights"])
    with pytest.raises(ValueError, match="distinct"):
        base.replace(seeds=[1, 1])
    with pytest.raises(ValueError, match="train_seeds"):
        train(base)


def test_spread_leaves_out_missing_values():
    out = spread([{"a": 1.0}, {"a": 3.0, "b": float("nan")}, {}], metrics=("a", "b"))
    assert out == {"a": {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0, "n": 2}}
