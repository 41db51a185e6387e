"""MS MARCO training data as `Candidate` groups: triples files and the public distillation sets.

- `read_triples`: `triples.train.small.tsv` (`query \\t positive \\t negative`, no ids, no scores); ids are
  derived from the texts. The toy sample in ../shared/data/msmarco-toy is of this kind.
- `hard_negatives_candidates`: sentence-transformers' hard negatives with cross-encoder scores, the data behind
  paper-scale distillation (`msmarco-hard-negatives.jsonl.gz` + `cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz`).
- `ensemble_scores_candidates`: Hofstätter et al.'s BERT_CAT ensemble scores (SPLADE / MarginMSE training).

The last two refer to passages and queries by id, so they also need MS MARCO's `collection.tsv` (8.8M passages)
and `queries.train.tsv`. Both are read after the scores file, keeping only the ids the groups use: holding the
whole collection would take several GB for nothing. Plain and gzipped (`.gz`) files are both read.

Malformed input raises `DataError` naming file:line. What is routinely skipped (blank lines, queries without a
scored positive, ids missing from the collection) is counted in the returned counts and logged, the first few
of each kind by file:line, then once as a total.
"""

import builtins
import gzip
import hashlib
import json
import logging
import math
import pickle
import random
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple

from src.data.beir import DataError
from src.data.groups import Candidate
from src.data.sources import Source, SourceSpec

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

CE_TEACHER = "cross-encoder/ms-marco-MiniLM-L-6-v2"  # the model behind the hard negatives' scores
ENSEMBLE_TEACHER = "bert_cat_ensemble"
MAX_WARNINGS = 5  # skipped items logged one by one per kind; the rest only in the final total
TEXT_SKIPS = ("query_not_in_queries_file", "passage_not_in_collection")  # id-based sources, see _resolve_texts
FORMATS = ("hard_negatives", "bert_ensemble")  # the values of `msmarco.format`: the converters of source_spec

# Where the inputs are published (repo id, filename), keyed by the config key that takes a local file instead.
# As published at the time of writing: checked against the dataset's file listing and README on the hub and
# against sentence-transformers' MS MARCO training scripts, which download these two files.
HUB_FILES: dict[str, tuple[str, str]] = {
    "msmarco.hard_negatives": ("sentence-transformers/msmarco-hard-negatives", "msmarco-hard-negatives.jsonl.gz"),
    "msmarco.ce_scores": (
        "sentence-transformers/msmarco-hard-negatives",
        "cross-encoder-ms-marco-MiniLM-L-6-v2-scores.pkl.gz",
    ),
}
# Inputs the hub has only in another format (parquet, in sentence-transformers/msmarco-corpus and
# sentence-transformers/msmarco): the TSV files these readers take come from these addresses, as published at the
# time of writing (Microsoft's tarballs were first served from msmarco.blob.core.windows.net/msmarcoranking/).
DOWNLOADS: dict[str, str] = {
    "msmarco.collection": "https://msmarco.z22.web.core.windows.net/msmarcoranking/collection.tar.gz (collection.tsv)",
    "msmarco.queries": "https://msmarco.z22.web.core.windows.net/msmarcoranking/queries.tar.gz (queries.train.tsv)",
    "msmarco.ensemble_scores": (
        "https://zenodo.org/record/4068216/files/bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv"
        " (md5 4d99696386f96a7f1631076bcc53ac3c)"
    ),
}


