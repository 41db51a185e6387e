"""Retrieval: the exact sparse engine, the on-disk index, BM25, ranking metrics and BEIR evaluation."""
