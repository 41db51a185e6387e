"""A source of training groups (a BEIR split, a triples file, MS MARCO's published data), before and after it is
read: what src/data/prepare.py builds a prepared set from and what each reader (src/data/msmarco.py) returns."""

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from src.data.groups import Candidate


@dataclass
class Source:
    name: str  # shard files are named after it
    candidates: list[Candidate]
    counts: dict[str, int]
    corpus: Sequence[str]  # texts for corpus statistics (BM25 teacher)
    idf_texts: Callable[[], Iterable[str]] | None = None  # the corpus for IDF when it is not `corpus`


@dataclass
class SourceSpec:
    """A source before it is read: its input files key the set, so a finished set is found without mining."""

    name: str
    inputs: list[Path]
    load: Callable[[], Source]
