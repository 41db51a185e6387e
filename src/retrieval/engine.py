"""Exact sparse retrieval and efficiency metrics. Library code: no Lightning needed."""

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from queue import SimpleQueue

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from src.common.distributed import gather_to_first, rank, world_size
from src.model.encoders import DocEncoder, IdfQueryEncoder

try:  # scipy's C kernels under its sparse operations; private, so `search` falls back to the public API
    from scipy.sparse import _sparsetools
except ImportError:
    _sparsetools = None


def _to_csr(vecs: torch.Tensor) -> sp.csr_matrix:
    """(B, V) dense tensor -> scipy CSR float32, keeping exact non-zeros only."""
    vecs = vecs.float().cpu()
    rows, cols = vecs.nonzero(as_tuple=True)
    values = vecs[rows, cols].numpy()
    return sp.csr_matrix((values, (rows.numpy(), cols.numpy())), shape=tuple(vecs.shape), dtype=np.float32)


# Under data parallelism a rank sends its encoded rows to rank 0 in pieces of about this many non-zeros
# (8 bytes each): a corpus of millions of documents is never one message.
PIECE_NNZ = 1 << 24


@torch.inference_mode()
def encode_documents(
    encoder: DocEncoder,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int = 512,
    tokens_per_batch: int = 8192,
    progress: bool = True,
) -> sp.csr_matrix | None:
    """Encodes texts into a (num_docs, V) CSR matrix, rows in input order.

    Documents are sorted by length and batched by token count, so short documents are not
    padded to long ones and the (B, L, V) logits stay near tokens_per_batch * V floats.

    Under torch.distributed (W > 1 ranks) every rank must call this with the same texts: rank r encodes
    every W-th batch of that order, so ranks get alike token counts, and rank 0 assembles the matrix.
    Returns it on rank 0 and None on the other ranks. The batches are those of one process, so the rows
    are too (up to the kernels of each rank's device).
    """
    encoder.eval()
    device = next(encoder.parameters()).device
    world, me = world_size(), rank()
    ids = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
    batches, start = [], 0
    while start < len(order):
        length = len(ids[order[start]])  # the longest in the batch, as sorted
        batches.append(order[start : start + max(1, tokens_per_batch // length)])
        start += len(batches[-1])
    mine = batches[me::world]

    pieces: list[tuple[np.ndarray, sp.csr_matrix]] = []  # (positions, rows) of this rank's documents
    rows: list[sp.csr_matrix] = []
    positions: list[int] = []
    desc = "encoding documents" + (f" (rank 0 of {world})" if world > 1 else "")
    bar = tqdm(total=sum(map(len, mine)), desc=desc, unit="doc", disable=not progress or me != 0)
    for i, batch in enumerate(mine):
        padded = tokenizer.pad({"input_ids": [ids[j] for j in batch]}, return_tensors="pt")
        vecs = encoder(padded["input_ids"].to(device), padded["attention_mask"].to(device))  # (B, V)
        rows.append(_to_csr(vecs))
        positions += batch
        bar.update(len(batch))
        if i + 1 == len(mine) or sum(r.nnz for r in rows) >= PIECE_NNZ:
            pieces.append((np.array(positions, dtype=np.int64), sp.vstack(rows, format="csr")))
            rows, positions = [], []
    bar.close()

    gathered = gather_to_first(pieces)  # every rank's pieces on rank 0; [pieces] in one process
    if gathered is None:
        return None
    pieces = [piece for rank_pieces in gathered for piece in rank_pieces]
    if not pieces:
        return sp.csr_matrix((0, encoder.vocab_size), dtype=np.float32)
    stacked = sp.vstack([rows for _, rows in pieces], format="csr")  # (num_docs, V), rows in piece order
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[np.concatenate([p for p, _ in pieces])] = np.arange(len(order))
    return stacked[inverse]


@torch.inference_mode()
def encode_queries(
    encoder: IdfQueryEncoder, tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int = 512
) -> sp.csr_matrix:
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return _to_csr(encoder(batch["input_ids"], batch["attention_mask"]))


# Top-k candidates are kept as one uint64 key each: the float32 score's bits above, ~doc position below.
# Positive float32 bits order like the floats, so a larger key is a higher score, and among equal scores
# the lower document position; keys are unique, so a partition on them is exact and deterministic. 0 = empty.
_POS_MASK = np.uint64(0xFFFF_FFFF)
_MAX_DOCS = 1 << 32


def _keys(scores: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n,) positive float32 scores and (n,) document positions -> (n,) uint64 keys."""
    return (scores.view(np.uint32).astype(np.uint64) << np.uint64(32)) | (_POS_MASK - positions.astype(np.uint64))


def _key_scores(keys: np.ndarray) -> np.ndarray:
    """uint64 keys -> float32 scores, same shape; the empty key 0 gives 0.0."""
    return (keys >> np.uint64(32)).astype(np.uint32).view(np.float32)


def _key_positions(keys: np.ndarray) -> np.ndarray:
    """uint64 keys -> int64 document positions, same shape (meaningless for the empty key)."""
    return (_POS_MASK - (keys & _POS_MASK)).astype(np.int64)


def plan_chunks(
    num_queries: int, num_docs: int, doc_nnz: int, k: int, memory_budget_mib: float = 1024, workers: int = 1
) -> tuple[int, int, int]:
    """Default (query_chunk, doc_chunk, score_rows) for `search` within about memory_budget_mib MiB of
    working memory on top of the inputs and the returned dicts.

    A quarter of the budget goes to the running top-k, 8 bytes x query_chunk x k; a quarter to the
    posting lists of two document chunks (one in use, the next being built), 8 bytes a non-zero; half
    to the workers' blocks of score_rows queries, each row about 12 bytes x doc_chunk (float32 scores,
    the merge's boolean masks and copies) plus 32 bytes x k (the merge's pool of at least 2k keys and
    its partition). doc_chunk is also capped at 131,072 documents, 512 KiB of float32 scores, so the
    scatter target of one query stays in a core's L2 cache (on the 1M benchmark, chunks from 65,536 to
    262,144 ran at the same speed, 524,288 slower), and score_rows at 256. query_chunk is as large as
    fits: each chunk of queries transposes every document chunk again.
    """
    budget = memory_budget_mib * 2**20
    per_doc = 8 * max(doc_nnz / max(num_docs, 1), 1.0)
    doc_chunk = int(min(max(num_docs, 1), 131_072, max(1024, budget / 8 / per_doc)))
    per_row = (12 * doc_chunk + 32 * k) * max(workers, 1)
    score_rows = int(min(max(num_queries, 1), 256, max(1, budget / 2 / per_row)))
    query_chunk = int(min(max(num_queries, 1), max(score_rows, budget / 4 / (8 * max(k, 1)))))
    return query_chunk, doc_chunk, score_rows


def _cutoff(scores: np.ndarray, k: int) -> np.ndarray:
    """(c, w) float32 scores, w > k -> (c,) a score that at least k entries of each row reach, a little
    below the k-th largest.

    The exact k-th largest would take a partition of every whole row; a strided sample of about
    max(16 k, 4096) entries gives a cut that about 2k entries reach, checked with one counting pass,
    and only rows where the sample misled (rare) fall back to the exact partition.
    """
    width = scores.shape[1]
    step = max(1, width // max(16 * k, 4096))
    sample = scores[:, ::step]  # (c, s)
    size = sample.shape[1]
    rank = min(size, -(-2 * k * size // width) + 8)  # ~2k + 8 step entries of a row are at or above it
    cut = np.partition(sample, size - rank, axis=1)[:, size - rank]  # (c,)
    short = np.flatnonzero(np.count_nonzero(scores >= cut[:, None], axis=1) < k)
    if len(short):
        cut[short] = np.partition(scores[short], width - k, axis=1)[:, width - k]
    return cut


def _merge(state: np.ndarray, scores: np.ndarray, threshold: np.ndarray, first_doc: int) -> None:
    """Merges a block of scores into the running top-k keys, in place.

    state (m, k) uint64 keys of the best documents so far; scores (m, w) float32 of documents
    first_doc.. first_doc + w - 1; threshold (m,) float32, each row's k-th best score so far (0 while it
    has fewer than k), updated too. Only scores above the threshold can enter, so after the first chunk
    a row brings a handful of candidates instead of w.
    """
    k = state.shape[1]
    width = scores.shape[1]
    mask = scores > threshold[:, None]  # (m, w); also drops 0 and negative scores, never returned
    counts = np.count_nonzero(mask, axis=1)  # (m,)
    crowded = np.flatnonzero(counts > 4 * k)  # the first chunk(s): cut rows to about their 2k best first
    if len(crowded):
        whole = len(crowded) == len(scores)  # the usual case; skips copying the block
        sub = scores if whole else scores[crowded]  # (c, w)
        cut_mask = (mask if whole else mask[crowded]) & (sub >= _cutoff(sub, k)[:, None])  # (c, w)
        mask[crowded] = cut_mask
        counts[crowded] = np.count_nonzero(cut_mask, axis=1)
    flat = np.flatnonzero(mask)  # (n,) row-major, so each row's candidates come together; 1-D is fast
    if len(flat) == 0:
        return
    rows, cols = np.divmod(flat, width)
    keys = _keys(scores.ravel()[flat], cols + first_doc)  # (n,)
    active = np.flatnonzero(counts)  # rows with candidates
    starts = np.cumsum(counts) - counts  # (m,) each row's first candidate in keys
    slot = np.arange(len(rows)) - starts[rows]  # rank of each candidate within its row
    widest = int(counts.max())
    pool = np.zeros((len(active), k + widest), dtype=np.uint64)  # (a, k + widest), 0 pads
    pool[:, :k] = state[active]
    pool[np.searchsorted(active, rows), k + slot] = keys
    best = np.partition(pool, widest, axis=1)[:, widest:]  # (a, k): the k largest keys
    state[active] = best
    threshold[active] = _key_scores(best.min(axis=1))


def _postings(docs: sp.csr_matrix, d0: int, d1: int) -> sp.csr_matrix:
    """Documents d0..d1-1 as posting lists, (V, d1 - d0) CSR: row j = the chunk's documents holding term j."""
    if _sparsetools is None:
        return docs[d0:d1].T.tocsr()
    # Transposed straight from views of docs' arrays: docs[d0:d1] would copy the rows first, and so
    # would a csr_matrix built on the views (scipy copies a view of a much larger array).
    lo, hi = int(docs.indptr[d0]), int(docs.indptr[d1])
    index_dtype = docs.indices.dtype if hi - lo <= np.iinfo(np.int32).max else np.int64
    indptr = (docs.indptr[d0 : d1 + 1] - lo).astype(index_dtype)  # (w + 1,)
    out_indptr = np.empty(docs.shape[1] + 1, dtype=index_dtype)  # (V + 1,)
    out_docs, out_vals = np.empty(hi - lo, dtype=index_dtype), np.empty(hi - lo, dtype=docs.data.dtype)
    _sparsetools.csr_tocsc(
        d1 - d0,
        docs.shape[1],
        indptr,
        docs.indices[lo:hi].astype(index_dtype, copy=False),
        docs.data[lo:hi],
        out_indptr,
        out_docs,
        out_vals,
    )
    return sp.csr_matrix((out_vals, out_docs, out_indptr), shape=(docs.shape[1], d1 - d0))


