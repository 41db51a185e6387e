"""Exact sparse retrieval and efficiency metrics. Library code: no Lightning needed."""

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from src.encoders import DocEncoder, IdfQueryEncoder


def _to_csr(vecs: torch.Tensor) -> sp.csr_matrix:
    """(B, V) dense tensor -> scipy CSR float32, keeping exact non-zeros only."""
    vecs = vecs.float().cpu()
    rows, cols = vecs.nonzero(as_tuple=True)
    values = vecs[rows, cols].numpy()
    return sp.csr_matrix((values, (rows.numpy(), cols.numpy())), shape=tuple(vecs.shape), dtype=np.float32)


@torch.inference_mode()
def encode_documents(
    encoder: DocEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int = 512,
    tokens_per_batch: int = 8192,
    progress: bool = True,
) -> sp.csr_matrix:
    """Encodes texts into a (num_docs, V) CSR matrix, rows in input order.

    Documents are sorted by length and batched by token count, so short documents are not
    padded to long ones and the (B, L, V) logits stay near tokens_per_batch * V floats.
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    rows: list[sp.csr_matrix] = []
    bar = tqdm(total=len(ids), desc="encoding documents", unit="doc", disable=not progress)
    start = 0
    while start < len(order):
        length = len(ids[order[start]])  # the longest in the batch, as sorted
        batch = order[start : start + max(1, tokens_per_batch // length)]
        padded = tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
        vecs = encoder(padded["input_ids"].to(device), padded["attention_mask"].to(device))  # (B, V)
        rows.append(_to_csr(vecs))
        bar.update(len(batch))
        start += len(batch)
    bar.close()
    stacked = sp.vstack(rows, format="csr")
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return stacked[inverse]


@torch.inference_mode()
def encode_queries(
    encoder: IdfQueryEncoder, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int = 512
) -> sp.csr_matrix:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return _to_csr(encoder(batch["input_ids"], batch["attention_mask"]))


def search(
    queries: sp.csr_matrix,
    docs: sp.csr_matrix,
    query_ids: list[str],
    doc_ids: list[str],
    k: int = 1000,
    query_chunk: int = 256,
    doc_chunk: int = 100_000,
) -> dict[str, dict[str, float]]:
    """Exact top-k by dot product over the whole corpus, query id -> {doc id: score}.

    Scores are computed a (query_chunk x doc_chunk) block at a time and merged into a running
    top-k, so memory stays bounded on large corpora. A document whose id equals the query's id
    is never returned (BEIR's rule for ArguAna and Quora). Documents with score 0 share no term
    with the query and are left out.
    """
    k = min(k, len(doc_ids))
    doc_ids_arr = np.asarray(doc_ids, dtype=object)
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    self_doc = np.array([doc_index.get(q, -1) for q in query_ids])
    docs_t = docs.T.tocsc()  # (V, num_docs): column slices are cheap
    results: dict[str, dict[str, float]] = {}
    for q0 in range(0, len(query_ids), query_chunk):
        q_block = queries[q0 : q0 + query_chunk]
        n_q = q_block.shape[0]
        best_scores = np.full((n_q, 0), -np.inf, dtype=np.float32)
        best_docs = np.zeros((n_q, 0), dtype=np.int64)
        for d0 in range(0, len(doc_ids), doc_chunk):
            block = (q_block @ docs_t[:, d0 : d0 + doc_chunk]).toarray()  # (n_q, doc_chunk)
            own = self_doc[q0 : q0 + n_q] - d0
            inside = (own >= 0) & (own < block.shape[1])
            block[np.nonzero(inside)[0], own[inside]] = -np.inf
            cand_scores = np.concatenate([best_scores, block], axis=1)
            cand_docs = np.concatenate(
                [best_docs, np.broadcast_to(np.arange(d0, d0 + block.shape[1]), block.shape)], axis=1
            )
            keep = np.argpartition(-cand_scores, min(k, cand_scores.shape[1] - 1), axis=1)[:, :k]
            best_scores = np.take_along_axis(cand_scores, keep, axis=1)
            best_docs = np.take_along_axis(cand_docs, keep, axis=1)
        for row, qid in enumerate(query_ids[q0 : q0 + n_q]):
            hit = best_scores[row] > 0
            results[qid] = dict(
                zip(
                    doc_ids_arr[best_docs[row][hit]].tolist(), best_scores[row][hit].astype(float).tolist(), strict=True
                )
            )
    return results


def efficiency(queries: sp.csr_matrix, docs: sp.csr_matrix) -> dict[str, float]:
    """FLOPS = sum_j p_q(j) p_d(j); Doc_Len = sum_j p_d(j); Q_Len = sum_j p_q(j) (DESIGN.md section 1)."""
    p_d = np.asarray((docs != 0).sum(axis=0)).ravel() / docs.shape[0]  # (V,)
    p_q = np.asarray((queries != 0).sum(axis=0)).ravel() / queries.shape[0]  # (V,)
    return {"flops": float(p_q @ p_d), "doc_len": float(p_d.sum()), "q_len": float(p_q.sum())}
