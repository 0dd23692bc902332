import numpy as np
import pytest
import torch

from wsmerge.zoo import EarlyStopping, Job, TrainConfig, bin_sources, cyclic_lr, train_group
from wsmerge.zoo._store import record_table


def _stops(seq, patience=3, margin=0.05):
    es = EarlyStopping(patience, margin)
    for epoch, acc in enumerate(seq, start=1):
        if es.update(acc):
            return epoch
    return None


def test_early_stopping_on_scripted_sequences():
    # Three consecutive epochs within 0.05 points of the previous one: stop at the third.
    assert _stops([90.0, 95.0, 95.02, 95.05, 95.01, 99.0]) == 5
    # A jump resets the count.
    assert _stops([90.0, 90.01, 90.02, 92.0, 92.03, 92.0, 92.04]) == 7
    # Exactly the margin counts as stagnating; just above it does not.
    assert _stops([50.0, 50.05, 50.10, 50.15]) == 4
    assert _stops([50.0, 50.06, 50.12, 50.18]) is None
    # Falling accuracy is a change too.
    assert _stops([80.0, 79.0, 78.0, 77.0]) is None
    assert _stops([80.0, 80.0, 80.0], patience=2) == 3


def test_bins_filled_after_early_stop():
    bins = (11, 16, 21, 26, 31, 36)
    assert bin_sources(bins, 40) == list(bins)
    assert bin_sources(bins, 18) == [11, 16, 18, 18, 18, 18]
    assert bin_sources(bins, 5) == [5] * 6


@pytest.mark.parametrize("half", [1, 3, 7])
def test_cyclic_lr_matches_torch(half):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-4, 3e-3, step_size_up=half, mode="triangular")
    for step in range(5 * half + 3):
        assert cyclic_lr(step, 1e-4, 3e-3, half) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_grouped_training_equals_training_alone(mnist):
    cfg = TrainConfig(max_epochs=2, bins=(1, 2), train_per_class=200, eval_per_class=100)
    # Equal image budgets give equal epoch lengths (plan_groups groups by class count for
    # this); the members differ in classes, init and seed.
    jobs = [Job((0, 1), "relu", "kaiming_uniform", 0), Job((2, 7), "relu", "xavier_normal", 1)]
    together = train_group(jobs, mnist, cfg)
    for job, rec in zip(jobs, together):
        (alone,) = train_group([job], mnist, cfg)
        assert alone.train_loss == pytest.approx(rec.train_loss, rel=1e-4)
        assert alone.val_acc == pytest.approx(rec.val_acc, abs=1e-9)
        np.testing.assert_allclose(alone.checkpoints[2][0], rec.checkpoints[2][0], atol=1e-5)


def test_models_sharing_init_start_from_the_same_weights(mnist):
    cfg = TrainConfig(max_epochs=1, bins=(1,), train_per_class=1, eval_per_class=10, batch_size=1,
                      base_lr=1e-12, max_lr=1e-12)
    a, b = train_group([Job((0, 1), "tanh", "normal", 3), Job((5, 6, 7), "tanh", "normal", 3)], mnist, cfg)
    np.testing.assert_allclose(a.checkpoints[1][0], b.checkpoints[1][0], atol=1e-8)


def test_early_stopped_model_fills_later_bins(mnist):
    # margin 100 points: every epoch after the first "stagnates", so patience 1 stops at epoch 2.
    cfg = TrainConfig(max_epochs=4, bins=(1, 3, 4), patience=1, margin=100.0,
                      train_per_class=100, eval_per_class=50)
    job = Job((3, 8), "gelu", "kaiming_uniform", 0)
    (rec,) = train_group([job], mnist, cfg)
    assert rec.early_stopped and rec.stopped_epoch == 2
    assert len(rec.val_acc) == 2 and sorted(rec.checkpoints) == [1, 2]
    table = record_table(rec, cfg.bins).to_pydict()
    assert table["epoch_bin"] == [1, 3, 4]
    assert table["epoch"] == [1, 2, 2]
    assert table["weights"][1] == table["weights"][2]
    assert table["weights"][0] != table["weights"][1]


def test_training_learns(mnist):
    cfg = TrainConfig(max_epochs=2, bins=(2,), train_per_class=2000, eval_per_class=500)
    (rec,) = train_group([Job((0, 1), "relu", "kaiming_uniform", 0)], mnist, cfg)
    _, acc_in, acc_out = rec.checkpoints[2]
    assert acc_in > 97.0
    assert acc_out == 0.0  # a 2-class model only ever predicts its own classes
    assert rec.train_loss[1] < rec.train_loss[0]
