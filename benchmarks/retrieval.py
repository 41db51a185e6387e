"""Exact top-k sparse retrieval over a synthetic corpus (1M documents by default, any size with --docs):
`src.retrieval.engine.search` against a straightforward scipy product and the BMP engine, queries per second
and peak memory of each.

Run: `.venv/bin/python benchmarks/retrieval.py` (or `make bench-retrieval`; BEIR-13's largest corpora:
`make bench-retrieval ARGS="--docs 5400000"`); `--help` lists the knobs.

Synthetic data (fixed seed, written once as one of our index folders under `.cache/retrieval_bench/`,
chunk by chunk through `src.retrieval.index.index_writer`, so neither generation nor search holds the corpus):

* Vocabulary of V = 30,522 ids (BERT's). Term popularity is Zipf-Mandelbrot over ranks,
  p(r) ~ (r + b)^-a with a = 1 and shift b = 40, the ranks mapped to ids by a fixed random permutation.
  The shift keeps the head from reaching every document: with b = 40 the most common term is in ~30%
  of documents and FLOPS (sum_j p_q(j) p_d(j), DESIGN.md section 1) comes out near 1, the value our
  default `make train` run measures on scifact (0.94 at Doc_Len 95, Q_Len 20). Pure Zipf (b = 0) would
  put the top terms in every document (FLOPS ~4.5); pass `--zipf-shift` to try other corpora.
* Documents: length ~ Poisson(100) (at least 1) distinct terms, drawn from p without replacement
  (sequentially: draws with replacement, keeping each term's first occurrence, until the length is
  reached). Weights log-normal(0, 0.5), like SPLADE's log1 output (mostly 0.4 to 2.7), quantised to
  multiples of 1/50 in [1, 255] / 50, as an engine's 8-bit index stores them: every method indexes the
  very same vectors.
* Queries, as our inference-free queries: length ~ Poisson(20) (at least 1) distinct terms, drawn the same
  way from a query distribution close to the documents' one, p_q(j) ~ p(j) * lognormal(0, 0.5) noise,
  each weighted by the BM25 IDF of the generated corpus, log(1 + (N - df + 0.5) / (df + 0.5)).
* Query ids `q<i>` and document ids `d<i>` never collide, so self-id exclusion removes nothing here.

Each measurement runs in its own subprocess, so peak memory (VmHWM from /proc/self/status: the process's peak
resident set, pages of memory-mapped files included) is the method's own. Every method opens the corpus
memory-mapped from the index folder (`SparseIndex.load(mmap=True)`; `--in-memory` reads it in). "Loaded" is
the resident set just before the timed call: imports (torch comes with `src.retrieval.engine`; every method imports
it), the ids, the queries and the corpus pages read so far. The timed call is the whole `search` for ours; for
scipy, `Q @ D.T` over the whole corpus for all its queries at once, then a top-k per row and the same query id
-> {doc id: score} dicts. Its sparse score matrix holds about nq x nd x (1 - e^-FLOPS) entries, 8 bytes each
plus the product's working copies: memory grows with the queries, so `--scipy-queries` caps them (default: all
of them) and the table compares per-query rates. For BMP (Mallia, Suel, Tonellotto, SIGIR 2024; `pip install
bmp`, in the dev lock), the index is built once from the same vectors (timed apart, through its Python API),
then each query is one call of its exact search (alpha = beta = 1), single-threaded. Ours and scipy must
return the same top-k scores on the first `--check-queries` queries; BMP's scores are in its own units (it
rescales each query's weights to a grid of 32 steps), so it is compared by the share of our top-10 / top-k it
returns, and again with our queries put on its grid.
Results go to `benchmarks/results_retrieval.json` (`--output`; other sizes `results_retrieval_5m.json`,
...) and a markdown table to stdout.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/retrieval.py`: the root holds benchmarks/harness.py
    sys.path.insert(0, str(ROOT))

from benchmarks import harness

V = 30_522
QUANT_STEPS = 50  # document weights are multiples of 1/50: an engine's 8-bit index holds them exactly
GEN_CHUNK = 100_000  # documents generated and written at a time
BMP_BLOCK = 32  # BMP's block size (its default)
METHODS = ["ours", "scipy", "bmp"]
LARGE_CORPUS = 2_000_000  # documents; beyond, the defaults spare the baselines' memory (see main)


def zipf_probs(vocab: int, a: float, shift: float) -> np.ndarray:
    """Zipf-Mandelbrot probabilities over ranks 1..vocab, p(r) ~ (r + shift)^-a, (vocab,) float64."""
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    p = (ranks + shift) ** -a
    return p / p.sum()


def draw_rows(
    rng: np.random.Generator, p: np.ndarray, lengths: np.ndarray, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of distinct term ids drawn from p without replacement, row i with lengths[i] terms.

    Sequential sampling without replacement, vectorised: each row draws lengths.max() + 64 terms with
    replacement and keeps the first occurrence of each term, in draw order, up to its length (64 spare
    draws are plenty when no term is near certain). Returns (indices, counts): the CSR column ids, sorted
    within each row, (sum counts,) int32, and each row's number of terms, (rows,) int64.
    """
    cdf = np.cumsum(p)
    cdf[-1] = 1.0
    pieces, counts = [], []
    for start in range(0, len(lengths), chunk):
        want = lengths[start : start + chunk]  # (m,)
        width = int(want.max()) + 64
        draws = np.searchsorted(cdf, rng.random((len(want), width)), side="right").astype(np.int64)  # (m, width)
        key = np.sort(draws * width + np.arange(width), axis=1)  # by term, then draw position
        terms, pos = key // width, key % width
        first = np.ones(terms.shape, dtype=bool)
        first[:, 1:] = terms[:, 1:] != terms[:, :-1]
        pos = np.where(first, pos, width)  # repeats go last
        order = np.argsort(pos, axis=1)[:, : int(want.max())]  # first occurrences in draw order
        keep = (np.take_along_axis(pos, order, axis=1) < width) & (np.arange(order.shape[1]) < want[:, None])
        terms = np.where(keep, np.take_along_axis(terms, order, axis=1), np.iinfo(np.int64).max)
        terms.sort(axis=1)  # CSR wants sorted column ids; the fillers sort last
        keep = np.arange(terms.shape[1]) < keep.sum(axis=1, keepdims=True)
        pieces.append(terms[keep].astype(np.int32))
        counts.append(keep.sum(axis=1))
    return np.concatenate(pieces), np.concatenate(counts)