class _Skips:
    """Counts skipped items in `counts[kind]`; logs the first few of each kind by file:line, then `summarize`
    gives the totals, so a systematic problem in a 500k-line file takes a handful of log lines."""

    def __init__(self, counts: dict[str, int], kinds: Iterable[str]):
        self.counts, self.kinds = counts, list(kinds)
        counts.update(dict.fromkeys(self.kinds, 0))

    def __call__(self, kind: str, where: str, why: str) -> None:
        self.counts[kind] += 1
        if self.counts[kind] <= MAX_WARNINGS:
            log.warning("%s: %s; skipped (%s)", where, why, kind)

    def summarize(self, source: Path) -> None:
        for kind in self.kinds:
            if self.counts[kind] > MAX_WARNINGS:
                log.warning(
                    "%s: %d skipped as %s in all (the first %d logged)", source, self.counts[kind], kind, MAX_WARNINGS
                )


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line ending), LF or CRLF; damaged gzip data becomes a DataError, since
    a truncated download of a multi-GB file is the usual way these inputs go bad."""
    line_no = 0
    with _open(path) as f:
        try:
            for line_no, raw in enumerate(f, start=1):
                yield line_no, raw.removesuffix(b"\n").removesuffix(b"\r")
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataError(f"{path}:{line_no + 1}: damaged gzip data ({err})") from None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})") from None


def text_id(prefix: str, text: str) -> str:
    """A stable id from the text itself, so identical passages share it and every read gives the same ids.
    16 hex digits of SHA-1: 64 bits, a collision among MS MARCO's 8.8M passages has odds of about 2e-6."""
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def read_triples(path: Path, max_rows: int | None = None) -> tuple[list[Candidate], dict[str, int]]:
    """Groups of 2 (query, positive, negative) from a `triples.train.small.tsv`-style file, at most `max_rows`.

    Texts are kept exactly as in the file, MS MARCO's mojibake included: the teachers and the student were
    trained on those bytes too. Ids are `text_id`s ("q…" for queries, "d…" for passages); no given scores.
    """
    counts = {"lines": 0, "groups": 0}
    skips = _Skips(counts, ["blank_lines"])
    candidates = []
    for line_no, raw in _lines(path):
        if max_rows is not None and len(candidates) >= max_rows:
            break
        counts["lines"] += 1
        where = f"{path}:{line_no}"
        if not raw.strip():
            skips("blank_lines", where, "blank line")
            continue
        fields = _decode(raw, where).split("\t")
        if len(fields) != 3:
            raise DataError(f"{where}: expected 3 tab-separated fields (query, positive, negative), got {len(fields)}")
        empty = [name for name, text in zip(("query", "positive", "negative"), fields, strict=True) if not text.strip()]
        if empty:
            raise DataError(f"{where}: empty field(s): {', '.join(empty)}")
        query, positive, negative = fields
        doc_ids = [text_id("d", positive), text_id("d", negative)]
        candidates.append(Candidate(text_id("q", query), query, doc_ids, [positive, negative]))
    counts["groups"] = len(candidates)
    skips.summarize(path)
    return candidates, counts


def triples_corpus(candidates: Iterable[Candidate]) -> list[str]:
    """The unique passage texts, in first-seen order: the corpus for BM25 statistics and IDF."""
    return list(dict.fromkeys(doc for c in candidates for doc in c.docs))


def iter_id_text_tsv(path: Path) -> Iterator[tuple[str, str, str]]:
    """(file:line, id, text) of each line of an `id \t text` file (MS MARCO's collection.tsv, queries.train.tsv)."""
    skips = _Skips({}, ["blank_lines"])
    for line_no, raw in _lines(path):
        where = f"{path}:{line_no}"
        if not raw.strip():
            skips("blank_lines", where, "blank line")
            continue
        line = _decode(raw, where)
        if "\t" not in line:
            raise DataError(f"{where}: expected `id<TAB>text`, found no tab")
        key, text = line.split("\t", 1)
        key = key.strip()
        if not key:
            raise DataError(f"{where}: empty id")
        yield where, key, text
    skips.summarize(path)


def read_id_text_tsv(path: Path, keep: set[str] | None = None) -> dict[str, str]:
    """id -> text from an `id \t text` file.

    With `keep`, only those ids are held: streaming the 8.8M-passage collection for the few hundred thousand
    passages the groups use keeps memory at what training needs.
    """
    found: dict[str, str] = {}
    for where, key, text in iter_id_text_tsv(path):
        if keep is not None and key not in keep:
            continue
        if key in found:
            raise DataError(f"{where}: id {key!r} appears twice")
        found[key] = text
    return found


