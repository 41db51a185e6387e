import pytest
import torch

from src.model.regularizers import masked_flops

# N=2 queries x G=2 slots x V=3 terms. Non-zeros per document: [[2, 1], [3, 1]].
DOCS = torch.tensor(
    [
        [[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]],
        [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]],
    ]
)


def test_plain_flops_sums_per_slot_squared_means():
    # slot 0 mean [1, 1.5, 0.5] -> 3.5; slot 1 mean [1, 0, 1.5] -> 3.25.
    loss, mask = masked_flops(DOCS, threshold=None)
    assert loss.item() == pytest.approx(6.75)
    assert mask.tolist() == [[1, 1], [1, 1]]
    # A mean over all four documents at once would give 2.5625: the per-slot sum is what we compute.
    assert loss.item() != pytest.approx(2.5625)


def test_threshold_is_strict_and_masks_whole_documents():
    # t=1: a document with exactly 1 non-zero is not "> 1", so slot 1 is entirely masked.
    loss, mask = masked_flops(DOCS, threshold=1)
    assert mask.tolist() == [[1, 0], [1, 0]]
    assert loss.item() == pytest.approx(3.5)


def test_divisor_stays_n_when_documents_are_masked():
    # t=2: only d[1,0] (3 non-zeros) counts; its mean over N=2 is [0.5]*3 -> 0.75 (not 3 with divisor 1).
    loss, mask = masked_flops(DOCS, threshold=2)
    assert mask.tolist() == [[0, 0], [1, 0]]
    assert loss.item() == pytest.approx(0.75)


def test_threshold_above_every_document_gives_zero():
    loss, _ = masked_flops(DOCS, threshold=3)
    assert loss.item() == 0.0


def test_term_weights_scale_each_terms_mean():
    # weights [1, 2, 0]: slot 0 [1, 3, 0] -> 10; slot 1 [1, 0, 0] -> 1.
    loss, _ = masked_flops(DOCS, threshold=None, term_weights=torch.tensor([1.0, 2.0, 0.0]))
    assert loss.item() == pytest.approx(11.0)


def test_gradient_reaches_only_unmasked_documents():
    docs = DOCS.clone().requires_grad_(True)
    loss, _ = masked_flops(docs, threshold=1)
    loss.backward()
    assert docs.grad[:, 1].abs().sum() == 0
    # d/dd[0,0,j] = 2 * mean_j / N * sign(d[0,0,j]) = [1, 1.5, 0.5] * [1, 1, 0]: a zero weight gets no push
    assert docs.grad[0, 0].tolist() == pytest.approx([1.0, 1.5, 0.0])
