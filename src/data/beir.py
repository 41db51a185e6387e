"""BEIR-layout datasets: <data_dir>/<name>/{corpus.jsonl, queries.jsonl, qrels/<split>.tsv}."""

import json
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
BEIR_DATASETS = [
    "msmarco",
    "trec-covid",
    "nfcorpus",
    "nq",
    "hotpotqa",
    "fiqa",
    "arguana",
    "webis-touche2020",
    "cqadupstack",
    "quora",
    "dbpedia-entity",
    "scidocs",
    "fever",
    "climate-fever",
    "scifact",
]


# Datasets without qrels/dev.tsv (scifact): a fixed, seeded fifth of the train queries is held out as the "dev" split
# and "train" is the rest, so defaults and sweep winners are chosen on judged queries no run trains on (DESIGN.md
# section 2). Fixed, not a config key: training, evaluation and every sweep must agree on which queries these are.
DEV_FRACTION = 0.2
DEV_SEED = 0


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


@dataclass
class BeirDataset:
    name: str
    corpus: dict[str, str]  # doc id -> "title text"
    queries: dict[str, str]  # query id -> text, only those judged in `qrels`
    qrels: dict[str, dict[str, int]]  # query id -> doc id -> relevance grade
    split: str
    doc_ids: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.doc_ids = list(self.corpus)


def dataset_dir(data_dir: str | Path, name: str, download: bool = False) -> Path:
    """The folder of dataset `name`, fetched with BEIR's downloader when missing and allowed."""
    path = Path(data_dir) / name
    if (path / "corpus.jsonl").is_file():
        return path
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if download and not offline and name in BEIR_DATASETS:
        from beir import util

        log.info("%s not found under %s; trying BEIR's downloader", name, data_dir)
        try:
            return Path(util.download_and_unzip(BEIR_URL.format(name=name), str(data_dir)))
        except Exception as err:  # any network failure means "offline" here
            log.warning("download of %s failed: %s", name, err)
    raise FileNotFoundError(
        f"dataset {name!r} not found: {path}/corpus.jsonl does not exist. Put the BEIR files "
        f"(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) there, or point DATA_DIR / paths.data_dir "
        f"at a folder that holds {name}/ (the shared copy lives in ../shared/data/beir)."
        + (" Not downloaded: HF_HUB_OFFLINE=1." if download and offline else "")
    )


# BEIR ids are strings, but some converted sets write integers: those are read as their digits, as qrels give them.
_ID = (str, int)
_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object"}


