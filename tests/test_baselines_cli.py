"""`python -m sweeps.baselines`: the merges alone on a run config's pairs."""

import pandas as pd
import yaml

from sweeps.baselines import main


def _config(path, zoo, **evaluation):
    cfg = {
        "zoo": str(zoo),
        "pairs": {"overlap": [0, 1], "split_by": "target", "epoch_bins": [2], "max_pairs_per_target": 2},
        "evaluation": {"images_per_class": 20, "finetune_steps": 4, "finetune_eval_every": 2, "bootstrap": 20,
                       "merge_images": 8, **evaluation},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_prints_every_baseline_and_writes_the_pairs(tiny_zoo, tmp_path, capsys):
    config = _config(tmp_path / "run.yaml", tiny_zoo, merges=["ties", "fisher", "ensemble"])
    assert main(["--config", str(config), "--csv", str(tmp_path / "pairs.csv")]) == 0
    out = capsys.readouterr().out
    pairs = pd.read_csv(tmp_path / "pairs.csv")
    methods = ["copy1", "copy2", "average", "task_arithmetic", "ties", "fisher", "ensemble", "target"]
    assert pairs["method"].unique().tolist() == ["generated", *methods]
    table = [line.split() for line in out.splitlines()]
    shown = [row[0] for row in table if row and row[0] in methods]
    assert shown == methods
    # The table's means are the per-pair rows' means.
    fisher = next(row for row in table if row and row[0] == "fisher")
    assert float(fisher[1]) == float(f"{pairs[pairs.method == 'fisher'].acc_in.mean():.3g}")
    assert (pairs.loc[pairs.method == "fisher", "merge_seconds"] > 0).all()


def test_bad_config_is_exit_code_2(tiny_zoo, tmp_path, capsys):
    assert main(["--config", str(_config(tmp_path / "bad.yaml", tiny_zoo, merges=["nope"]))]) == 2
    assert "EvalConfig.merges: unknown ['nope']" in capsys.readouterr().err
    assert main(["--config", str(_config(tmp_path / "nozoo.yaml", tmp_path / "missing"))]) == 2
