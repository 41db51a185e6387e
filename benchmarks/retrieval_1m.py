"""Exact top-k sparse retrieval over a synthetic 1M-document corpus: `src.retrieval.engine.search` against a
straightforward scipy product, queries per second and peak memory of each.

Run: `.venv/bin/python benchmarks/retrieval_1m.py` (or `make bench-retrieval`); `--help` lists the knobs.

Synthetic data (fixed seed, cached under `.cache/retrieval_bench/` so later runs skip generation):

* Vocabulary of V = 30,522 ids (BERT's). Term popularity is Zipf-Mandelbrot over ranks,
  p(r) ~ (r + b)^-a with a = 1 and shift b = 40, the ranks mapped to ids by a fixed random permutation.
  The shift keeps the head from reaching every document: with b = 40 the most common term is in ~30%
  of documents and FLOPS (sum_j p_q(j) p_d(j), DESIGN.md section 1) comes out near 1, the value our
  default `make train` run measures on scifact (0.94 at Doc_Len 95, Q_Len 20). Pure Zipf (b = 0) would
  put the top terms in every document (FLOPS ~4.5); pass `--zipf-shift` to try other corpora.
* Documents: length ~ Poisson(100) (at least 1) distinct terms, drawn from p without replacement
  (sequentially: draws with replacement, keeping each term's first occurrence, until the length is
  reached). Weights log-normal(0, 0.5) as float32: positive, mostly 0.4 to 2.7, like SPLADE's log1 output.
* Queries, as our inference-free queries: length ~ Poisson(20) (at least 1) distinct terms, drawn the same
  way from a query distribution close to the documents' one, p_q(j) ~ p(j) * lognormal(0, 0.5) noise,
  each weighted by the BM25 IDF of the generated corpus, log(1 + (N - df + 0.5) / (df + 0.5)).
* Query ids `q<i>` and document ids `d<i>` never collide, so self-id exclusion removes nothing here.

Each measurement runs in its own subprocess, so peak memory (VmHWM from /proc/self/status: the process's
peak resident set) is the method's own. "Loaded" is the resident set just before the timed call: imports
(torch comes with `src.retrieval.engine`; both methods import it), corpus, queries and ids. The timed call is the
whole `search` for ours; for scipy, `Q @ D.T` over the whole corpus for all its queries at once, then a
top-k per row and the same query id -> {doc id: score} dicts. Its sparse score matrix holds about
nq x nd x (1 - e^-FLOPS) entries, 8 bytes each plus the product's working copies: memory grows with the
queries, so `--scipy-queries` caps them (default: all of them) and the table compares per-query rates.
Both methods' top-k scores are checked against each other on the first `--check-queries` queries.
Results go to `benchmarks/results_retrieval.json` (`--output`) and a markdown table to stdout.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
V = 30_522


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


def generate(
    num_docs: int, num_queries: int, zipf_a: float, zipf_shift: float, seed: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(docs (num_docs, V), queries (num_queries, V)) CSR float32 as the module docstring describes."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(V)  # rank -> term id
    p = np.empty(V)
    p[perm] = zipf_probs(V, zipf_a, zipf_shift)  # (V,) by term id
    doc_len = np.maximum(rng.poisson(100, num_docs), 1)
    indices, counts = draw_rows(rng, p, doc_len)
    weights = rng.lognormal(0.0, 0.5, len(indices)).astype(np.float32)
    docs = _csr(indices, counts, weights, V)

    df = np.bincount(indices, minlength=V)  # (V,)
    idf = np.log1p((num_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
    p_q = p * rng.lognormal(0.0, 0.5, V)
    p_q /= p_q.sum()
    q_indices, q_counts = draw_rows(rng, p_q, np.maximum(rng.poisson(20, num_queries), 1))
    queries = _csr(q_indices, q_counts, idf[q_indices], V)
    return docs, queries


def load_or_generate(args: argparse.Namespace) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The corpus and queries for these settings, from the cache when generated before."""
    tag = f"n{args.docs}-q{args.queries}-a{args.zipf_a}-b{args.zipf_shift}-s{args.seed}"
    folder = ROOT / ".cache" / "retrieval_bench" / tag
    names = ("data", "indices", "indptr")
    if not (folder / "done").is_file():
        docs, queries = generate(args.docs, args.queries, args.zipf_a, args.zipf_shift, args.seed)
        folder.mkdir(parents=True, exist_ok=True)
        for prefix, matrix in (("doc", docs), ("query", queries)):
            for name in names:
                np.save(folder / f"{prefix}_{name}.npy", getattr(matrix, name))
        (folder / "done").touch()
        return docs, queries
    loaded = []
    for prefix, rows in (("doc", args.docs), ("query", args.queries)):
        arrays = [np.load(folder / f"{prefix}_{name}.npy") for name in names]
        loaded.append(sp.csr_matrix(tuple(arrays), shape=(rows, V)))
    return loaded[0], loaded[1]