def _score(queries: sp.csr_matrix, r0: int, postings: sp.csr_matrix, out: np.ndarray) -> None:
    """out (r, w) float32 <- scores of queries r0..r0+r-1 against the chunk whose postings these are.

    Each query adds up only the posting lists of its own terms, weighted: a scatter-add touching about
    FLOPS x w entries instead of the chunk's every non-zero. scipy's public way, postings[terms].T @
    weights, copies the lists and costs ~135 us of Python around each call; scipy's C kernel on each
    list in place costs a few us a term. On the 1M benchmark the whole search took ~25% less time so
    (4.5 s against 6 s with threads=1; `_postings` skips copies the same way).
    """
    raw = _sparsetools is not None
    for i in range(out.shape[0]):
        lo, hi = queries.indptr[r0 + i], queries.indptr[r0 + i + 1]
        terms, weights = queries.indices[lo:hi], queries.data[lo:hi]  # (t,) each
        if not raw:
            out[i] = postings[terms].T @ weights if hi > lo else 0
            continue
        row = out[i]
        row[:] = 0
        indptr, docs, vals = postings.indptr, postings.indices, postings.data
        for t, term in enumerate(terms.tolist()):
            # One term's posting list in place: a one-column CSC whose indptr is a 2-entry view.
            _sparsetools.csc_matvec(len(row), 1, indptr[term : term + 2], docs, vals, weights[t : t + 1], row)


