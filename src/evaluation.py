"""BEIR evaluation of an inference-free sparse retriever: exact retrieval over the whole corpus."""

import logging
import time

from transformers import PreTrainedTokenizerBase

from src.data.beir import BeirDataset
from src.encoders import DocEncoder, IdfQueryEncoder
from src.metrics import ranking_metrics
from src.retrieval import efficiency, encode_documents, encode_queries, search

log = logging.getLogger(__name__)


def evaluate_inference_free(
    doc_encoder: DocEncoder,
    query_encoder: IdfQueryEncoder,
    tokenizer: PreTrainedTokenizerBase,
    dataset: BeirDataset,
    max_length: int = 512,
    tokens_per_batch: int = 8192,
    top_k: int = 1000,
    progress: bool = True,
) -> dict[str, float | int]:
    """The `eval.<dataset>` block of results.json: ranking metrics, efficiency, counts."""
    start = time.perf_counter()
    doc_ids = dataset.doc_ids
    docs = encode_documents(
        doc_encoder, tokenizer, [dataset.corpus[d] for d in doc_ids], max_length, tokens_per_batch, progress
    )
    query_ids = list(dataset.queries)
    queries = encode_queries(query_encoder, tokenizer, [dataset.queries[q] for q in query_ids])
    results = search(queries, docs, query_ids, doc_ids, k=top_k)
    metrics = {
        **ranking_metrics(dataset.qrels, results),
        **efficiency(queries, docs),
        "num_queries": len(query_ids),
        "num_docs": len(doc_ids),
    }
    log.info("%s: %s (%.0f s)", dataset.name, metrics, time.perf_counter() - start)
    return metrics
