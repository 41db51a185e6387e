"""The texts of any corpus file, streamed: what IDF is computed over (`python -m src.idf`, `python -m src.export`)."""

from collections.abc import Iterable
from pathlib import Path

from src.data.beir import load_corpus
from src.data.msmarco import iter_id_text_tsv


def corpus_texts(path: Path) -> Iterable[str]:
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus (give a BEIR folder, a corpus.jsonl or an id<TAB>text file)")
    if path.name.endswith(".jsonl"):
        return load_corpus(path).values()
    return (text for _, _, text in iter_id_text_tsv(path))