def _check_utf8(line: str, where: str) -> None:
    """Files are opened with errors="surrogateescape", so that a byte that is not UTF-8 is named here by its
    line, rather than raised by the decoder for whichever 8 KB block it happened to be reading."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(line[err.start]) - 0xDC00  # surrogateescape maps byte b to U+DC00 + b
        raise DataError(f"{where}: not valid UTF-8 (byte {byte:#04x} at column {err.start + 1})") from None


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "null")


def _read_jsonl(path: Path, fields: dict[str, tuple[type, ...]]) -> list[dict]:
    """The rows of a JSON-lines file; `fields`: the types each field may have (with NoneType: null or absent)."""
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line_no, line in enumerate(f, start=1):
            _check_utf8(line, f"{path}:{line_no}")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:  # besides bad syntax: integers past 4300 digits, deep nesting
                raise DataError(f"{path}:{line_no}: not valid JSON ({getattr(err, 'msg', err)})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {_json_type(row)}")
            missing = [k for k in fields if k not in row and type(None) not in fields[k]]
            if missing:
                raise DataError(f"{path}:{line_no}: missing field(s) {', '.join(missing)}")
            # exact types: a bool is not an id, and a null or an object must not reach the corpus as its repr
            wrong = [f"{k} is {_json_type(row.get(k))}" for k in fields if type(row.get(k)) not in fields[k]]
            if wrong:
                raise DataError(f"{path}:{line_no}: field(s) of the wrong type: {', '.join(wrong)}")
            rows.append(row)
    return rows


def load_corpus(path: Path) -> dict[str, str]:
    rows = _read_jsonl(path, {"_id": _ID, "text": (str,), "title": (str, type(None))})
    if not rows:
        raise DataError(f"{path}: the corpus is empty")
    return {str(r["_id"]): f"{r.get('title') or ''} {r['text']}".strip() for r in rows}


def load_queries(path: Path) -> dict[str, str]:
    return {str(r["_id"]): r["text"] for r in _read_jsonl(path, {"_id": _ID, "text": (str,)})}


def load_qrels(
    path: Path,
    queries: dict[str, str] | None = None,
    corpus: dict[str, str] | None = None,
    skipped: dict[str, int] | None = None,
) -> dict[str, dict[str, int]]:
    """query id -> doc id -> grade; reads BEIR's header line and CRLF line endings.

    Given `queries` and `corpus`, lines naming an unknown query or document (real BEIR sets have them: ArguAna's
    test qrels name 5 documents its corpus lacks) are handled in one of two ways, each with one warning naming the
    file, the count and the first ids:
    - evaluation (no `skipped`): kept, as BEIR and pytrec_eval keep them: a relevant document that is never
      retrieved still counts in Recall and the ideal DCG; a query without text retrieves nothing (`load_beir`).
    - training data (a `skipped` dict): dropped, the usual practice (a pair without its text teaches nothing),
      counted under "qrels_unknown_query" / "qrels_unknown_doc".
    """
    qrels: dict[str, dict[str, int]] = {}
    unknown: dict[str, list[str]] = {"qrels_unknown_query": [], "qrels_unknown_doc": []}
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as f:
        for line_no, line in enumerate(f, start=1):
            _check_utf8(line, f"{path}:{line_no}")
            parts = line.rstrip("\r\n").split("\t")
            if line_no == 1 and parts[0] == "query-id":
                continue
            if parts == [""]:
                continue
            if len(parts) != 3:
                raise DataError(f"{path}:{line_no}: expected 3 tab-separated fields, got {len(parts)}")
            try:
                grade = int(parts[2])
            except ValueError:
                raise DataError(f"{path}:{line_no}: score {parts[2]!r} is not an integer") from None
            qid, doc_id = parts[0], parts[1]
            problem = None
            if queries is not None and qid not in queries:
                problem = "qrels_unknown_query"
                unknown[problem].append(f"{qid!r} (line {line_no})")
            elif corpus is not None and doc_id not in corpus:
                problem = "qrels_unknown_doc"
                unknown[problem].append(f"{doc_id!r} (line {line_no})")
            if problem and skipped is not None:
                skipped[problem] = skipped.get(problem, 0) + 1
                continue
            qrels.setdefault(qid, {})[doc_id] = grade
    if skipped is None:  # evaluation: load_beir warns once about all judged queries without text, these included
        unknown.pop("qrels_unknown_query")
    for problem, ids in unknown.items():
        if ids:
            what = (
                "query ids not in queries.jsonl" if problem == "qrels_unknown_query" else "doc ids not in corpus.jsonl"
            )
            effect = "lines skipped" if skipped is not None else "kept as judged, never retrieved (as BEIR scores them)"
            log.warning("%s: %d lines name %s (first: %s); %s", path, len(ids), what, ", ".join(ids[:5]), effect)
    return qrels


def held_out_queries(query_ids: list[str]) -> set[str]:
    """The dev part of a train split that has no dev split of its own: DEV_FRACTION of its queries, seeded."""
    ordered = sorted(query_ids)
    random.Random(DEV_SEED).shuffle(ordered)
    return set(ordered[: round(DEV_FRACTION * len(ordered))])


def carves_dev_from_train(path: Path) -> bool:
    """True when the dataset at `path` has a train split and no dev split: then dev is held out of train."""
    return not (path / "qrels" / "dev.tsv").is_file() and (path / "qrels" / "train.tsv").is_file()


def carved_split(path: Path, split: str) -> bool:
    """True when `split` of the dataset at `path` is a part of its train split (see `held_out_queries`)."""
    return split in ("train", "dev") and carves_dev_from_train(path)


def qrels_file(path: Path, split: str) -> Path:
    """The qrels file that holds `split` of the dataset at `path` (train.tsv for a dev split held out of it)."""
    return path / "qrels" / f"{'train' if carved_split(path, split) else split}.tsv"


def has_split(data_dir: str | Path, name: str, split: str) -> bool:
    """Whether dataset `name` (on disk) has `split`: its qrels file, or dev held out of train."""
    return qrels_file(Path(data_dir) / name, split).is_file()


def load_beir(
    data_dir: str | Path, name: str, split: str, download: bool = False, skipped: dict[str, int] | None = None
) -> BeirDataset:
    """`skipped`: count and skip qrels lines with unknown ids instead of failing (see `load_qrels`).

    For a dataset without qrels/dev.tsv, split "dev" is the held-out part of qrels/train.tsv (`held_out_queries`)
    and split "train" the rest: no query is in both."""
    path = dataset_dir(data_dir, name, download)
    qrels_path = qrels_file(path, split)
    if not qrels_path.is_file():
        splits = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
        if "train" in splits and "dev" not in splits:
            splits.append("dev (held out of train)")
        raise FileNotFoundError(f"{qrels_path} does not exist; {name} has the splits: {', '.join(splits)}")
    corpus = load_corpus(path / "corpus.jsonl")
    queries = load_queries(path / "queries.jsonl")
    qrels = load_qrels(qrels_path, queries, corpus, skipped)
    if carved_split(path, split):
        dev = held_out_queries(list(qrels))
        qrels = {q: judged for q, judged in qrels.items() if (q in dev) == (split == "dev")}
        log.info(
            "%s has no qrels/dev.tsv: split %r is %d of its train queries (dev: %.0f%%, seed %d)",
            name, split, len(qrels), 100 * DEV_FRACTION, DEV_SEED,
        )  # fmt: skip
    textless = [q for q in qrels if not queries.get(q, "").strip()]
    if textless:  # pytrec_eval would score them 0 too: judged, with an empty run
        log.warning(
            "%s: %d judged queries have no text in %s (first: %s); kept, they retrieve nothing and score 0",
            qrels_path, len(textless), path / "queries.jsonl", ", ".join(textless[:5]),
        )  # fmt: skip
    return BeirDataset(name, corpus, {q: queries.get(q, "") for q in qrels}, qrels, split)


def subsample(dataset: BeirDataset, max_queries: int | None, max_docs: int | None) -> BeirDataset:
    """The first `max_queries` judged queries and a corpus of at most `max_docs` documents that
    always holds their judged documents, the rest filled in corpus order. Deterministic."""
    qids = list(dataset.qrels)[:max_queries] if max_queries else list(dataset.qrels)
    qrels = {q: dataset.qrels[q] for q in qids}
    if not max_docs:
        return BeirDataset(dataset.name, dataset.corpus, {q: dataset.queries[q] for q in qids}, qrels, dataset.split)
    keep = dict.fromkeys(d for q in qids for d in qrels[q])
    for doc_id in dataset.corpus:
        if len(keep) >= max_docs:
            break
        keep.setdefault(doc_id)
    corpus = {d: dataset.corpus[d] for d in keep}
    return BeirDataset(dataset.name, corpus, {q: dataset.queries[q] for q in qids}, qrels, dataset.split)
