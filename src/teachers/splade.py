"""The Siamese SPLADE teacher: queries and documents both through one MLM encoder, s = w(q) . w(d)."""

import torch

from src.model.encoders import DocEncoder, load_tokenizer


class SpladeTeacher:
    def __init__(
        self,
        name_or_path: str | None = None,
        activation: str = "log1",  # SPLADE's own activation, independent of the student's
        max_length: int = 256,
        query_max_length: int = 64,
    ):
        self.encoder = DocEncoder.from_pretrained(name_or_path, activation).eval()
        self.tokenizer = load_tokenizer(name_or_path)
        self.max_length, self.query_max_length = max_length, query_max_length

    @torch.inference_mode()
    def score(self, queries: list[str], docs: list[list[str]]) -> torch.Tensor:
        """Only the query's non-zero terms matter to the dot product, so documents are projected
        onto those columns alone: exact, and it touches tens of columns instead of V."""
        n, g = len(docs), len(docs[0])
        tok = self.tokenizer
        q = tok(queries, padding=True, truncation=True, max_length=self.query_max_length, return_tensors="pt")
        q_vecs = self.encoder(q["input_ids"], q["attention_mask"])  # (N, V)
        flat = [t for group in docs for t in group]
        d = tok(flat, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        scores = torch.zeros(n, g)
        for i in range(n):
            terms = q_vecs[i].nonzero().squeeze(-1)  # (T,)
            rows = slice(i * g, (i + 1) * g)
            d_terms = self.encoder.encode_terms(d["input_ids"][rows], d["attention_mask"][rows], terms)  # (G, T)
            scores[i] = d_terms @ q_vecs[i, terms]
        return scores