def _block(
    queries: sp.csr_matrix,
    r0: int,
    postings: sp.csr_matrix,
    d0: int,
    state: np.ndarray,
    threshold: np.ndarray,
    self_doc: np.ndarray,
    buffers: SimpleQueue,
) -> None:
    """Scores queries r0..r0+r-1 against the document chunk starting at d0 and merges the scores into
    their running top-k: state (r, k) and threshold (r,) are views of these queries' rows, self_doc (r,)
    their own documents' positions. Takes a flat float32 buffer from buffers for the scores."""
    buffer = buffers.get()
    try:
        rows, width = state.shape[0], postings.shape[1]
        scores = buffer[: rows * width].reshape(rows, width)  # (r, w)
        _score(queries, r0, postings, scores)
        own = self_doc - d0  # (r,) each query's own document's column in this chunk
        inside = np.flatnonzero((own >= 0) & (own < width))
        scores[inside, own[inside]] = 0
        _merge(state, scores, threshold, d0)
    finally:
        buffers.put(buffer)


def search(
    queries: sp.csr_matrix,
    docs: sp.csr_matrix,
    query_ids: list[str],
    doc_ids: list[str],
    k: int = 1000,
    query_chunk: int | None = None,
    doc_chunk: int | None = None,
    *,
    score_rows: int | None = None,
    memory_budget_mib: float = 1024,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """Exact top-k by dot product over the whole corpus, query id -> {doc id: score}.

    Each query's dict runs from the highest score down; equal scores go to the document that comes
    first in docs, so results do not depend on chunk sizes or threads. A document whose id equals the
    query's id is never returned (BEIR's rule for ArguAna and Quora). Documents with score 0 share no
    term with the query and are left out, so a query can get fewer than k. Scores are float32 sums.

    Memory stays bounded on large corpora: for each chunk of query_chunk queries, documents are taken
    doc_chunk at a time and transposed into posting lists (term -> documents), each query adds up the
    posting lists of its own terms (`_score`), and each (score_rows, doc_chunk) block of scores is merged
    into a running top-k (`_merge`) and dropped. No dense queries x documents matrix of the whole corpus
    is ever built. Chunk sizes left as None come from `plan_chunks` for memory_budget_mib MiB of working
    memory on top of the inputs.

    threads: worker threads (default: the CPU count, at most 4). Blocks of score_rows queries are scored
    and merged on the workers while the calling thread transposes the next document chunk: scipy's
    kernels and numpy's array operations release the GIL, the Python loop over query terms does not,
    so a few threads are all that pays. 1 does everything on the calling thread.
    """
    num_queries, num_docs = queries.shape[0], docs.shape[0]
    if len(query_ids) != num_queries or len(doc_ids) != num_docs:
        raise ValueError("need one id per query row and per document row")
    if num_docs >= _MAX_DOCS:
        raise ValueError(f"at most {_MAX_DOCS - 1} documents (positions are kept in 32 bits)")
    k = min(k, num_docs)
    if k <= 0 or num_queries == 0:
        return {qid: {} for qid in query_ids}
    workers = max(1, threads if threads is not None else min(4, os.cpu_count() or 1))
    plan = plan_chunks(num_queries, num_docs, docs.nnz, k, memory_budget_mib, workers)
    query_chunk = query_chunk or plan[0]
    doc_chunk = min(doc_chunk or plan[1], num_docs)
    # By default at least one block of queries per worker.
    score_rows = min(score_rows or min(plan[2], -(-min(query_chunk, num_queries) // workers)), query_chunk)

    queries = sp.csr_matrix(queries, dtype=np.float32)
    docs = sp.csr_matrix(docs, dtype=np.float32)
    # Position of each query's own id among the documents (-1: none); the last one if ids repeat.
    own_ids = set(query_ids).intersection(doc_ids)
    own_pos = {d: i for i, d in enumerate(doc_ids) if d in own_ids}
    self_doc = np.array([own_pos.get(q, -1) for q in query_ids], dtype=np.int64)  # (nq,)

    # One flat score buffer per worker, flat so a narrower last chunk still gets a contiguous view.
    buffers: SimpleQueue = SimpleQueue()
    for _ in range(workers):
        buffers.put(np.empty(score_rows * doc_chunk, dtype=np.float32))
    chunks = [(d0, min(d0 + doc_chunk, num_docs)) for d0 in range(0, num_docs, doc_chunk)]
    results: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        for q0 in range(0, num_queries, query_chunk):
            q1 = min(q0 + query_chunk, num_queries)
            state = np.zeros((q1 - q0, k), dtype=np.uint64)  # (n_q, k) best keys, 0 = empty
            threshold = np.zeros(q1 - q0, dtype=np.float32)  # (n_q,) k-th best score, 0 until k found
            postings = _postings(docs, *chunks[0])  # (V, w)
            for c, (d0, _) in enumerate(chunks):
                blocks = [
                    (
                        queries,
                        r0,
                        postings,
                        d0,
                        state[r0 - q0 : r1 - q0],
                        threshold[r0 - q0 : r1 - q0],
                        self_doc[r0:r1],
                        buffers,
                    )
                    for r0, r1 in ((r0, min(r0 + score_rows, q1)) for r0 in range(q0, q1, score_rows))
                ]
                if pool is None:
                    for args in blocks:
                        _block(*args)
                    postings = _postings(docs, *chunks[c + 1]) if c + 1 < len(chunks) else None
                    continue
                # Blocks of one chunk touch disjoint rows, and the next chunk waits for all of them, so
                # each row's merges stay in document order. Meanwhile this thread builds the next postings.
                jobs = [pool.submit(_block, *args) for args in blocks]
                postings = _postings(docs, *chunks[c + 1]) if c + 1 < len(chunks) else None
                for job in jobs:
                    job.result()  # (raises a worker's error here)
            state = np.sort(state, axis=1)[:, ::-1]  # best first, empty keys (0) last
            scores_out, positions = _key_scores(state), _key_positions(state)  # (n_q, k) each, best first
            found = np.count_nonzero(state, axis=1)  # (n_q,)
            for row, qid in enumerate(query_ids[q0:q1]):
                hits = positions[row, : found[row]].tolist()
                results[qid] = dict(
                    zip(map(doc_ids.__getitem__, hits), scores_out[row, : found[row]].tolist(), strict=True)
                )
    return results


def efficiency(queries: sp.csr_matrix, docs: sp.csr_matrix) -> dict[str, float]:
    """FLOPS = sum_j p_q(j) p_d(j); Doc_Len = sum_j p_d(j); Q_Len = sum_j p_q(j) (DESIGN.md section 1)."""
    p_d = np.asarray((docs != 0).sum(axis=0)).ravel() / docs.shape[0]  # (V,)
    p_q = np.asarray((queries != 0).sum(axis=0)).ravel() / queries.shape[0]  # (V,)
    return {"flops": float(p_q @ p_d), "doc_len": float(p_d.sum()), "q_len": float(p_q.sum())}
