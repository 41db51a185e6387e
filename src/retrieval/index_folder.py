"""Query a sparse index from the terminal: `python -m src.search DIR "query"` (no query: read lines from stdin).

Shows the top documents and, for each, the matching terms with query weight x document weight.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from src.data.beir import load_corpus
from src.model.encoders import IdfQueryEncoder, load_idf, load_tokenizer
from src.index import SparseIndex
from src.retrieval.engine import encode_queries, search


class IndexSearcher:
    def __init__(self, folder: Path):
        folder = Path(folder)
        folder = folder / "index" if (folder / "index" / "index.json").is_file() else folder
        self.index = SparseIndex.load(folder)
        self.tokenizer = load_tokenizer(str(folder / "tokenizer"))
        self.query_encoder = IdfQueryEncoder(
            load_idf(folder / "idf.json", self.tokenizer), self.tokenizer.all_special_ids
        )
        self.row_of = {d: i for i, d in enumerate(self.index.doc_ids)}
        corpus_path = Path(self.index.meta.get("corpus", ""))
        self.corpus = load_corpus(corpus_path) if corpus_path.is_file() else {}

    def encode(self, query: str) -> sp.csr_matrix:
        return encode_queries(self.query_encoder, self.tokenizer, [query])  # (1, V)

    def explain(self, query: str, top_k: int = 10) -> list[dict]:
        """Top documents with their score and per-term contributions (query weight x document weight)."""
        return self._explain(self.encode(query), top_k)

    def _explain(self, q: sp.csr_matrix, top_k: int) -> list[dict]:
        hits = search(q, self.index.matrix, ["query"], self.index.doc_ids, k=top_k)["query"]
        q_terms = dict(zip(q.indices.tolist(), q.data.tolist(), strict=True))
        explained = []
        for doc_id, score in sorted(hits.items(), key=lambda kv: -kv[1]):
            row = self.index.matrix[self.row_of[doc_id]]
            terms = [
                (self.tokenizer.convert_ids_to_tokens(int(t)), q_terms[t], float(w))
                for t, w in zip(row.indices, row.data, strict=True)
                if t in q_terms
            ]
            terms.sort(key=lambda x: -x[1] * x[2])
            explained.append({"doc_id": doc_id, "score": score, "terms": terms, "text": self.corpus.get(doc_id, "")})
        return explained

    def print_results(self, query: str, top_k: int) -> None:
        q = self.encode(query)
        tokens = self.tokenizer.convert_ids_to_tokens(q.indices.tolist())
        print(
            f"\nquery: {query!r} -> {q.nnz} terms: "
            + " ".join(f"{t}({w:.2f})" for t, w in sorted(zip(tokens, q.data, strict=True), key=lambda x: -x[1]))
        )
        for rank, hit in enumerate(self._explain(q, top_k), 1):
            print(f"{rank:>3}. {hit['doc_id']}  score {hit['score']:.3f}  {hit['text'][:100]}")
            print("     " + "  ".join(f"{t} {qw:.2f}x{dw:.2f}" for t, qw, dw in hit["terms"][:8]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a folder written by `python -m src.index` (or its index/)")
    parser.add_argument("query", nargs="*", help="the query; none: one query per line from stdin")
    parser.add_argument("-k", "--top-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = parser.parse_args(argv)
    searcher = IndexSearcher(args.index)
    queries = [" ".join(args.query)] if args.query else (line.strip() for line in sys.stdin)
    if not args.query and sys.stdin.isatty():
        print("type a query and press enter (Ctrl-D to quit)", file=sys.stderr)
    for query in queries:
        if not query:
            continue
        if args.json:
            print(json.dumps({"query": query, "hits": searcher.explain(query, args.top_k)}, default=np.float64))
        else:
            searcher.print_results(query, args.top_k)


if __name__ == "__main__":
    main()
