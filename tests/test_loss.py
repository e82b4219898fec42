"""The contrastive loss: hand-computed values, gradients, and its behaviour, for both metrics."""
import math

import pytest
import torch

from train_embedding_model import contrastive_loss


def test_cosine_value_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # scale does not matter for cosine
    # sim = identity; each row and column: -log(e^(1/T) / (e^(1/T) + e^0))
    for t in (1.0, 0.5):
        expected = math.log(1 + math.exp(-1 / t))
        assert contrastive_loss(a, b, "cosine", t).item() == pytest.approx(expected, rel=1e-6)


def test_euclidean_value_by_hand_uses_plain_distance_in_units_of_the_batch_both_directions():
    a = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    # distances d[i][j] = |a_i - b_j|: [[0, 2], [1, sqrt 5]]; non-partners' mean (2 + 1) / 2 = 1.5;
    # logits = -d / 1.5 / T with T = 1
    r5, u = math.sqrt(5) / 1.5, 1.5
    rows = (math.log(1 + math.exp(-2 / u)) + (r5 + math.log(math.exp(-1 / u) + math.exp(-r5)))) / 2
    cols = (math.log(1 + math.exp(-1 / u)) + (r5 + math.log(math.exp(-2 / u) + math.exp(-r5)))) / 2
    assert contrastive_loss(a, b, "euclidean", 1.0).item() == pytest.approx((rows + cols) / 2, rel=1e-5)
    # so the vectors' scale does not change the loss (a unit vector and a raw CLS vector alike)
    for c in (0.01, 7.0):  # (rel 1e-4: the distance 0 is clipped to 1e-6, the sqrt's gradient being infinite at 0)
        assert contrastive_loss(c * a, c * b, "euclidean", 1.0).item() == pytest.approx((rows + cols) / 2, rel=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gradients_match_finite_differences(metric):
    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    if metric == "euclidean":  # the batch's distance unit is a constant for the gradient: fix it to check
        unit = torch.cdist(a, b)[~torch.eye(4, dtype=torch.bool)].mean().item()
        ours = torch.autograd.grad(contrastive_loss(a, b, metric, 0.5), (a, b))
        ref = torch.autograd.grad(_by_hand_euclidean(a, b, 0.5 * unit), (a, b))
        for g, r in zip(ours, ref):
            torch.testing.assert_close(g, r)
    else:
        assert torch.autograd.gradcheck(lambda x, y: contrastive_loss(x, y, metric, 0.5), (a, b))


def _by_hand_euclidean(a, b, t):
    logits = -torch.cdist(a, b) / t
    labels = torch.arange(len(a))
    return (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_a_gradient_step_pulls_positives_together(metric):
    torch.manual_seed(1)
    a = torch.randn(8, 16, requires_grad=True)
    b = torch.randn(8, 16)
    before = contrastive_loss(a, b, metric, 0.1)
    before.backward()
    with torch.no_grad():
        a2 = a - 0.5 * a.grad
    assert contrastive_loss(a2, b, metric, 0.1) < before
    # a perfect, well separated batch has a near-zero loss; a constant one has log(batch)
    eye = torch.eye(8) * 10
    assert contrastive_loss(eye, eye, metric, 0.05).item() < 1e-3
    same = torch.ones(8, 16)
    assert contrastive_loss(same, same, metric, 0.1).item() == pytest.approx(math.log(8), rel=1e-4)


def test_identical_points_give_finite_gradients_in_euclidean_mode():
    a = torch.zeros(3, 4, requires_grad=True)
    contrastive_loss(a, torch.zeros(3, 4), "euclidean", 1.0).backward()
    assert torch.isfinite(a.grad).all()


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="metric"):
        contrastive_loss(torch.zeros(2, 2), torch.zeros(2, 2), "manhattan", 1.0)
