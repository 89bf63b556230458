import math

import pytest
import torch
import torch.nn.functional as F

from embedforge.training.losses import DistillLoss, InfoNCELoss, Objective, StepOutputs


def test_infonce_matches_a_hand_computed_cross_entropy():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positives = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    negatives = torch.tensor([[0.0, -1.0]])
    loss = InfoNCELoss(temperature=0.5)(anchors, positives, negatives)

    scores = 2.0 * torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, -1.0]])
    expected = -(scores[0, 0] - scores[0].logsumexp(0) + scores[1, 1] - scores[1].logsumexp(0)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hard_negatives_raise_the_loss_when_they_look_like_the_positive():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = InfoNCELoss()
    easy = loss(anchors, anchors.clone(), torch.tensor([[-1.0, 0.0]]))
    hard = loss(anchors, anchors.clone(), torch.tensor([[0.99, 0.1]]))
    assert hard > easy


def test_all_identical_texts_give_a_finite_loss_and_gradient():
    same = torch.ones(4, 8, requires_grad=True)
    loss = InfoNCELoss()(same, same, same[:2])
    loss.backward()
    assert loss.item() == pytest.approx(math.log(6), rel=1e-5)
    assert torch.isfinite(same.grad).all()


def test_zero_vectors_do_not_make_nan():
    zeros = torch.zeros(3, 4, requires_grad=True)
    loss = InfoNCELoss()(zeros, zeros)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_distill_is_zero_on_the_teacher_and_positive_elsewhere(kind):
    teacher = F.normalize(torch.randn(5, 6), dim=-1)
    loss = DistillLoss(6, 6, kind)
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(F.normalize(torch.randn(5, 6), dim=-1), teacher).item() > 0.01


def test_narrow_student_is_projected_into_the_teacher_space():
    loss = DistillLoss(4, 6)
    assert isinstance(loss.projection, torch.nn.Linear)
    student, teacher = torch.randn(3, 4), torch.randn(3, 6)
    value = loss(student, teacher)
    mapped = student @ loss.projection.weight.T + loss.projection.bias
    assert value.item() == pytest.approx(((mapped - teacher) ** 2).mean().item(), rel=1e-6)
    value.backward()
    assert loss.projection.weight.grad is not None and loss.projection.weight.grad.abs().sum() > 0


def test_objective_weights_and_reports_each_part():
    anchors, positives = torch.randn(3, 4), torch.randn(3, 4)
    teacher = torch.randn(3, 4)
    objective = Objective({"infonce": 1.0, "distill": 0.5}, {"infonce": InfoNCELoss(), "distill": DistillLoss(4, 4)})
    step = StepOutputs(
        [{"sentence_embedding": anchors}, {"sentence_embedding": positives}], teacher=teacher.repeat(2, 1)
    )
    total, parts = objective(step)
    assert total.item() == pytest.approx((parts["infonce"] + 0.5 * parts["distill"]).item(), rel=1e-6)
    assert parts["infonce"].item() == pytest.approx(InfoNCELoss()(anchors, positives).item(), rel=1e-6)
    both = torch.cat([anchors, positives])  # distillation reads every part's sentences, each with its teacher vector
    assert parts["distill"].item() == pytest.approx(DistillLoss(4, 4)(both, teacher.repeat(2, 1)).item(), rel=1e-6)

    only_infonce = Objective({"infonce": 1.0, "distill": 0.0}, {"infonce": InfoNCELoss()})
    assert set(only_infonce(step)[1]) == {"infonce"}
    with pytest.raises(ValueError, match="no loss for objective"):
        Objective({"distill": 1.0}, {"infonce": InfoNCELoss()})