def mem_mib(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


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


def run_child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints a JSON line and saves the top-k of the checked queries."""
    sys.path.insert(0, str(ROOT))  # run as a script, benchmarks/ is on the path, the project root is not
    from src.retrieval.engine import search  # imported by both methods (torch comes with it), so peaks compare

    docs, queries = load_or_generate(args)
    n = args.scipy_queries if args.child == "scipy" else args.queries
    queries = queries[:n]
    doc_ids = [f"d{i}" for i in range(docs.shape[0])]
    query_ids = [f"q{i}" for i in range(n)]
    loaded_mib = mem_mib("VmRSS")  # imports, corpus, queries and ids: what the search starts from
    start = time.perf_counter()
    if args.child == "scipy":
        results = scipy_search(queries, docs, query_ids, doc_ids, args.k)
    else:
        results = search(queries, docs, query_ids, doc_ids, k=args.k, **json.loads(args.search_kwargs))
    seconds = time.perf_counter() - start
    peak_mib = mem_mib("VmHWM")
    top_docs, top_scores = top_arrays(results, min(args.check_queries, n), args.k)
    np.savez(args.out, docs=top_docs, scores=top_scores)
    record = {"queries": n, "seconds": seconds, "qps": n / seconds, "peak_mib": peak_mib, "loaded_mib": loaded_mib}
    print(json.dumps(record), flush=True)


def measure(args: argparse.Namespace, method: str, k: int, out: Path) -> dict:
    """Runs one measurement in a fresh subprocess and returns its record."""
    cmd = [sys.executable, __file__, "--child", method, "--k", str(k), "--out", str(out)]
    for name in ("docs", "queries", "scipy_queries", "check_queries", "zipf_a", "zipf_shift", "seed"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    cmd += ["--search-kwargs", args.search_kwargs]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_top_k(ours: Path, theirs: Path) -> bool:
    """Both methods return the same top-k scores (documents may differ only among tied scores)."""
    a, b = np.load(ours), np.load(theirs)
    if not np.allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-6):
        return False
    strict = a["scores"] > a["scores"][:, -1:] * (1 + 1e-5)  # clear of the k-th score's ties
    return all(set(a["docs"][i][strict[i]]) == set(b["docs"][i][strict[i]]) for i in range(len(strict)))


def versions() -> dict[str, str]:
    import scipy
    import torch

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "torch": torch.__version__,
    }


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=1_000, help="queries for our search")
    parser.add_argument(
        "--scipy-queries",
        type=int,
        default=None,
        help="queries for the scipy baseline, whose memory grows with them (default: all)",
    )
    parser.add_argument("--check-queries", type=int, default=50, help="queries whose top-k both methods must agree on")
    parser.add_argument("--k", type=int, nargs="+", default=[1000, 10])
    parser.add_argument("--zipf-a", type=float, default=1.0)
    parser.add_argument("--zipf-shift", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["ours", "scipy"], choices=["ours", "scipy"])
    parser.add_argument("--search-kwargs", default="{}", help="JSON of extra keyword arguments for search")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results_retrieval.json")
    parser.add_argument("--child", choices=["ours", "scipy"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.scipy_queries = min(args.scipy_queries or args.queries, args.queries)
    args.check_queries = min(args.check_queries, args.scipy_queries, args.queries)
    if args.child:
        args.k = args.k[0]
        run_child(args)
        return

    docs, queries = load_or_generate(args)  # generate (or check the cache) once, before any timing
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
    }
    del docs, queries, p_d, p_q

    load_before = os.getloadavg()  # 1, 5 and 15 minute load averages
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.k:
            outs = {m: Path(tmp) / f"{m}-{k}.npz" for m in args.methods}
            row = {"k": k}
            for method in args.methods:
                row[method] = measure(args, method, k, outs[method])
                print(f"k={k} {method}: {row[method]}", file=sys.stderr, flush=True)
            if all("error" not in row[m] for m in ("ours", "scipy") if m in row) and len(args.methods) == 2:
                row["same_top_k"] = same_top_k(outs["ours"], outs["scipy"])
            runs.append(row)

    result = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "load_average_before": load_before,  # other work on a shared machine shows up here
            "load_average_after": os.getloadavg(),
        },
        "versions": versions(),
        "corpus": corpus,
        "search_kwargs": json.loads(args.search_kwargs),
        "runs": runs,
    }
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def table(result: dict) -> str:
    """The results as a markdown table, with ours / scipy ratios per k."""
    c = result["corpus"]
    lines = [
        f"{c['docs']:,} docs ({c['doc_nnz']:,} non-zeros, Doc_Len {c['doc_len']:.1f}), V = {c['vocab']:,}, "
        f"{c['queries']:,} queries (Q_Len {c['q_len']:.1f}), FLOPS {c['flops']:.2f}; "
        f"{result['machine']['cpu_count']} CPUs, load average {result['machine']['load_average_before'][0]:.2f} "
        f"before; search kwargs {result['search_kwargs'] or 'default'}",
        "",
        "| k | method | queries | seconds | queries/s | peak MiB | loaded MiB | peak - loaded | top-k agree |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for run in result["runs"]:
        for method in ("ours", "scipy"):
            r = run.get(method)
            if r is None:
                continue
            name = "`search`" if method == "ours" else "scipy `Q @ D.T` + top-k"
            if "error" in r:
                lines.append(f"| {run['k']} | {name} | failed: {r['error'][-200:]!r} | | | | | | |")
                continue
            agree = {True: "yes", False: "NO"}.get(run.get("same_top_k"), "")
            lines.append(
                f"| {run['k']} | {name} | {r['queries']:,} | {r['seconds']:.1f} | {r['qps']:.1f} | "
                f"{r['peak_mib']:,.0f} | {r['loaded_mib']:,.0f} | {r['peak_mib'] - r['loaded_mib']:,.0f} | {agree} |"
            )
        ours, theirs = run.get("ours", {}), run.get("scipy", {})
        if "qps" in ours and "qps" in theirs:
            extra = (ours["peak_mib"] - ours["loaded_mib"]) / max(theirs["peak_mib"] - theirs["loaded_mib"], 1)
            ratios.append(
                f"k={run['k']}: {ours['qps'] / theirs['qps']:.2f}x the queries/s, {extra:.2f}x the memory above loaded"
            )
    if ratios:
        lines += ["", "`search` vs scipy: " + "; ".join(ratios)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
