"""BM25 as a teacher: Lucene BM25 of each (query, document) pair with the statistics of the source's corpus."""

import numpy as np
import torch

from src.retrieval import bm25


class BM25Teacher:
    def __init__(self, corpus: list[str], k1: float = 1.2, b: float = 0.75):
        self.settings = bm25.BM25Settings(k1=k1, b=b)
        self.index = bm25.build_index(corpus, self.settings)
        self.row = {text: i for i, text in enumerate(corpus)}  # identical texts score identically

    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        scores = np.zeros((len(queries), len(docs[0])), dtype=np.float32)  # (N, G)
        for i, (terms, group) in enumerate(zip(bm25.analyze(queries, self.settings), docs, strict=True)):
            known = [t for t in terms if t in self.index.vocab_dict]
            if not known:  # no query term occurs in the corpus: every document scores 0
                continue
            all_docs = self.index.get_scores(known)  # (num_docs,)
            try:
                scores[i] = [all_docs[self.row[text]] for text in group]
            except KeyError:
                raise ValueError("BM25 teacher: a group document is not in the corpus it was built on") from None
        return torch.from_numpy(scores)

    def score_corpus(self, queries: list[str]) -> torch.Tensor:
        """(Q, D) scores against every document of the corpus it was built on, in that order."""
        scores = np.zeros((len(queries), self.index.scores["num_docs"]), dtype=np.float32)  # (Q, D)
        for i, terms in enumerate(bm25.analyze(queries, self.settings)):
            known = [t for t in terms if t in self.index.vocab_dict]
            if known:
                scores[i] = self.index.get_scores(known)
        return torch.from_numpy(scores)
