import json

import pytest
import torch

from src.data.beir import load_beir
from src.model.encoders import (
    DocEncoder,
    IdfQueryEncoder,
    bm25_idf,
    bundled_model_path,
    compute_idf,
    load_idf,
    load_tokenizer,
    query_frequency,
    save_idf,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


@pytest.fixture(scope="module")
def encoder():
    return DocEncoder.from_pretrained(None, "log1").eval()


def test_bundled_model_is_splade_tiny():
    config = json.loads((bundled_model_path() / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (128, 2, 30522)


def test_doc_encoder_matches_straightforward_implementation(encoder, tokenizer, data_dir):
    scifact = load_beir(data_dir, "scifact", "test")
    texts = [scifact.corpus[d] for d in scifact.doc_ids[:6]] + ["short text"]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ours = encoder(batch["input_ids"], batch["attention_mask"])  # (B, V)
        logits = encoder.mlm(**batch).logits  # (B, L, V): the full tensor the peers build
        weights = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
        reference = weights.amax(dim=1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    doc_len = (ours != 0).sum(-1)
    assert (doc_len > 0).all() and (doc_len < 1000).all()  # a SPLADE model: sparse, not empty
    # Padding never wins: the short text encodes the same alone as in the padded batch.
    alone = tokenizer(["short text"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(encoder(alone["input_ids"], alone["attention_mask"])[0], ours[-1])


def test_dropout_override_sets_every_dropout_of_the_model(tokenizer):
    """model.dropout: 0 makes two training-mode passes identical; null keeps splade-tiny's 0.1 (two passes differ)."""
    batch = tokenizer(["vitamin d and the risk of cancer"], return_tensors="pt")
    for dropout, same in ((0.0, True), (None, False)):
        encoder = DocEncoder.from_pretrained(None, "log1", dropout=dropout)
        assert encoder.training
        config = encoder.mlm.config
        assert (config.hidden_dropout_prob, config.attention_probs_dropout_prob) == ((0.0, 0.0) if same else (0.1, 0.1))
        with torch.no_grad():
            first, second = (encoder(batch["input_ids"], batch["attention_mask"]) for _ in range(2))
        assert torch.equal(first, second) == same


def test_merge_with_start_averages_every_weight_once():
    """posthoc.start_weight: each weight, tied ones included (BERT ties the term embedding to the projection), ends
    at w x start + (1 - w) x trained; merged twice, a tied weight would sit at a different point."""
    start = DocEncoder.from_pretrained(None, "log1")
    trained = DocEncoder.from_pretrained(None, "log1")
    with torch.no_grad():
        for weight in trained.mlm.parameters():
            weight.add_(1.0)
    trained.merge_with(start, 0.25)
    for name, weight in trained.mlm.named_parameters():
        torch.testing.assert_close(weight, start.mlm.get_parameter(name) + 0.75, msg=name)
    assert trained.mlm.get_output_embeddings().weight is trained.mlm.get_input_embeddings().weight
    with pytest.raises(ValueError, match="start_weight must be in"):
        trained.merge_with(start, 1.5)


def test_encode_terms_equals_full_vector_columns(encoder, tokenizer):
    batch = tokenizer(["protein folding in yeast cells", "a b"], padding=True, return_tensors="pt")
    terms = torch.tensor([tokenizer.convert_tokens_to_ids(t) for t in ["protein", "yeast", "cell", "the"]])
    with torch.no_grad():
        full = encoder(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(encoder.encode_terms(batch["input_ids"], batch["attention_mask"], terms), full[:, terms])


def test_idf_query_weights_by_hand(tokenizer):
    texts = ["cancer cells grow", "cancer risk", "heart disease"]
    idf = compute_idf(texts, tokenizer)
    cancer, cells, heart = tokenizer.convert_tokens_to_ids(["cancer", "cells", "heart"])
    # df(cancer)=2, df(cells)=1 of N=3: log(1 + (3 - df + 0.5) / (df + 0.5))
    assert idf[cancer].item() == pytest.approx(torch.log1p(torch.tensor(1.5 / 2.5)).item())
    assert idf[cells].item() == pytest.approx(torch.log1p(torch.tensor(2.5 / 1.5)).item())
    assert idf[heart].item() == pytest.approx(bm25_idf(torch.tensor(1.0), 3).item())

    idf_with_specials = idf.clone()
    idf_with_specials[tokenizer.all_special_ids] = 5.0  # must still weigh 0 in queries
    query = IdfQueryEncoder(idf_with_specials, tokenizer.all_special_ids)
    batch = tokenizer(["cancer cancer cells", "heart"], padding=True, return_tensors="pt")
    q = query(batch["input_ids"], batch["attention_mask"])  # (2, V)
    assert q[0, cancer].item() == pytest.approx(idf[cancer].item())  # counted once despite the repeat
    assert q[0, cells].item() == pytest.approx(idf[cells].item())
    assert (q[0] != 0).sum().item() == 2
    assert (q[1] != 0).sum().item() == 1  # [CLS], [SEP] and [PAD] weigh 0
    assert q[:, tokenizer.all_special_ids].abs().sum().item() == 0


def test_idf_json_round_trip_and_trainable_flag(tokenizer, tmp_path):
    idf = compute_idf(["alpha beta", "beta gamma"], tokenizer)
    save_idf(idf, tokenizer, tmp_path / "idf.json")
    weights = json.loads((tmp_path / "idf.json").read_text())
    assert len(weights) == len(tokenizer) and weights["beta"] == pytest.approx(
        idf[tokenizer.convert_tokens_to_ids("beta")].item()
    )
    torch.testing.assert_close(load_idf(tmp_path / "idf.json", tokenizer), idf)
    assert not IdfQueryEncoder(idf, []).idf.requires_grad
    assert IdfQueryEncoder(idf, [], trainable=True).idf.requires_grad


def test_query_frequency_is_the_share_of_queries_holding_each_term_and_predicts_flops(tokenizer):
    """p_q(j) as the query encoder tokenises (repeats once, specials 0); with it, the expected multiply-adds per
    query-document pair, sum_j p_q(j) p_d(j), is the FLOPS that src.retrieval.engine.efficiency measures."""
    queries = ["cancer cancer cells", "cancer risk", "heart disease", "cells"]
    freq = query_frequency(queries, tokenizer, max_length=64, batch_size=3)  # batches of 3 and 1
    cancer, cells, heart = tokenizer.convert_tokens_to_ids(["cancer", "cells", "heart"])
    assert (freq[cancer].item(), freq[cells].item(), freq[heart].item()) == (0.5, 0.5, 0.25)
    assert freq[tokenizer.all_special_ids].sum().item() == 0
    docs = torch.zeros(3, len(tokenizer))  # (D, V): document weights on some of the terms
    docs[0, cancer], docs[1, [cancer, heart]], docs[2, cells] = 1.0, 2.0, 0.5
    idf = torch.ones(len(tokenizer))
    batch = tokenizer(queries, padding=True, return_tensors="pt")
    q = IdfQueryEncoder(idf, tokenizer.all_special_ids)(batch["input_ids"], batch["attention_mask"])  # (Q, V)
    from src.retrieval.engine import _to_csr, efficiency

    measured = efficiency(_to_csr(q), _to_csr(docs))["flops"]
    assert measured == pytest.approx(float(freq @ (docs != 0).float().mean(0)))


def test_empty_corpus_idf_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="empty corpus"):
        compute_idf([], tokenizer)


@pytest.mark.parametrize("head_precision", ["fp32", "bf16"])
def test_the_papers_distilbert_architecture_encodes_backpropagates_and_round_trips(tokenizer, tmp_path, head_precision):
    """model=distilbert needs the hub; a small random DistilBertForMaskedLM with the same (BERT uncased)
    vocabulary takes the same path offline: its MLM head (transform, GELU, layer norm, projection) differs
    from BERT's, and the fused max must still equal the full logits' max."""
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    from src.model.formats import export_model, load_retriever

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=30522, dim=64, n_layers=2, n_heads=2, hidden_dim=128)
    folder = tmp_path / "distilbert"
    DistilBertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoder = DocEncoder.from_pretrained(str(folder), "log2", head_precision).eval()
    batch = tokenizer(["a longer document about vitamin d", "short"], padding=True, return_tensors="pt")
    ours = encoder(batch["input_ids"], batch["attention_mask"])  # (B, V)
    logits = encoder.mlm(**batch).logits  # (B, L, V)
    reference = torch.log1p(torch.log1p(torch.relu(logits))).masked_fill(~batch["attention_mask"].bool()[..., None], 0)
    reference = reference.amax(dim=1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    assert (ours != 0).sum() > 0
    # Gradients reach the body through the captured features. (Not compared with the full logits' one by one:
    # a random model's tokens tie within rounding often enough for the max to pick another, equally valid,
    # token; test_heads compares gradients on splade-tiny and by gradcheck.)
    ours.sum().backward()
    for name in ("distilbert.transformer.layer.0.attention.q_lin.weight", "vocab_transform.weight"):
        grad = encoder.mlm.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name

    export = export_model(encoder, tokenizer, torch.ones(30522), tmp_path / "model")
    loaded = load_retriever(str(export))
    assert type(loaded.doc_encoder.mlm).__name__ == "DistilBertForMaskedLM"
    with torch.no_grad():
        again = loaded.doc_encoder.eval()(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(again, ours.detach(), rtol=0, atol=0)
