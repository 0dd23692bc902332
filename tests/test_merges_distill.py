"""The output-level references: the parents' ensemble against a numpy rule written out, and
distillation from it (no steps: the start; pairs trained together: as each alone; the
student moves towards the ensemble)."""

import numpy as np
import pytest
import torch

from wsmerge.cnn import batched_forward, init_weights
from wsmerge.merges import distill, ensemble_predict, ensemble_probs


def _masks(*sets):
    m = torch.zeros(len(sets), 10, dtype=torch.bool)
    for i, s in enumerate(sets):
        m[i, list(s)] = True
    return m


def _numpy_ensemble(l1, l2, c1, c2):
    """Each parent's softmax over its own classes, the larger of the two class by class, renormalised."""
    out = np.zeros(10)
    for logits, classes in ((l1, c1), (l2, c2)):
        z = np.exp(logits[classes] - logits[classes].max())
        out[classes] = np.maximum(out[classes], z / z.sum())
    return out / out.sum()


def test_ensemble_is_each_parent_on_its_own_classes_then_the_more_confident():
    gen = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(3, 5, 10, generator=gen), torch.randn(3, 5, 10, generator=gen)
    sets1, sets2 = [(0, 1), (2, 3, 4), (5, 6)], [(2, 3), (4, 5), (5, 9)]
    in1, in2 = _masks(*sets1), _masks(*sets2)
    probs = ensemble_probs(l1, l2, in1, in2)
    for p in range(3):
        for n in range(5):
            expected = _numpy_ensemble(l1[p, n].double().numpy(), l2[p, n].double().numpy(), list(sets1[p]),
                                       list(sets2[p]))
            np.testing.assert_allclose(probs[p, n].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert torch.equal(ensemble_predict(l1, l2, in1, in2), probs.argmax(-1))
    # A class in neither parent never wins.
    assert not (probs[0, :, 7:] > 0).any()


def test_ensemble_rejects_bad_masks():
    l1 = torch.zeros(2, 3, 10)
    with pytest.raises(ValueError, match="in1 must be a boolean"):
        ensemble_probs(l1, l1, torch.ones(2, 10), _masks((0,), (1,)))
    with pytest.raises(ValueError, match="at least one class"):
        ensemble_probs(l1, l1, _masks((0,), ()), _masks((0,), (1,)))


def _pair_setup(n_pairs=3, steps=4, batch=6):
    gen = torch.Generator().manual_seed(1)
    w1 = torch.stack([init_weights("relu", "kaiming_uniform", 10 + i) for i in range(n_pairs)])
    w2 = torch.stack([init_weights("relu", "kaiming_uniform", 20 + i) for i in range(n_pairs)])
    init = torch.stack([init_weights("relu", "kaiming_uniform", i) for i in range(n_pairs)])
    in1 = _masks(*[(0, 1)] * n_pairs)
    in2 = _masks(*[(2, 3)] * n_pairs)
    pool = torch.rand(40, 1, 28, 28, generator=gen)
    batches = torch.randint(0, 40, (n_pairs, steps, batch), generator=gen)
    return w1, w2, init, in1, in2, pool, batches


def test_distillation_without_steps_is_the_start():
    w1, w2, init, in1, in2, pool, batches = _pair_setup()
    out = distill(w1, w2, init, in1, in2, "relu", batches[:, :0], pool)
    assert torch.equal(out, init)


def test_pairs_distilled_together_are_each_distilled_alone():
    w1, w2, init, in1, in2, pool, batches = _pair_setup()
    together = distill(w1, w2, init, in1, in2, "relu", batches, pool, lr=1e-2)
    for p in range(3):
        alone = distill(w1[p:p + 1], w2[p:p + 1], init[p:p + 1], in1[p:p + 1], in2[p:p + 1], "relu", batches[p:p + 1],
                        pool, lr=1e-2)
        torch.testing.assert_close(together[p:p + 1], alone, rtol=1e-4, atol=1e-5)


def test_the_student_moves_towards_the_ensemble():
    w1, w2, init, in1, in2, pool, _ = _pair_setup(n_pairs=1)
    batches = torch.arange(20).repeat(1, 20, 1)  # 20 steps, each on the same 20 images
    student = distill(w1, w2, init, in1, in2, "tanh", batches, pool, lr=1e-2)

    seen = pool[:20]

    def cross_entropy(w):
        t = ensemble_probs(batched_forward(w1, seen, "tanh"), batched_forward(w2, seen, "tanh"), in1, in2)
        return float(-(t * batched_forward(w, seen, "tanh").log_softmax(-1)).sum(-1).mean())

    assert cross_entropy(student) < 0.8 * cross_entropy(init)