def _csr(indices: np.ndarray, counts: np.ndarray, data: np.ndarray, cols: int) -> sp.csr_matrix:
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return sp.csr_matrix((data, indices, indptr), shape=(len(counts), cols))


def quantise(weights: np.ndarray) -> np.ndarray:
    """float weights -> float32 multiples of 1 / QUANT_STEPS in [1, 255] / QUANT_STEPS, same shape."""
    return (np.clip(np.rint(weights * QUANT_STEPS), 1, 255) / QUANT_STEPS).astype(np.float32)


def generate(folder: Path, args: argparse.Namespace) -> None:
    """Writes the corpus as an index folder (`src.retrieval.index.index_writer`, GEN_CHUNK documents at a time, so
    generation never holds the corpus either) and the queries as queries.npz, as the docstring describes."""
    from src.retrieval.index import index_writer

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(V)  # rank -> term id
    p = np.empty(V)
    p[perm] = zipf_probs(V, args.zipf_a, args.zipf_shift)  # (V,) by term id
    doc_len = np.maximum(rng.poisson(100, args.docs), 1)
    df = np.zeros(V, dtype=np.int64)  # (V,) document frequency, for the query IDF
    started = time.perf_counter()
    with index_writer(folder / "index", V, meta={"generator": vars_of(args)}, replace=True) as add:
        for start in range(0, args.docs, GEN_CHUNK):
            indices, counts = draw_rows(rng, p, doc_len[start : start + GEN_CHUNK])
            weights = quantise(rng.lognormal(0.0, 0.5, len(indices)))
            df += np.bincount(indices, minlength=V)
            add(_csr(indices, counts, weights, V), [f"d{i}" for i in range(start, start + len(counts))])
            done = start + len(counts)
            rate = done / (time.perf_counter() - started)
            harness.log(f"generated {done:,}/{args.docs:,} documents ({rate:,.0f}/s)")

    idf = np.log1p((args.docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    p_q = p * rng.lognormal(0.0, 0.5, V)
    p_q /= p_q.sum()
    q_indices, q_counts = draw_rows(rng, p_q, np.maximum(rng.poisson(20, args.queries), 1))
    queries = _csr(q_indices, q_counts, idf[q_indices], V)
    np.savez(folder / "queries.npz", data=queries.data, indices=queries.indices, indptr=queries.indptr)


def vars_of(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in ("docs", "queries", "zipf_a", "zipf_shift", "seed")}


def corpus_folder(args: argparse.Namespace) -> Path:
    """The cached corpus for these settings (`.cache/retrieval_bench/<tag>`), generated on first use."""
    tag = f"n{args.docs}-q{args.queries}-a{args.zipf_a}-b{args.zipf_shift}-s{args.seed}-u8"
    folder = args.cache_dir / tag
    if not (folder / "done").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        generate(folder, args)
        (folder / "done").touch()
    return folder


def load_corpus(folder: Path, num_queries: int, mmap: bool = True) -> tuple[sp.csr_matrix, list[str], sp.csr_matrix]:
    """(docs (num_docs, V) CSR, memory-mapped or read into memory, doc ids, the first num_queries queries
    (n, V) CSR)."""
    from src.retrieval.index import SparseIndex

    index = SparseIndex.load(folder / "index", verify=False, mmap=mmap)
    with np.load(folder / "queries.npz") as q:
        queries = sp.csr_matrix((q["data"], q["indices"], q["indptr"]), shape=(len(q["indptr"]) - 1, V))
    return index.matrix, index.doc_ids, queries[:num_queries]


def scipy_search(
    queries: sp.csr_matrix, docs: sp.csr_matrix, query_ids: list[str], doc_ids: list[str], k: int
) -> dict[str, dict[str, float]]:
    """The straightforward way: the whole (nq, nd) sparse score matrix, then a top-k per row, returned
    like `search` (query id -> {doc id: score}, best first). No self-id rule: the ids never collide here.
    """
    scores = (queries @ docs.T).tocsr()  # (nq, nd) sparse: every matching document of every query
    results = {}
    for row, qid in enumerate(query_ids):
        lo, hi = scores.indptr[row], scores.indptr[row + 1]
        vals, cols = scores.data[lo:hi], scores.indices[lo:hi]  # (matches,)
        if len(vals) > k:
            part = np.argpartition(-vals, k - 1)[:k]
            vals, cols = vals[part], cols[part]
        order = np.argsort(-vals, kind="stable")
        results[qid] = {doc_ids[j]: s for j, s in zip(cols[order].tolist(), vals[order].tolist(), strict=True) if s > 0}
    return results


TERM_NAMES = [str(t) for t in range(V)]  # BMP keys vectors by term strings


def bmp_vector(matrix: sp.csr_matrix, row: int, scale: float | None = None) -> dict[str, float]:
    """Row `row` of a CSR matrix as BMP's {term: weight}; scale: weights times it, as integers."""
    lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
    weights = matrix.data[lo:hi]
    weights = (np.rint(weights * scale).astype(np.int64) if scale else weights).tolist()
    return dict(zip(map(TERM_NAMES.__getitem__, matrix.indices[lo:hi].tolist()), weights, strict=True))


def bmp_index(docs: sp.csr_matrix, doc_ids: list[str], path: Path) -> None:
    """BMP's index of the same vectors: its documents take integer weights, so the corpus's multiples of
    1 / QUANT_STEPS go in as the integers 1..255 they are, through BMP's Python API, one document a call."""
    import bmp

    indexer = bmp.Indexer(str(path), BMP_BLOCK, False)
    for row, doc_id in enumerate(doc_ids):
        indexer.add_document(doc_id, bmp_vector(docs, row, QUANT_STEPS))
    indexer.finish()


def bmp_search(queries: sp.csr_matrix, query_ids: list[str], path: Path, k: int) -> dict[str, dict[str, float]]:
    """BMP's exact top-k (alpha = beta = 1: no block or query-term pruning that could change the answer),
    one query a call, as its Python API offers. BMP scales each query's weights to small integers itself,
    and its scores are in those units (only their order compares with ours)."""
    import bmp

    searcher = bmp.Searcher(str(path))
    vectors = [bmp_vector(queries, row) for row in range(queries.shape[0])]
    results = {}
    for qid, vector in zip(query_ids, vectors, strict=True):
        found, scores = searcher.search(vector, k, 1.0, 1.0)
        results[qid] = dict(zip(found, scores, strict=True))
    return results


def top_arrays(results: dict[str, dict[str, float]], rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first rows queries' results as (doc positions, scores) arrays, (rows, k) each, best first,
    padded with -1 / 0."""
    docs = np.full((rows, k), -1, dtype=np.int64)
    scores = np.zeros((rows, k), dtype=np.float32)
    for row in range(rows):
        hits = sorted(results[f"q{row}"].items(), key=lambda hit: -hit[1])
        docs[row, : len(hits)] = [int(d[1:]) for d, _ in hits]
        scores[row, : len(hits)] = [score for _, score in hits]
    return docs, scores


def run_worker(spec: dict) -> None:
    """One measurement in this process (spec: the run's settings, method, k, topk and out paths): writes its
    record to spec["out"] and the top-k of the checked queries to spec["topk"]."""
    from src.retrieval.engine import search  # imported by every method (torch comes with it), so peaks compare

    args = argparse.Namespace(**spec)
    args.cache_dir, args.topk = Path(args.cache_dir), Path(args.topk)
    args.bmp_path = Path(args.bmp_path) if args.bmp_path else None
    folder = corpus_folder(args)
    n = args.scipy_queries if args.method == "scipy" else args.queries
    docs, doc_ids, queries = load_corpus(folder, n, mmap=not args.in_memory)
    query_ids = [f"q{i}" for i in range(n)]
    if args.method == "bmp-index":  # the engine's indexing, timed from our memory-mapped index
        seconds, _ = harness.timed(lambda: bmp_index(docs, doc_ids, args.bmp_path))
        record = {"docs": len(doc_ids), "seconds": seconds, "docs_per_s": len(doc_ids) / seconds}
        record |= {"peak_mib": harness.proc_status_mib("VmHWM"), "bytes": args.bmp_path.stat().st_size}
        harness.write_result(Path(args.out), record)
        return
    loaded_mib = harness.proc_status_mib("VmRSS")  # imports, the mapped corpus's pages read so far, queries and ids
    if args.method == "scipy":
        seconds, results = harness.timed(lambda: scipy_search(queries, docs, query_ids, doc_ids, args.k))
    elif args.method == "bmp":
        seconds, results = harness.timed(lambda: bmp_search(queries, query_ids, args.bmp_path, args.k))
    else:
        kwargs = json.loads(args.search_kwargs)
        seconds, results = harness.timed(lambda: search(queries, docs, query_ids, doc_ids, k=args.k, **kwargs))
    top_docs, top_scores = top_arrays(results, min(args.check_queries, n), args.k)
    np.savez(args.topk, docs=top_docs, scores=top_scores)
    record = {
        "queries": n,
        "seconds": seconds,
        "qps": n / seconds,
        "peak_mib": harness.proc_status_mib("VmHWM"),
        "loaded_mib": loaded_mib,
        # At the end: private memory, and pages of the memory-mapped corpus, which the kernel can drop again
        "anon_mib_after": harness.proc_status_mib("RssAnon"),
        "file_mib_after": harness.proc_status_mib("RssFile"),
    }
    if args.method == "bmp":  # (untimed) is a disagreement BMP's query grid? Then ours on that grid agrees.
        checked = min(args.check_queries, n)
        gridded = search(bmp_query_grid(queries[:checked]), docs, query_ids[:checked], doc_ids, k=args.k)
        record["overlap_at_10_on_its_query_grid"] = shared_share(
            [list(gridded[q])[:10] for q in gridded], [list(results[q])[:10] for q in gridded]
        )
    harness.write_result(Path(args.out), record)


def bmp_query_grid(queries: sp.csr_matrix) -> sp.csr_matrix:
    """Queries (n, V) with each weight rounded up to BMP's grid, ceil(32 w / the query's largest weight)
    (found by probing bmp 0.2.8 with one-term documents): BMP scores exactly these weights."""
    out = queries.copy()
    for row in range(out.shape[0]):
        weights = out.data[out.indptr[row] : out.indptr[row + 1]]  # a view: floored in place
        weights[:] = np.ceil(weights * (32 / weights.max())) if len(weights) else weights
    return out


SETTINGS = ("docs", "queries", "scipy_queries", "check_queries", "zipf_a", "zipf_shift", "seed", "search_kwargs")


def measure(args: argparse.Namespace, method: str, k: int, topk: Path, bmp_path: Path | None = None) -> dict:
    """Runs one measurement in a fresh interpreter (`harness.spawn`) and returns its record."""
    spec = {name: getattr(args, name) for name in SETTINGS}
    spec |= {"in_memory": args.in_memory, "cache_dir": str(args.cache_dir), "method": method, "k": k}
    spec |= {"task": f"retrieval k={k}", "impl": method}  # how harness.spawn names a failed worker
    spec |= {"topk": str(topk), "bmp_path": str(bmp_path) if bmp_path else None}
    return harness.spawn(__file__, spec, topk.with_suffix(".json"))


def same_top_k(ours: Path, theirs: Path) -> bool:
    """Both methods return the same top-k scores (documents may differ only among tied scores)."""
    a, b = np.load(ours), np.load(theirs)
    if not np.allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6):
        return False
    strict = a["scores"] > a["scores"][:, -1:] * (1 + 1e-5)  # clear of the k-th score's ties
    return all(set(a["docs"][i][strict[i]]) == set(b["docs"][i][strict[i]]) for i in range(len(strict)))


def shared_share(ours: list, theirs: list) -> float:
    """Mean share of each of our lists (of documents) that the matching list of theirs also holds."""
    return float(np.mean([len(set(a) & set(b)) / max(1, len(a)) for a, b in zip(ours, theirs, strict=True)]))


def overlap(ours: Path, theirs: Path, depth: int) -> float:
    """shared_share of our top-depth documents in the other method's top-depth, over the checked queries (for
    an engine whose scores are in other units); -1 pads short lists."""
    a, b = np.load(ours)["docs"][:, :depth], np.load(theirs)["docs"][:, :depth]
    return shared_share([x[x >= 0].tolist() for x in a], [y[y >= 0].tolist() for y in b])


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("numpy", "scipy", "torch", "bmp"):
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def default_output(docs: int) -> Path:
    """results_retrieval.json for the 1M default, results_retrieval_5m.json for 5.4M, ..._200k for 200,000."""
    if docs == 1_000_000:
        return ROOT / "benchmarks" / "results_retrieval.json"
    size = f"{round(docs / 1e6)}m" if docs >= 1_000_000 else f"{docs // 1000}k"
    return ROOT / "benchmarks" / f"results_retrieval_{size}.json"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000, help="queries for our search and the engine")
    parser.add_argument(
        "--scipy-queries",
        type=int,
        default=None,
        help="queries for the scipy baseline, whose memory grows with them (default: all up to 2M documents, then 50)",
    )
    parser.add_argument("--check-queries", type=int, default=50, help="queries whose top-k the methods must agree on")
    parser.add_argument("--k", type=int, nargs="+", default=[1000, 10])
    parser.add_argument("--zipf-a", type=float, default=1.0)
    parser.add_argument("--zipf-shift", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help="default: all up to 2M documents; beyond, ours and scipy"
    )
    parser.add_argument("--search-kwargs", default="{}", help="JSON of extra keyword arguments for search")
    parser.add_argument("--in-memory", action="store_true", help="read the corpus into memory, not memory-mapped")
    parser.add_argument("--output", type=Path, help="default: results_retrieval.json at 1M, _5m.json at 5.4M, ...")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "retrieval_bench", help="generated corpora")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON spec of one measurement (`measure`)
    args = parser.parse_args()
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    # Beyond 2M documents on a machine like ours: BMP's indexer would need ~8.3 GiB per 1M documents and scipy's
    # product ~40 MiB per query at 5.4M (BENCHMARKS.md), so the defaults leave BMP out and cap scipy's queries.
    large = args.docs > LARGE_CORPUS
    args.methods = args.methods or (["ours", "scipy"] if large else list(METHODS))
    args.scipy_queries = min(args.scipy_queries or (50 if large else args.queries), args.queries)
    args.check_queries = min(args.check_queries, args.scipy_queries, args.queries)
    if "bmp" in args.methods and importlib.util.find_spec("bmp") is None:
        parser.error("--methods bmp needs the engine: pip install bmp (or leave bmp out of --methods)")
    output = args.output or default_output(args.docs)

    folder = corpus_folder(args)  # generate (or find in the cache) once, before any timing
    docs, _, queries = load_corpus(folder, args.queries)
    p_d = np.bincount(docs.indices, minlength=V) / docs.shape[0]  # (V,)
    p_q = np.bincount(queries.indices, minlength=V) / queries.shape[0]  # (V,)
    corpus = {
        "docs": docs.shape[0],
        "vocab": V,
        "doc_nnz": int(docs.nnz),
        "doc_len": docs.nnz / docs.shape[0],
        "queries": queries.shape[0],
        "query_nnz": int(queries.nnz),
        "q_len": queries.nnz / queries.shape[0],
        "flops": float(p_q @ p_d),
        "zipf_a": args.zipf_a,
        "zipf_shift": args.zipf_shift,
        "seed": args.seed,
        "weights": f"multiples of 1/{QUANT_STEPS} in [1, 255]/{QUANT_STEPS} (8-bit)",
        "index_bytes": folder_bytes(folder / "index"),  # our index folder: CSR arrays, ids, header
    }
    del docs, queries, p_d, p_q

    load_before = os.getloadavg()  # 1, 5 and 15 minute load averages
    runs, engine = [], {}
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:  # beside the corpus: BMP's index is as large
        bmp_path = Path(tmp) / "index.bmp"
        if "bmp" in args.methods:
            engine["bmp_index"] = measure(args, "bmp-index", 0, Path(tmp) / "bmp-index.npz", bmp_path)
            harness.log(f"bmp index: {engine['bmp_index']}")
        for k in args.k:
            outs = {m: Path(tmp) / f"{m}-{k}.npz" for m in args.methods}
            row = {"k": k}
            for method in args.methods:
                row[method] = measure(args, method, k, outs[method], bmp_path if method == "bmp" else None)
                harness.log(f"k={k} {method}: {row[method]}")
            ok = {m for m in args.methods if "error" not in row[m]}
            if {"ours", "scipy"} <= ok:
                row["same_top_k"] = same_top_k(outs["ours"], outs["scipy"])
            if {"ours", "bmp"} <= ok:
                row["bmp"]["overlap_at_10"] = overlap(outs["ours"], outs["bmp"], 10)
                row["bmp"]["overlap_at_k"] = overlap(outs["ours"], outs["bmp"], k)
            runs.append(row)

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "what": (
            "Exact top-k by dot product over a synthetic corpus (see corpus), each method in a fresh subprocess: "
            "seconds and queries/s of the whole timed call; peak_mib = VmHWM (peak resident set, mapped corpus "
            "pages included); loaded_mib = VmRSS just before it; anon/file_mib_after = RssAnon / RssFile at the "
            "end. Ours reads the corpus memory-mapped from its index folder (index_bytes on disk)."
        ),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": harness.cpu_model(),
            "platform": platform.platform(),
            "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "load_average_before": load_before,  # other work on a shared machine shows up here
            "load_average_after": os.getloadavg(),
        },
        "versions": versions(),
        "corpus": corpus,
        "search_kwargs": json.loads(args.search_kwargs),
        "corpus_in": "memory" if args.in_memory else "memory-mapped index folder",
        "engine": engine,
        "runs": runs,
    }
    harness.write_result(output, result)
    print(table(result))
    print(f"results: {output}")


METHOD_NAMES = {"ours": "`search`", "scipy": "scipy `Q @ D.T` + top-k", "bmp": "BMP (1 thread, exact)"}


def table(result: dict) -> str:
    """The results as a markdown table, with ratios to ours per k."""
    c = result["corpus"]
    lines = [
        f"{c['docs']:,} docs ({c['doc_nnz']:,} non-zeros, Doc_Len {c['doc_len']:.1f}, index "
        f"{c['index_bytes'] / 2**30:.2f} GiB on disk), V = {c['vocab']:,}, {c['queries']:,} queries "
        f"(Q_Len {c['q_len']:.1f}), FLOPS {c['flops']:.2f}; {result['machine']['cpu_count']} CPUs, load average "
        f"{result['machine']['load_average_before'][0]:.2f} before; "
        f"search kwargs {result['search_kwargs'] or 'default'}; corpus {result['corpus_in']}",
        "",
        "| k | method | queries | seconds | queries/s | peak MiB | loaded MiB | peak - loaded | agrees with ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for run in result["runs"]:
        for method, name in METHOD_NAMES.items():
            r = run.get(method)
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {run['k']} | {name} | failed: {r['error'][-200:]!r} | | | | | | |")
                continue
            agree = {True: "same top-k", False: "NO"}.get(run.get("same_top_k"), "") if method == "scipy" else ""
            if "overlap_at_10" in r:
                agree = (
                    f"top-10 {r['overlap_at_10']:.1%}, top-{run['k']} {r['overlap_at_k']:.1%}; on its "
                    f"query grid top-10 {r['overlap_at_10_on_its_query_grid']:.1%}"
                )
            lines.append(
                f"| {run['k']} | {name} | {r['queries']:,} | {r['seconds']:.1f} | {r['qps']:.1f} | "
                f"{r['peak_mib']:,.0f} | {r['loaded_mib']:,.0f} | {r['peak_mib'] - r['loaded_mib']:,.0f} | {agree} |"
            )
        ours = run.get("ours", {})
        for method in ("scipy", "bmp"):
            theirs = run.get(method, {})
            if "qps" in ours and "qps" in theirs:
                ratios.append(f"k={run['k']}: {ours['qps'] / theirs['qps']:.2f}x {method}'s queries/s")
    if ratios:
        lines += ["", "`search` vs the others: " + "; ".join(ratios)]
    built = result["engine"].get("bmp_index")
    if built and "error" not in built:
        lines.append(
            f"BMP index: {built['seconds']:.0f} s ({built['docs_per_s']:,.0f} docs/s), "
            f"peak {built['peak_mib']:,.0f} MiB, {built['bytes'] / 2**30:.2f} GiB on disk"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
