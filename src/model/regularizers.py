"""Sparsity regularisers on document vectors laid out as (N queries, G document slots, V terms)."""

import torch


def masked_flops(
    doc_vecs: torch.Tensor, threshold: float | None, term_weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The l0 mask FLOPS loss of DESIGN.md section 1, and the mask it used.

    L = sum_k sum_j ((1/N) * sum_i M[i,k] * |w(d[i,k])_j|)^2 with M[i,k] = ||w(d[i,k])||_0 > t.
    The divisor stays N when documents are masked out (as in the authors' code); threshold=None
    gives plain FLOPS. `term_weights` (V,), e.g. IDF, scales each term's mean before squaring.

    doc_vecs: (N, G, V). Returns (loss scalar, mask (N, G) of 0/1 floats). Under data parallelism it is
    given the documents of all ranks, (W*N, G, V) (src.training.module.gather_across_ranks), so N is the global batch.
    """
    n_queries = doc_vecs.shape[0]
    if threshold is None:
        mask = torch.ones(doc_vecs.shape[:2], dtype=doc_vecs.dtype, device=doc_vecs.device)
    else:
        doc_len = (doc_vecs != 0).sum(dim=-1)  # (N, G)
        mask = (doc_len > threshold).to(doc_vecs.dtype)
    slot_mean = (mask.unsqueeze(-1) * doc_vecs.abs()).sum(dim=0) / n_queries  # (G, V)
    if term_weights is not None:
        slot_mean = slot_mean * term_weights
    return (slot_mean**2).sum(), mask
