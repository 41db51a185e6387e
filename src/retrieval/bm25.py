"""BM25 over a BEIR corpus: the reference retriever, and the one place BM25 is built (mining uses it too).

`BEIR_SETTINGS` follow BEIR's published BM25 (Elasticsearch with the `english` analyzer) as closely as bm25s
allows, picked up front from standard settings, not tuned on the test sets:

- Lucene's BM25 (`method="lucene"`) with Elasticsearch's defaults k1=1.2, b=0.75;
- lowercased word tokens of two or more characters (bm25s's scikit-learn-style default pattern);
- Lucene's 33 English stopwords (bm25s's `"en"` list is exactly Lucene's `ENGLISH_STOP_WORDS_SET`);
- the original Porter stemmer, which is what Lucene's EnglishAnalyzer applies (`PorterStemFilter`);
- title and text as one field (BEIR's Elasticsearch searched them as two fields with `multi_match`).

Measured NDCG@10 on the test splits: scifact 0.677 (BEIR's BM25: 0.665), nfcorpus 0.318 (BEIR's BM25: 0.325).
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import Stemmer

from src.data.beir import BeirDataset

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every empty query at INFO


@dataclass(frozen=True)
class BM25Settings:
    k1: float = 1.2  # Elasticsearch / Lucene default, as BEIR ran it
    b: float = 0.75
    method: str = "lucene"  # Lucene's IDF and length normalisation
    stopwords: str = "en"  # Lucene's English stop set
    stemmer: str | None = "porter"  # a PyStemmer algorithm; Lucene's EnglishAnalyzer uses the original Porter


BEIR_SETTINGS = BM25Settings()


def analyze(texts: Sequence[str], settings: BM25Settings, progress: bool = False) -> list[list[str]]:
    stemmer = Stemmer.Stemmer(settings.stemmer) if settings.stemmer else None
    # Strings, not ids: bm25s maps query strings onto the index vocabulary and drops unknown terms.
    return bm25s.tokenize(
        list(texts), stopwords=settings.stopwords, stemmer=stemmer, return_ids=False, show_progress=progress
    )


def build_index(texts: Sequence[str], settings: BM25Settings = BEIR_SETTINGS, progress: bool = False) -> bm25s.BM25:
    """A BM25 index over `texts`; row i of the index is texts[i]."""
    retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
    retriever.index(analyze(texts, settings, progress), show_progress=progress)
    return retriever


def retrieve(
    retriever: bm25s.BM25,
    queries: Sequence[str],
    k: int,
    settings: BM25Settings = BEIR_SETTINGS,
    progress: bool = False,
) -> list[list[tuple[int, float]]]:
    """Per query, up to k (document row, score) pairs with positive scores, best first.

    `settings` must be those the index was built with (queries are analysed like documents). bm25s pads a
    query's top-k with arbitrary zero-score rows when fewer than k documents share a term with it; those
    carry no evidence, so they are dropped.
    """
    k = min(k, retriever.scores["num_docs"])
    if not queries or k <= 0:
        return [[] for _ in queries]
    rows, scores = retriever.retrieve(analyze(queries, settings, progress), k=k, show_progress=progress)
    return [
        [(int(i), float(s)) for i, s in zip(row, row_scores, strict=True) if s > 0]
        for row, row_scores in zip(rows, scores, strict=True)
    ]


def bm25_search(dataset: BeirDataset, k: int = 1000, progress: bool = True) -> dict[str, dict[str, float]]:
    """query id -> {doc id: score}, top-k by BM25 over the whole corpus, BEIR-style settings (see the module).

    Every judged query gets an entry (empty when none of its terms is in the corpus). A document whose id
    equals the query id is never returned (BEIR's rule for ArguAna and Quora); one extra hit is fetched so
    that excluding it still leaves k.
    """
    doc_ids = dataset.doc_ids
    query_ids = list(dataset.queries)
    retriever = build_index([dataset.corpus[d] for d in doc_ids], BEIR_SETTINGS, progress)
    hits = retrieve(retriever, [dataset.queries[q] for q in query_ids], k + 1, BEIR_SETTINGS, progress)
    return {
        qid: dict([(doc_ids[i], s) for i, s in ranked if doc_ids[i] != qid][:k])
        for qid, ranked in zip(query_ids, hits, strict=True)
    }