class _ScoresUnpickler(pickle.Unpickler):
    """Unpickling can call any importable function the file names, so every global but dict, int and float is
    refused before it is looked up. (Strings, lists and the like need no lookup; `load_ce_scores`'s callers
    check the types they use.)"""

    ALLOWED = frozenset({("builtins", "dict"), ("builtins", "int"), ("builtins", "float")})

    def __init__(self, file: IO[bytes], path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self.ALLOWED:
            return getattr(builtins, name)
        raise DataError(
            f"{self.path}: the pickle refers to {module}.{name}; only dict, int and float are loaded. "
            "Give the official cross-encoder scores file, never a pickle from an untrusted source"
        )


def load_ce_scores(path: Path) -> dict[int, dict[int, float]]:
    """qid -> pid -> cross-encoder score from sentence-transformers' `*-scores.pkl.gz`.

    A pickle is a program: give only the official file (see HUB_FILES). It is loaded with `_ScoresUnpickler`,
    which refuses anything but dicts, ints and floats. The file holds 160M scores and is loaded whole (a pickle
    cannot be streamed), which takes tens of GB of memory, as in sentence-transformers' own training script.
    """
    with _open(path) as f:
        try:
            scores = _ScoresUnpickler(f, path).load()
        except DataError:
            raise
        except MemoryError:  # a damaged length field asks for exabytes; the real file needs tens of GB
            raise DataError(
                f"{path}: not a readable (gzipped) pickle: out of memory (a damaged file, or too little memory)"
            ) from None
        except Exception as err:  # damaged pickle data raises most anything (KeyError, TypeError, ValueError, ...)
            raise DataError(f"{path}: not a readable (gzipped) pickle ({type(err).__name__}: {err})") from None
    if not isinstance(scores, dict):
        raise DataError(f"{path}: expected a dict qid -> {{pid: score}}, got {type(scores).__name__}")
    return scores


def _parse_hard_negatives_line(raw: bytes, where: str) -> tuple[int, list, dict[str, list]]:
    try:
        row = json.loads(raw)
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8") from None
    except (ValueError, RecursionError) as err:  # besides bad syntax: integers past 4300 digits, deep nesting
        raise DataError(f"{where}: not a valid JSON line ({getattr(err, 'msg', err)})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in ("qid", "pos", "neg") if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    qid, pos, neg = row["qid"], row["pos"], row["neg"]
    if not isinstance(qid, int) or not isinstance(pos, list) or not isinstance(neg, dict):
        raise DataError(f'{where}: expected "qid" an integer, "pos" a list and "neg" an object')
    if not all(isinstance(pids, list) for pids in neg.values()):
        raise DataError(f'{where}: every system in "neg" needs a list of passage ids')
    if not all(isinstance(p, int) for pids in (pos, *neg.values()) for p in pids):  # they are looked up in dicts
        raise DataError(f'{where}: the passage ids in "pos" and "neg" must be integers')
    return qid, pos, neg


class _Pick(NamedTuple):
    """A group chosen by id, before its texts are read."""

    where: str  # file:line it came from, for messages
    query_id: str
    doc_ids: list[str]  # positive first
    scores: list[float]  # the published teacher's, in doc order


def _resolve_texts(picks: list[_Pick], collection: Path, queries: Path, teacher: str, skips: _Skips) -> list[Candidate]:
    """Candidates for the picked groups, reading only the texts they use; skips (TEXT_SKIPS) ids without text."""
    query_texts = read_id_text_tsv(queries, {p.query_id for p in picks})
    passages = read_id_text_tsv(collection, {d for p in picks for d in p.doc_ids})
    candidates = []
    for pick in picks:
        missing = [d for d in pick.doc_ids if d not in passages]
        if pick.query_id not in query_texts:
            skips("query_not_in_queries_file", pick.where, f"query {pick.query_id} is not in {queries}")
        elif missing:
            skips("passage_not_in_collection", pick.where, f"passage(s) {', '.join(missing)} not in {collection}")
        else:
            docs = [passages[d] for d in pick.doc_ids]
            query = query_texts[pick.query_id]
            candidates.append(Candidate(pick.query_id, query, pick.doc_ids, docs, {teacher: pick.scores}))
    return candidates


def hard_negatives_candidates(
    hard_negatives: Path,
    ce_scores: Path,
    collection: Path,
    queries: Path,
    group_size: int = 2,
    systems: list[str] | None = None,
    negatives_from_top: int = 50,
    seed: int = 0,
    max_queries: int | None = None,
) -> tuple[list[Candidate], dict[str, int]]:
    """One group per query of sentence-transformers' MS MARCO hard negatives, scored by the cross-encoder.

    The positive is drawn among the query's `pos` that have a cross-encoder score; the G-1 negatives among the
    union of the top `negatives_from_top` of each system in `systems` (default: every system on the line) that
    are not positives and have a score. Draws use a generator seeded by (seed, qid), so a query's group does not
    depend on the rest of the file or on `max_queries` (which reads only the file's first queries). Queries
    without a scored positive, with too few negatives, or whose texts are missing are skipped and counted.
    """
    if group_size < 2:
        raise ValueError(f"group_size: at least 2 (a positive and a negative), got {group_size}")
    if systems is not None and not systems:
        raise ValueError("systems: name at least one retrieval system, or None for all")
    scores = load_ce_scores(ce_scores)
    counts = {"queries": 0, "groups": 0}
    kinds = ["blank_lines", "queries_without_scored_positive", "queries_with_too_few_negatives", *TEXT_SKIPS]
    skips = _Skips(counts, kinds)
    picks: list[_Pick] = []
    seen_systems: set[str] = set()
    for line_no, raw in _lines(hard_negatives):
        where = f"{hard_negatives}:{line_no}"
        if not raw.strip():
            skips("blank_lines", where, "blank line")
            continue
        if max_queries is not None and counts["queries"] >= max_queries:
            break
        counts["queries"] += 1
        qid, pos, neg = _parse_hard_negatives_line(raw, where)
        seen_systems.update(neg)
        scored = scores.get(qid, {})
        if not isinstance(scored, dict):
            raise DataError(f"{ce_scores}: the scores of query {qid} are a {type(scored).__name__}, not a dict")
        positives = sorted(p for p in set(pos) if p in scored)
        if not positives:
            skips("queries_without_scored_positive", where, f"query {qid}: no positive has a cross-encoder score")
            continue
        ranked = (pids[:negatives_from_top] for name, pids in neg.items() if systems is None or name in systems)
        excluded = set(pos)  # every positive, scored or not
        pool = sorted({p for pids in ranked for p in pids if p in scored and p not in excluded})  # sorted: order-free
        if len(pool) < group_size - 1:
            skips("queries_with_too_few_negatives", where, f"query {qid}: {len(pool)} scored negatives")
            continue
        rng = random.Random(f"{seed}:{qid}")
        pids = [rng.choice(positives), *rng.sample(pool, group_size - 1)]
        values = [scored[p] for p in pids]
        if not all(isinstance(v, int | float) for v in values):
            raise DataError(f"{ce_scores}: the scores of query {qid} must be numbers, got {values}")
        picks.append(_Pick(where, str(qid), [str(p) for p in pids], [float(v) for v in values]))
    unknown = sorted(set(systems or ()) - seen_systems)
    if unknown:
        raise DataError(f"{hard_negatives}: no line has negatives from {unknown}; it has {sorted(seen_systems)}")
    del scores  # the biggest object here: free it before the collection is read
    candidates = _resolve_texts(picks, collection, queries, CE_TEACHER, skips)
    counts["groups"] = len(candidates)
    skips.summarize(hard_negatives)
    return candidates, counts


def _parse_score(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: score {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: score {text!r} is not finite")
    return value


def ensemble_scores_candidates(
    scores_tsv: Path, collection: Path, queries: Path, max_queries: int | None = None
) -> tuple[list[Candidate], dict[str, int]]:
    """One group of 2 per line of `bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv`
    (`pos_score \\t neg_score \\t qid \\t pid_pos \\t pid_neg`, no header), with the ensemble's two scores.

    A query has many lines. `max_queries` keeps the lines of the first `max_queries` distinct queries; the whole
    file is still read (and checked), since a query's lines are not contiguous.
    """
    counts = {"lines": 0, "groups": 0, "queries": 0, "lines_beyond_max_queries": 0}
    skips = _Skips(counts, ["blank_lines", *TEXT_SKIPS])
    kept_queries: set[str] = set()
    picks: list[_Pick] = []
    for line_no, raw in _lines(scores_tsv):
        counts["lines"] += 1
        where = f"{scores_tsv}:{line_no}"
        if not raw.strip():
            skips("blank_lines", where, "blank line")
            continue
        fields = [f.strip() for f in _decode(raw, where).split("\t")]
        if len(fields) != 5:
            raise DataError(
                f"{where}: expected 5 tab-separated fields (pos_score, neg_score, qid, pid_pos, pid_neg), "
                f"got {len(fields)}"
            )
        pos_score, neg_score = _parse_score(fields[0], where), _parse_score(fields[1], where)
        qid, pid_pos, pid_neg = fields[2:]
        if not (qid and pid_pos and pid_neg):
            raise DataError(f"{where}: empty id")
        if qid not in kept_queries:
            if max_queries is not None and len(kept_queries) >= max_queries:
                counts["lines_beyond_max_queries"] += 1  # a choice, not a fault: not logged
                continue
            kept_queries.add(qid)
        picks.append(_Pick(where, qid, [pid_pos, pid_neg], [pos_score, neg_score]))
    candidates = _resolve_texts(picks, collection, queries, ENSEMBLE_TEACHER, skips)
    counts["groups"], counts["queries"] = len(candidates), len({c.query_id for c in candidates})
    skips.summarize(scores_tsv)
    return candidates, counts


def fetch(repo_id: str, filename: str, key: str) -> Path:
    """A hub dataset file, from the local Hugging Face cache or downloaded; see HUB_FILES for the known ones.

    Offline (HF_HUB_OFFLINE=1) a file already in the cache is still found. Otherwise the error names `key`,
    the config key that takes a local copy instead.
    """
    from huggingface_hub import constants, hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as err:  # offline, no network, no such file: the remedy is the same
        offline = " (HF_HUB_OFFLINE=1: nothing is downloaded)" if constants.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{filename} from the hub dataset {repo_id} is not available{offline}: {err.__class__.__name__}. "
            f"Download it where the hub is reachable and set {key} to the local file"
        ) from err


def _input(cfg, name: str) -> Path:
    """msmarco.<name> as a local file: the configured path, else the known hub file, else an error with a source."""
    key = f"msmarco.{name}"
    path = cfg.msmarco.get(name)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: {path} does not exist")
        return Path(path)
    if key in HUB_FILES:
        return fetch(*HUB_FILES[key], key=key)
    raise FileNotFoundError(f"{key}: set it to the local file; it is published at {DOWNLOADS[key]}")


def source_spec(cfg: "DictConfig") -> SourceSpec:
    """The `msmarco` block of `src.prepare`'s config as a source: `msmarco.format` picks the converter."""
    fmt = cfg.msmarco.format
    if fmt == "hard_negatives":
        files = {k: _input(cfg, k) for k in ("hard_negatives", "ce_scores", "collection", "queries")}

        def convert() -> tuple[list[Candidate], dict[str, int]]:
            systems = list(cfg.msmarco.systems) if cfg.msmarco.systems else None
            return hard_negatives_candidates(
                **files, group_size=cfg.group_size, systems=systems,
                negatives_from_top=cfg.negatives_from_top, seed=cfg.seed, max_queries=cfg.max_queries,
            )  # fmt: skip
    elif fmt == "bert_ensemble":
        if cfg.group_size != 2:
            raise ValueError(f"group_size: the BERT ensemble scores come in pairs (G=2), got {cfg.group_size}")
        files = {k: _input(cfg, k) for k in ("ensemble_scores", "collection", "queries")}

        def convert() -> tuple[list[Candidate], dict[str, int]]:
            return ensemble_scores_candidates(
                files["ensemble_scores"], files["collection"], files["queries"], max_queries=cfg.max_queries
            )
    else:
        raise ValueError(f"msmarco.format: must be null, hard_negatives or bert_ensemble, got {fmt!r}")

    def load() -> Source:
        candidates, counts = convert()
        # Corpus statistics (BM25 teacher) from the passages the groups use; IDF from the whole collection.
        return Source(
            "msmarco",
            candidates,
            counts,
            triples_corpus(candidates),
            idf_texts=lambda: (text for _, _, text in iter_id_text_tsv(files["collection"])),  # streamed
        )

    return SourceSpec("msmarco", list(files.values()), load)
