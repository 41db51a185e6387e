"""The fused max-pooled head against the straightforward (B, L, V) one: values and gradients."""

import pytest
import torch

from src.model.activations import get_activation
from src.model.encoders import DocEncoder, load_tokenizer, mlm_features
from src.model.heads import max_pooled_logits, native_bf16, reference_max_logits, search_dtype

PRECISIONS = ["fp32", "bf16"]


def _random_head(batch: int, length: int, hidden: int, vocab: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, length, hidden, generator=gen, dtype=dtype)
    weight = torch.randn(vocab, hidden, generator=gen, dtype=dtype)
    bias = torch.randn(vocab, generator=gen, dtype=dtype)
    lengths = torch.randint(1, length + 1, (batch,), generator=gen)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).long()  # (B, L), right padding
    return features, mask, weight, bias


@pytest.mark.parametrize("precision", PRECISIONS)
def test_gradcheck_small_shapes(precision):
    """Exact gradient of the max: finite differences in fp64, with padding and a bias."""
    features, mask, weight, bias = _random_head(3, 5, 4, 7, torch.float64)
    log1 = get_activation("log1")

    def head(f, w, b):
        return log1(max_pooled_logits(f, mask, w, b, precision))

    inputs = tuple(t.requires_grad_() for t in (features, weight, bias))
    assert torch.autograd.gradcheck(head, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matches_reference_forward_and_backward(precision):
    features, mask, weight, bias = _random_head(6, 37, 16, 3000, torch.float32, seed=1)
    upstream = torch.randn(6, 3000, generator=torch.Generator().manual_seed(2))
    log1 = get_activation("log1")
    results = []
    for head in (lambda *a: max_pooled_logits(*a, precision=precision), reference_max_logits):
        leaves = [t.clone().requires_grad_() for t in (features, weight, bias)]
        out = log1(head(leaves[0], mask, leaves[1], leaves[2]))  # (B, V)
        (out * upstream).sum().backward()
        results.append([out.detach(), *(t.grad for t in leaves)])
    for fused, reference in zip(*results, strict=True):
        torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


def test_padding_never_wins():
    features, mask, weight, bias = _random_head(4, 9, 8, 50, torch.float32, seed=3)
    mask[:, -3:] = 0
    loud = features.clone()
    loud[:, -3:] = 1e4  # padding rows that would win every max if they were not masked
    expected = reference_max_logits(features, mask, weight, bias)
    torch.testing.assert_close(max_pooled_logits(loud, mask, weight, bias, "fp32"), expected)
    # bf16 is exact where a relu-family activation can see it: the positive values
    torch.testing.assert_close(torch.relu(max_pooled_logits(loud, mask, weight, bias, "bf16")), torch.relu(expected))


def test_left_padding_sends_no_gradient_to_padding():
    features, _, weight, bias = _random_head(2, 6, 8, 40, torch.float32, seed=4)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    features[0, :2] = features[0, 2]  # padding rows equal to the first real token: exact ties
    leaf = features.clone().requires_grad_()
    torch.relu(max_pooled_logits(leaf, mask, weight, bias, "fp32")).sum().backward()
    assert leaf.grad[0, :2].abs().sum() == 0


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        search_dtype("fp8", torch.device("cpu"))


@pytest.fixture(scope="module")
def scifact_batch(data_dir):
    from src.data.beir import load_corpus

    corpus = load_corpus(data_dir / "scifact" / "corpus.jsonl")
    texts = [corpus[d] for d in list(corpus)[:12]]
    tokenizer = load_tokenizer(None)
    return tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_equals_hf_mlm_on_real_splade_tiny(scifact_batch, precision):
    """Real scifact documents: the encoder's vectors and weight gradients equal those of the HF MLM's own logits."""
    encoder = DocEncoder.from_pretrained(None, "log1", head_precision=precision).eval()
    ids, mask = scifact_batch["input_ids"], scifact_batch["attention_mask"]
    upstream = torch.randn(ids.shape[0], encoder.vocab_size, generator=torch.Generator().manual_seed(0))

    fused = encoder(ids, mask)  # (B, V)
    (fused * upstream).sum().backward()
    fused_grad = encoder.mlm.get_output_embeddings().weight.grad.clone()
    encoder.zero_grad()

    logits = encoder.mlm(input_ids=ids, attention_mask=mask).logits  # (B, L, V): what HF computes
    reference = encoder.activation(logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(1))
    (reference * upstream).sum().backward()

    assert (fused > 0).sum() > 100 * ids.shape[0]  # a real, non-trivial document vector
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused_grad, encoder.mlm.get_output_embeddings().weight.grad, rtol=1e-4, atol=1e-5)


def test_encoder_runs_the_fused_head(scifact_batch):
    """What the trainer and evaluator build (DocEncoder.from_pretrained) goes through the fused head."""
    encoder = DocEncoder.from_pretrained(None, "log1")
    out = encoder.max_logits(scifact_batch["input_ids"], scifact_batch["attention_mask"])
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [next_fn for next_fn, _ in node.next_functions]
    assert any(type(node).__name__ == "_MaxPooledLogitsBackward" for node in seen)


def test_auto_precision_follows_the_hardware():
    expected = torch.bfloat16 if native_bf16(torch.device("cpu")) else None
    assert search_dtype("auto", torch.device("cpu")) == expected


def test_bf16_error_bound_holds_on_real_features(scifact_batch):
    """The margin that picks which terms to recompute: |bf16 logit - fp32 logit| <= error * ||h|| * ||w||."""
    from src.model.heads import _BF16_ERROR

    encoder = DocEncoder.from_pretrained(None, "log1").eval()
    with torch.no_grad():
        features = mlm_features(encoder.mlm, scifact_batch["input_ids"], scifact_batch["attention_mask"])
        rows = features[scifact_batch["attention_mask"].bool()]  # (T, H) real tokens only
        weight = encoder.mlm.get_output_embeddings().weight  # (V, H)
        exact = rows @ weight.T  # (T, V)
        rounded = (rows.bfloat16() @ weight.bfloat16().T).float()
        scale = rows.norm(dim=1, keepdim=True) * weight.norm(dim=1)  # (T, V)
    worst = ((rounded - exact).abs() / scale).max().item()
    assert 0 < worst <= _BF16_ERROR["cpu"]
