"""A searchable index folder: the sparse index of a corpus with the tokenizer and the IDF that turn typed queries
into vectors. `build_index(cfg)` writes one (`python -m src.index`); `IndexSearcher` queries it
(`python -m src.search`).

    <output_dir>/index/   index.json + CSR arrays + doc ids (src/retrieval/index.py), idf.json, tokenizer/
"""

import logging
from pathlib import Path

import scipy.sparse as sp

from src.common import distributed
from src.data.beir import load_beir, load_corpus, subsample
from src.model.encoders import IdfQueryEncoder, compute_idf, load_idf, load_tokenizer, save_idf
from src.model.formats import load_retriever
from src.retrieval.engine import encode_queries, search
from src.retrieval.evaluation import EvalSettings, encode_corpus, eval_device
from src.retrieval.index import SparseIndex, prune

log = logging.getLogger(__name__)


class IndexSearcher:
    def __init__(self, folder: Path):
        folder = Path(folder)
        folder = folder / "index" if (folder / "index" / "index.json").is_file() else folder
        self.index = SparseIndex.load(folder, mmap=True)  # a corpus of millions of documents stays in its files
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


def build_index(cfg) -> Path | None:
    """Encodes one dataset's corpus with a model into `<output_dir>/index`, with the tokenizer and the
    IDF that `python -m src.search` needs to turn typed queries into vectors. (None on ranks other than 0.)"""
    distributed.init_from_env()  # under torchrun the ranks share the encoding; rank 0 writes the index
    retriever = load_retriever(cfg.model, cfg.activation, cfg.prune_ratio, cfg.head_precision)
    retriever.doc_encoder.to(eval_device(cfg.device))
    dataset = subsample(load_beir(cfg.paths.data_dir, cfg.dataset, cfg.split, cfg.download), None, cfg.max_docs)
    settings = EvalSettings(
        max_length=cfg.max_length,
        tokens_per_batch=cfg.tokens_per_batch,
        bf16=cfg.bf16,
        cache_dir=Path(cfg.paths.cache_dir) if cfg.cache else None,
    )
    encoded = encode_corpus(retriever.doc_encoder, retriever.tokenizer, dataset, settings)
    if distributed.rank() != 0:
        return None
    meta = {
        **encoded.meta,
        "model": retriever.source,
        "prune_ratio": retriever.prune_ratio,
        "corpus": str(Path(cfg.paths.data_dir) / cfg.dataset / "corpus.jsonl"),
    }
    folder = SparseIndex(prune(encoded.matrix, retriever.prune_ratio), encoded.doc_ids, meta).save(
        Path(cfg.paths.output_dir) / "index"
    )
    if cfg.idf is not None:
        idf = load_idf(Path(cfg.idf), retriever.tokenizer)
    else:
        idf = retriever.idf if retriever.idf is not None else compute_idf(dataset.corpus.values(), retriever.tokenizer)
    save_idf(idf, retriever.tokenizer, folder / "idf.json")
    retriever.tokenizer.save_pretrained(folder / "tokenizer")
    log.info("index of %d documents, %d non-zeros: %s", encoded.matrix.shape[0], encoded.matrix.nnz, folder)
    print(f'index: {folder}\nquery it: python -m src.search {folder} "your query"', flush=True)
    return folder
