"""Fuzzing the data readers: any input, however damaged, gives a parsed result of the right type or the
documented error (a `DataError` whose message starts with "<file>:<line>: " or "<file>: ", or a
`FileNotFoundError` naming the file where that is documented), never another exception and never a hang.

Each reader starts from a small valid file in its format (with non-ASCII text, so that cuts land inside UTF-8
sequences) and gets a few hundred mutants: seeded random byte flips, insertions, deletions, truncations and
splices; other encodings (Latin-1, cp1252, UTF-16/32, Shift-JIS), a BOM, lone surrogates, NUL bytes, CR and mixed
line endings, duplicate lines (and so duplicate ids), empty files, one 20 MB line, JSON values of the wrong type
and nesting, and for .gz inputs damaged gzip streams too. Everything is seeded: a failure names its case, and
the next run gives the same case again.

Type choices for JSON fields, checked in `test_documented_choices_for_json_types`: a BEIR `_id` may be a JSON
string or integer (BEIR ids are strings, but some converted datasets write numbers, and the integer's digits are
the id qrels files use), any other type is an error; `text` must be a string; `title` a string or null. The MS
MARCO hard negatives keep their official schema (integer qid and passage ids), and the prepared groups the
types `GroupRecord` declares.
"""

import contextlib
import functools
import gzip
import hashlib
import json
import logging
import pickle
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from src.data.beir import BeirDataset, DataError, load_beir, load_corpus, load_qrels, load_queries
from src.data.groups import MANIFEST, Candidate, GroupRecord, Manifest, PreparedSet, write_shard
from src.data.msmarco import (
    ensemble_scores_candidates,
    hard_negatives_candidates,
    iter_id_text_tsv,
    load_ce_scores,
    read_id_text_tsv,
    read_triples,
)

SEED = 20250601
RANDOM_MUTANTS = 120  # random byte-level mutants of a reader's main file; 40 of each secondary file
HUGE = 20 * 2**20  # characters in the one huge line per reader
CASE_LIMIT_S = 5.0  # a case still running after this is a hang (the 20 MB line takes well under a second)

# Values put where a JSON field is expected; the big integer is spliced in as text (json.dumps refuses it).
WRONG_JSON = [None, True, 0, 5, -1.5, 1e308, "", "x", [], [1], ["a"], [[1]], {}, {"a": 1}, {"a": {"b": [None]}}]
BAD_JSON_LINES = [
    "[" * 100_000,  # nesting deeper than the recursion limit
    '{"a":' * 50_000,
    "1" * 5000,  # an integer past Python's 4300-digit limit for str -> int
    '{"x": ' + "9" * 5000 + "}",
    "[]",
    "5",
    "null",
    '"a string"',
    "true",
    "NaN",
    "{}",
    '{"unterminated": "',
    '{"a": 1} trailing',
    "\x00",
    "\ufeff{}",  # a BOM in mid-file
]


# --- the harness -------------------------------------------------------------------------------------------------


class _Hang(BaseException):  # not an Exception: a reader's `except Exception` must not turn it into a DataError
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupts the case after `seconds` (SIGALRM, so only in the main thread, where pytest runs tests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Fuzz:
    """Runs cases; collects each outcome that is neither a well-typed result nor the documented error."""

    def __init__(self, not_found_ok: bool = False):
        self.not_found_ok = not_found_ok  # whether FileNotFoundError is a documented outcome of this reader
        self.cases = 0
        self.failures: dict[str, list[str]] = {}  # kind of failure -> "case: detail"

    def run(
        self,
        case: str,
        call: Callable[[], object],
        valid: Callable[[object], bool],
        paths: Iterable[Path],
        line: int | None = None,
        under: Path | None = None,
    ) -> None:
        """`paths`: the files a DataError may name, or any file in folder `under`; `line`: the line it must
        name, where the case knows it."""
        self.cases += 1
        paths = [str(p) for p in paths]
        start = time.perf_counter()
        try:
            with _time_limit(CASE_LIMIT_S):
                result = call()
        except DataError as err:
            message = str(err)
            where = "|".join([*map(re.escape, paths), *([rf"{re.escape(str(under))}(/[^:]*)?"] if under else [])])
            at = rf":{line}" if line is not None else r"(:\d+)?"
            if not re.match(rf"({where}){at}: ", message, re.DOTALL):
                self._fail("DataError not naming the file[:line]", case, f"{' or '.join(paths)}{at}: {message}")
        except FileNotFoundError as err:
            if not (self.not_found_ok and any(p in str(err) for p in [*paths, str(under)])):
                self._fail("FileNotFoundError", case, str(err))
        except Exception as err:
            self._fail(type(err).__name__, case, str(err))
        except _Hang as err:
            self._fail("hang", case, str(err))
        else:
            if not valid(result):
                self._fail("a result of the wrong type", case, repr(result))
        elapsed = time.perf_counter() - start
        if elapsed > CASE_LIMIT_S:  # the alarm only fires in the main thread
            self._fail("too slow", case, f"{elapsed:.1f} s")

    def _fail(self, kind: str, case: str, detail: str) -> None:
        self.failures.setdefault(kind, []).append(f"{case}: {detail[:300]}")

    def check(self, at_least: int) -> None:
        failed = sum(map(len, self.failures.values()))
        shown = "".join(
            f"\n{kind}: {len(cases)} cases, such as\n  " + "\n  ".join(cases[:6])
            for kind, cases in self.failures.items()
        )
        assert not failed, f"{failed} of {self.cases} cases failed, by kind:{shown}"
        assert self.cases >= at_least, f"only {self.cases} cases ran"


@pytest.fixture(autouse=True)
def _quiet_readers():
    """The readers log skipped lines; thousands of damaged inputs (one holding a 20 MB id) need no log."""
    logger = logging.getLogger("src.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


# --- mutants -----------------------------------------------------------------------------------------------------


def _at(rng: random.Random, data: bytes, insert: bytes) -> bytes:
    i = rng.randrange(len(data) + 1)
    return data[:i] + insert + data[i:]


def _random_mutant(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One to three random edits: the name lists them."""
    ops = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.choice(["flip", "insert", "special", "delete", "truncate", "splice", "swap lines"])
        ops.append(op)
        if op == "flip" and data:
            i = rng.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]
        elif op == "insert":
            data = _at(rng, data, bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))))
        elif op == "special":
            data = _at(rng, data, rng.choice([b"\t", b"\n", b"\r", b"\x00", b'"', b"{", b"}", b"\\", b"\xff", b"\x80"]))
        elif op == "delete" and data:
            i = rng.randrange(len(data))
            data = data[:i] + data[i + rng.randint(1, 32) :]
        elif op == "truncate":
            data = data[: rng.randrange(len(data) + 1)]
        elif op == "splice" and data:
            i = rng.randrange(len(data))
            data = _at(rng, data, data[i : i + rng.randint(1, 64)])
        elif op == "swap lines":
            lines = data.split(b"\n")
            rng.shuffle(lines)
            data = b"\n".join(lines)
    return "+".join(ops), data


def mutants(data: bytes, rng: random.Random, n_random: int = RANDOM_MUTANTS) -> Iterator[tuple[str, bytes]]:
    """Named byte-level mutants of a valid UTF-8 text file."""
    text = data.decode("utf-8")
    first = data.split(b"\n")[0] + b"\n"
    yield "empty file", b""
    yield "blank lines only", b"\n \n\t\n\r\n"
    yield "NULs only", b"\x00" * 64
    nuls = data
    for _ in range(5):
        nuls = _at(rng, nuls, b"\x00")
    yield "NULs inside", nuls
    yield "no final newline", data.rstrip(b"\n")
    yield "CRLF", data.replace(b"\n", b"\r\n")
    yield "CR only", data.replace(b"\n", b"\r")
    yield (
        "mixed endings",
        b"".join(line + rng.choice([b"\n", b"\r\n", b"\r", b"\n\r"]) for line in data.rstrip(b"\n").split(b"\n")),
    )
    yield "every line twice", data + data
    yield "first line twice", first + data
    for encoding in ("latin-1", "cp1252", "utf-16", "utf-16-be", "utf-32", "utf-8-sig", "shift_jis"):
        yield encoding, text.encode(encoding, errors="replace")
    yield "UTF-8-encoded lone surrogate", _at(rng, data, "\ud800".encode("utf-8", "surrogatepass"))
    yield "stray continuation byte", _at(rng, data, b"\x80")
    yield "overlong encoding", _at(rng, data, b"\xc0\xaf")
    yield "0xff byte", _at(rng, data, b"\xff")
    yield "Latin-1 line in UTF-8", data + "déjà vu\n".encode("latin-1")
    leads = [i for i, b in enumerate(data) if b >= 0xC0]  # first bytes of multi-byte sequences
    for i in leads[:: max(1, len(leads) // 6)]:
        yield f"cut inside a UTF-8 sequence at byte {i + 1}", data[: i + 1]
    for k in range(n_random):
        name, mutant = _random_mutant(rng, data)
        yield f"random #{k} ({name})", mutant


def gzip_mutants(plain: bytes, rng: random.Random, n_random: int = 40) -> Iterator[tuple[str, bytes]]:
    """Damaged gzip streams of `plain`: truncated (header, mid-stream, trailer), flipped, padded, not gzip at all."""
    data = gzip.compress(plain, mtime=0)
    yield "empty .gz", b""
    yield "not gzip", plain
    yield "gzip header only", data[:10]
    yield "no trailer", data[:-8]
    yield "half the CRC", data[:-6]
    yield "trailing garbage", data + b"garbage"
    yield "trailing NULs", data + b"\x00" * 16
    yield "two members", data + data
    for k in range(n_random):
        i = rng.randrange(1, len(data))
        if k % 2:
            yield f"gzip cut at byte {i}", data[:i]
        else:
            yield f"gzip byte {i} flipped", data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


def jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def json_mutants(rows: list[dict], extra: dict[str, list] | None = None) -> Iterator[tuple[str, bytes]]:
    """Line 2 of `rows` with each field missing or of the wrong type (plus `extra`'s values per field), or
    replaced by a line that is not a JSON object at all."""
    head, second, tail = rows[:1], rows[1], rows[2:]
    for key in second:
        yield f"line 2 without {key!r}", jsonl([*head, {k: v for k, v in second.items() if k != key}, *tail])
        for value in [*WRONG_JSON, *(extra or {}).get(key, [])]:
            yield f"line 2 {key!r}: {json.dumps(value)[:40]}", jsonl([*head, {**second, key: value}, *tail])
        line = json.dumps({**second, key: "@@"})
        for what, text in [("a 5000-digit integer", "7" * 5000), ("an escaped lone surrogate", '"\\ud800"')]:
            yield f"line 2 {key!r}: {what}", jsonl(head) + line.replace('"@@"', text).encode() + b"\n" + jsonl(tail)
    for line in BAD_JSON_LINES:
        yield f"line 2: {line[:20]!r}", jsonl(head) + line.encode() + b"\n" + jsonl(tail)


def tsv_line_mutants(lines: list[str], variants: list[str]) -> Iterator[tuple[str, bytes]]:
    """Line 2 replaced by each variant."""
    for variant in variants:
        yield f"line 2: {variant[:40]!r}", "".join([lines[0], variant + "\n", *lines[2:]]).encode("utf-8")


# --- result types --------------------------------------------------------------------------------------------------


def _strs(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, str) for v in values)


def _numbers(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, int | float) for v in values)


def _str_dict(result: object) -> bool:
    return isinstance(result, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


def _qrels(result: object) -> bool:
    return isinstance(result, dict) and all(
        isinstance(q, str) and isinstance(j, dict) and all(isinstance(d, str) and type(g) is int for d, g in j.items())
        for q, j in result.items()
    )


def _candidates(result: object) -> bool:
    if not (isinstance(result, tuple) and len(result) == 2):
        return False
    candidates, counts = result
    return (
        isinstance(candidates, list)
        and all(
            isinstance(c, Candidate)
            and isinstance(c.query_id, str)
            and isinstance(c.query, str)
            and _strs(c.doc_ids)
            and _strs(c.docs)
            and len(c.doc_ids) == len(c.docs) >= 2
            and all(isinstance(t, str) and _numbers(s) and len(s) == len(c.docs) for t, s in c.given_scores.items())
            for c in candidates
        )
        and isinstance(counts, dict)
        and all(isinstance(k, str) and type(v) is int for k, v in counts.items())
    )


def _records(result: object) -> bool:
    return isinstance(result, list) and all(
        isinstance(r, GroupRecord)
        and isinstance(r.query_id, str)
        and isinstance(r.query, str)
        and _strs(r.doc_ids)
        and _strs(r.docs)
        and isinstance(r.scores, dict)
        and all(isinstance(t, str) and _numbers(s) for t, s in r.scores.items())
        for r in result
    )


# --- BEIR ----------------------------------------------------------------------------------------------------------

CORPUS_ROWS = [
    {"_id": "d1", "title": "Café study", "text": "Protein growth in naïve cells, ‘quoted’ — 日本語 🙂"},
    {"_id": "d2", "title": "Second", "text": "Cells divide; ß and Ω."},
    {"_id": "d3", "text": "No title here"},
    {"_id": "4", "title": None, "text": "A numeric-looking id"},
]
QUERY_ROWS = [
    {"_id": "q1", "text": "growth of cells?"},
    {"_id": "q2", "text": "日本語 query with ‘quotes’", "metadata": {}},
    {"_id": "q3", "text": "café"},
]
QRELS = ["query-id\tcorpus-id\tscore\n", "q1\td1\t1\n", "q2\td2\t2\n", "q2\t4\t0\n", "q3\td3\t1\n"]
QRELS_VARIANTS = [
    "q1\td1",
    "q1\td1\t1\t9",
    "q1\td1\tx",
    "q1\td1\t1.5",
    "q1\td1\t" + "9" * 5000,
    "q1\td1\t١",  # an Arabic-Indic digit: int() takes it
    "\t\t",
    "q1\t\t1",
    "\td1\t1",
    "q9\td1\t1",
    "q1\td9\t1",
    " q1 \t d1 \t -1 ",
    "query-id\tcorpus-id\tscore",
    "q1\td1\t1\x00",
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _beir_cases(rows: list[dict], rng: random.Random) -> Iterator[tuple[str, bytes, int | None]]:
    base = jsonl(rows)
    yield from ((name, data, None) for name, data in mutants(base, rng))
    yield from ((name, data, 2) for name, data in json_mutants(rows))
    yield "a 20 MB line", jsonl([*rows, {"_id": "huge", "text": "é" * (HUGE // 2)}]), None


@pytest.mark.parametrize("reader", [load_corpus, load_queries])
def test_fuzz_beir_jsonl(tmp_path, reader):
    rows = CORPUS_ROWS if reader is load_corpus else QUERY_ROWS
    path = tmp_path / ("corpus.jsonl" if reader is load_corpus else "queries.jsonl")
    fuzz = Fuzz()
    for name, data, line in _beir_cases(rows, random.Random(f"{SEED}:{path.name}")):
        _write(path, data)
        fuzz.run(name, lambda: reader(path), _str_dict, [path], line)
    fuzz.check(at_least=200)


def test_fuzz_beir_qrels(tmp_path):
    path = tmp_path / "test.tsv"
    queries, corpus = {r["_id"]: "" for r in QUERY_ROWS}, {r["_id"]: "" for r in CORPUS_ROWS}
    base = "".join(QRELS).encode()
    cases = [
        *((name, data, None) for name, data in mutants(base, random.Random(f"{SEED}:qrels"))),
        *((name, data, 2) for name, data in tsv_line_mutants(QRELS, QRELS_VARIANTS)),
        ("a 20 MB line", base + f"q1\t{'é' * (HUGE // 2)}\t1\n".encode(), None),
    ]
    fuzz = Fuzz()
    for name, data, line in cases:
        _write(path, data)
        fuzz.run(name, lambda: load_qrels(path), _qrels, [path], line)
        fuzz.run(f"{name}, known ids", lambda: load_qrels(path, queries, corpus), _qrels, [path], line)
        fuzz.run(f"{name}, skipping", lambda: load_qrels(path, queries, corpus, skipped={}), _qrels, [path], line)
    fuzz.check(at_least=400)


def test_fuzz_load_beir(tmp_path):
    """The three files together, one damaged at a time; a missing file is a FileNotFoundError naming it."""
    rng = random.Random(f"{SEED}:load_beir")
    folder = tmp_path / "tiny"
    files = {
        folder / "corpus.jsonl": jsonl(CORPUS_ROWS),
        folder / "queries.jsonl": jsonl(QUERY_ROWS),
        folder / "qrels" / "test.tsv": "".join(QRELS).encode(),
    }
    (folder / "qrels").mkdir(parents=True)

    def valid(result: object) -> bool:
        return (
            isinstance(result, BeirDataset)
            and _str_dict(result.corpus)
            and _str_dict(result.queries)
            and _qrels(result.qrels)
        )

    fuzz = Fuzz(not_found_ok=True)
    for target in files:
        for k, (name, data) in enumerate(mutants(files[target], rng, n_random=40)):
            for path, content in files.items():
                _write(path, data if path == target else content)
            skipped = {} if k % 2 else None  # both ways of treating unknown qrels ids
            call = functools.partial(load_beir, tmp_path, "tiny", "test", skipped=skipped)
            fuzz.run(f"{target.name}: {name}", call, valid, files)
        target.unlink()
        fuzz.run(f"no {target.name}", lambda: load_beir(tmp_path, "tiny", "test"), valid, [target, folder])
    fuzz.check(at_least=200)


def test_documented_choices_for_json_types(tmp_path):
    path = tmp_path / "corpus.jsonl"
    _write(path, b'{"_id": 5, "title": null, "text": "five"}\n{"_id": "6", "text": "six"}\n')
    assert load_corpus(path) == {"5": "five", "6": "six"}  # an integer id reads as its digits
    for bad in ['{"_id": "1", "text": null}', '{"_id": [1], "text": {"a": 1}}', '{"_id": 1.5, "text": "x"}']:
        _write(path, b'{"_id": "0", "text": "ok"}\n' + bad.encode() + b"\n")
        with pytest.raises(DataError, match=r"corpus.jsonl:2: "):
            load_corpus(path)
    _write(path, b'{"_id": "1", "title": 3, "text": "x"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: "):
        load_corpus(path)
    _write(path, b'{"_id": "q1", "text": ["a"]}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl:1: "):
        load_queries(path)
    _write(
        path, b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n' + b'{"_id": "3", "text": "x"}\n' * 9000
    )
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid UTF-8"):  # the line, not the decoder's chunk
        load_corpus(path)


# --- MS MARCO ------------------------------------------------------------------------------------------------------

TRIPLES = [
    "what is café au lait?\tCafé au lait is coffee with milk; ‘quoted’ — 日本語.\tNaïve Bayes is a classifier.\n",
    "define ß\tThe letter ß (Eszett) 🙂.\tOmega Ω is the last letter.\n",
    "third query\tpassage three\tpassage four\n",
]
COLLECTION = [f"{pid}\tpassage {pid}: café ‘{pid}’ 日本\n" for pid in range(100, 112)]
QUERIES_TSV = ["1\tquery one café\n", "2\tquery two 日本語\n", "3\tquery three\n"]
HARD_NEGATIVE_ROWS = [
    {"qid": 1, "pos": [100], "neg": {"bm25": [101, 102, 100], "tas-b": [103, 104]}},
    {"qid": 2, "pos": [105, 106], "neg": {"bm25": [107, 108]}},
    {"qid": 3, "pos": [109], "neg": {"bm25": [110, 111]}},
]
CE_SCORES = {
    1: {100: 9.5, 101: 1.0, 102: 2.0, 103: 3.5, 104: -1.25},
    2: {105: 7.0, 107: 0.5, 108: 1},
    3: {109: 4.0, 110: 3.0},
}
ENSEMBLE = ["12.5\t-3.25\t1\t100\t101\n", "10\t2\t2\t105\t107\n", "8.0\t1e-3\t3\t109\t110\n", "7\t6\t1\t100\t104\n"]
ENSEMBLE_VARIANTS = [
    "1\t2\t1\t100",
    "1\t2\t1\t100\t101\t9",
    "nan\t1\t1\t100\t101",
    "inf\t1\t1\t100\t101",
    "1e400\t1\t1\t100\t101",
    "\t\t\t\t",
    "1\t2\t\t100\t101",
    "1\t2\t1\t \t101",
    "9" * 5000 + "\t1\t1\t100\t101",
    "１\t２\t1\t100\t101",  # fullwidth digits: float() takes them
    "0x10\t1\t1\t100\t101",
    "1\t2\t99\t100\t101",  # a query not in the queries file
    "1\t2\t1\t100\t999",  # a passage not in the collection
]
TRIPLES_VARIANTS = ["q\tp", "q\tp\tn\tx", "\t\t", "q\t \tn", " \tp\tn", "q\tp\tn\r\r", "q\x00\tp\tn"]
ID_TEXT_VARIANTS = ["100\tduplicate id", "no tab", "\ttext without an id", " \t ", "101", "id\t", "x\ty\tz"]


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _text_file_cases(
    lines: list[str], variants: list[str], rng: random.Random, huge: str, gz: bool
) -> Iterator[tuple[str, bytes, int | None]]:
    """Mutants of a line-based file; with `gz`, compressed after mutation, and damaged gzip streams too."""
    base = "".join(lines).encode()
    wrap = _gz if gz else (lambda data: data)
    yield from (
        (name, wrap(data), None) for name, data in mutants(base, rng, RANDOM_MUTANTS // 2 if gz else RANDOM_MUTANTS)
    )
    yield from ((name, wrap(data), 2) for name, data in tsv_line_mutants(lines, variants))
    yield "a 20 MB line", wrap(base + huge.encode()), None
    if gz:
        yield from ((name, data, None) for name, data in gzip_mutants(base, rng))


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_fuzz_triples(tmp_path, suffix):
    path = tmp_path / f"triples{suffix}"
    rng = random.Random(f"{SEED}:{path.name}")
    huge = f"q\t{'é' * (HUGE // 2)}\tn\n"
    fuzz = Fuzz()
    for name, data, line in _text_file_cases(TRIPLES, TRIPLES_VARIANTS, rng, huge, gz=suffix == ".tsv.gz"):
        _write(path, data)
        fuzz.run(name, lambda: read_triples(path), _candidates, [path], line)
    fuzz.check(at_least=140)


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_fuzz_id_text_tsv(tmp_path, suffix):
    path = tmp_path / f"collection{suffix}"
    rng = random.Random(f"{SEED}:{path.name}")
    huge = f"999\t{'é' * (HUGE // 2)}\n"

    def listed(result: object) -> bool:
        return isinstance(result, list) and all(
            isinstance(where, str) and isinstance(key, str) and isinstance(text, str) for where, key, text in result
        )

    fuzz = Fuzz()
    for name, data, line in _text_file_cases(COLLECTION, ID_TEXT_VARIANTS, rng, huge, gz=suffix == ".tsv.gz"):
        _write(path, data)
        fuzz.run(name, lambda: read_id_text_tsv(path), _str_dict, [path], line)
        fuzz.run(f"{name}, kept ids", lambda: read_id_text_tsv(path, {"100", "105"}), _str_dict, [path], line)
        fuzz.run(f"{name}, streamed", lambda: list(iter_id_text_tsv(path)), listed, [path], line)
    fuzz.check(at_least=400)


class _Global:
    """Pickles as a call of `func`: a stand-in for what a hostile or damaged pickle may name."""

    def __init__(self, func: Callable, *args: object):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


CE_WRONG = [
    [1, 2],
    5,
    None,
    "scores",
    {1: [100, 101]},
    {1: None},
    {1: {100: "9.5"}},
    {1: {100: None}},
    {1: {100: [1.0]}},
    {1: {100: 9.5, 101: float("nan")}},
    {1: {100: 9.5, 101: True}},
    {"1": {100: 9.5, 101: 1.0}},
    {1: {"100": 9.5, "101": 1.0}},
    {1: {(100,): 9.5}},
    {1: {100: 9.5, 101: 2**80}},
    {1: {100: _Global(print, "ran")}},
    {1: {100: _Global(eval, "1")}},
    {1: {100: _Global(Path, "/")}},
]


def _ce_cases(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for protocol in (0, 2, 4):  # 0 is text opcodes (ints as digits), 2 and 4 binary; the official file is binary
        base = pickle.dumps(CE_SCORES, protocol=protocol)
        if protocol == 0:  # ASCII, so the text mutants apply
            yield from ((f"protocol 0, {name}", _gz(data)) for name, data in mutants(base, rng, n_random=0))
        for cut in range(0, len(base), max(1, len(base) // 12)):
            yield f"protocol {protocol}, pickle cut at byte {cut}", _gz(base[:cut])
        for k in range(RANDOM_MUTANTS):
            name, data = _random_mutant(rng, base)
            yield f"protocol {protocol}, random #{k} ({name})", _gz(data)
        yield from ((f"protocol {protocol}, {name}", data) for name, data in gzip_mutants(base, rng, n_random=20))
    for k, obj in enumerate(CE_WRONG):
        yield f"wrong types #{k}: {obj!r:.60}", _gz(pickle.dumps(obj, protocol=4))
    yield "a 20 MB string", _gz(pickle.dumps({1: {100: "é" * (HUGE // 2)}}, protocol=4))


def test_fuzz_ce_scores(tmp_path):
    path = tmp_path / "scores.pkl.gz"
    fuzz = Fuzz()
    for name, data in _ce_cases(random.Random(f"{SEED}:ce_scores")):
        _write(path, data)
        fuzz.run(name, lambda: load_ce_scores(path), lambda r: isinstance(r, dict), [path])
    fuzz.check(at_least=400)


@pytest.fixture
def marco(tmp_path) -> dict[str, Path]:
    return {
        "hard_negatives": _write(tmp_path / "hn.jsonl.gz", _gz(jsonl(HARD_NEGATIVE_ROWS))),
        "ce_scores": _write(tmp_path / "ce.pkl.gz", _gz(pickle.dumps(CE_SCORES, protocol=4))),
        "collection": _write(tmp_path / "collection.tsv", "".join(COLLECTION).encode()),
        "queries": _write(tmp_path / "queries.tsv", "".join(QUERIES_TSV).encode()),
    }


def _fuzz_files(
    fuzz: Fuzz, marco: dict[str, Path], cases: dict[str, Iterable[tuple]], call: Callable[[], object]
) -> None:
    """Each file of `marco` damaged in turn, the others as given; `cases`: (name, data[, line]) per file."""
    originals = {key: path.read_bytes() for key, path in marco.items()}
    for key, mutants_of_key in cases.items():
        for name, data, *line in mutants_of_key:
            _write(marco[key], data)
            fuzz.run(f"{key}: {name}", call, _candidates, [marco[key]], line[0] if line else None)
        _write(marco[key], originals[key])


def test_fuzz_hard_negatives(marco):
    rng = random.Random(f"{SEED}:hard_negatives")
    ids = {"pos": [[[100]], [{"a": 1}], ["100"], [100.0], [True], [None]]}
    neg = {"neg": [{"bm25": [[101]]}, {"bm25": "101"}, {"bm25": None}, {"bm25": [{"a": 1}]}, {"bm25": ["101"]}]}
    base = jsonl(HARD_NEGATIVE_ROWS)
    cases = {
        "hard_negatives": [
            *((name, _gz(data)) for name, data in mutants(base, rng)),
            *((name, _gz(data), 2) for name, data in json_mutants(HARD_NEGATIVE_ROWS, {**ids, **neg})),
            *gzip_mutants(base, rng),
            ("a 20 MB line", _gz(base + jsonl([{"qid": 1, "pos": [100], "neg": {"é" * (HUGE // 2): [101]}}]))),
        ],
        "ce_scores": [
            *((f"wrong types #{k}: {obj!r:.60}", _gz(pickle.dumps(obj, protocol=4))) for k, obj in enumerate(CE_WRONG)),
            *((name, data) for name, data in list(_ce_cases(rng))[::20]),
        ],
        "collection": [
            *mutants("".join(COLLECTION).encode(), rng, n_random=40),
            *tsv_line_mutants(COLLECTION, ID_TEXT_VARIANTS),
        ],
        "queries": [*mutants("".join(QUERIES_TSV).encode(), rng, n_random=40)],
    }
    fuzz = Fuzz()
    _fuzz_files(fuzz, marco, cases, lambda: hard_negatives_candidates(**marco))
    _fuzz_files(fuzz, marco, cases, lambda: hard_negatives_candidates(**marco, group_size=3, systems=["bm25"]))
    fuzz.check(at_least=600)


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_fuzz_ensemble_scores(marco, tmp_path, suffix):
    rng = random.Random(f"{SEED}:ensemble{suffix}")
    gz = suffix == ".tsv.gz"
    plain = "".join(ENSEMBLE).encode()
    marco = {
        "scores": _write(tmp_path / f"scores{suffix}", _gz(plain) if gz else plain),
        "collection": marco["collection"],
        "queries": marco["queries"],
    }
    huge = f"1\t2\t1\t100\t{'9' * HUGE}\n"
    cases = {
        "scores": list(_text_file_cases(ENSEMBLE, ENSEMBLE_VARIANTS, rng, huge, gz)),
        "collection": [*mutants("".join(COLLECTION).encode(), rng, n_random=30)],
        "queries": [*mutants("".join(QUERIES_TSV).encode(), rng, n_random=30)],
    }
    fuzz = Fuzz()
    _fuzz_files(fuzz, marco, cases, lambda: ensemble_scores_candidates(*marco.values()))
    scores = {"scores": cases["scores"]}
    _fuzz_files(fuzz, marco, scores, lambda: ensemble_scores_candidates(*marco.values(), max_queries=1))
    fuzz.check(at_least=250)


# --- prepared groups ---------------------------------------------------------------------------------------------

RECORDS = [
    GroupRecord(
        "q1", "café query", ["d1", "d2"], ["Café au lait ‘x’", "日本語 🙂"], {"bm25": [3.5, 1.0], "ce": [9, -2]}
    ),
    GroupRecord("q2", "second", ["d3", "d4"], ["ß", "Ω"], {"bm25": [0.0, 0.0], "ce": [1.5, 1.25]}),
    GroupRecord("q3", "third", ["d5", "d1"], ["five", "Café au lait ‘x’"], {"bm25": [2.0, 1.0], "ce": [0.5, 0.25]}),
]
RECORD_EXTRA = {
    "doc_ids": [[1, 2], ["d1", None], ["d1"], ["d1", "d2", "d3"]],
    "docs": [[None, "x"], ["x", ["y"]], ["x"]],
    "scores": [
        {"bm25": ["a", 1], "ce": [1, 2]},
        {"bm25": None, "ce": [1, 2]},
        [1, 2],
        {"bm25": [[1], 2], "ce": [1, 2]},
    ],
}


def test_fuzz_prepared_set(tmp_path):
    rng = random.Random(f"{SEED}:prepared")
    folder = tmp_path / "set"
    info = write_shard(folder / "toy-00000.jsonl", RECORDS)
    Manifest(2, ["bm25", "ce"], [info], {"toy": {"groups": 3}}, {"key": "k"}).save(folder)
    manifest, shard = folder / MANIFEST, folder / info.file
    good_manifest, good_shard = manifest.read_bytes(), shard.read_bytes()
    raw = json.loads(good_manifest)
    fuzz = Fuzz(not_found_ok=True)

    def read() -> list[GroupRecord]:
        return list(PreparedSet(folder))

    # The manifest: damaged bytes, and each field missing or of the wrong type.
    manifest_cases = [*mutants(good_manifest, rng)]
    for key in raw:
        manifest_cases.append((f"manifest without {key!r}", json.dumps({k: v for k, v in raw.items() if k != key})))
        for value in [*WRONG_JSON, [{"file": 5, "rows": 3, "sha256": "x"}], [{"file": "toy-00000.jsonl"}]]:
            manifest_cases.append((f"manifest {key!r}: {json.dumps(value)[:40]}", json.dumps({**raw, key: value})))
    shard_info = raw["shards"][0]
    for key in shard_info:
        for value in WRONG_JSON:
            shards = [{**shard_info, key: value}]
            manifest_cases.append((f"shard {key!r}: {json.dumps(value)[:40]}", json.dumps({**raw, "shards": shards})))
    manifest_cases += [
        ("an unknown field", json.dumps({**raw, "extra": 1})),
        ("a shard with an unknown field", json.dumps({**raw, "shards": [{**shard_info, "extra": 1}]})),
        ("a shard outside the folder", json.dumps({**raw, "shards": [{**shard_info, "file": "../elsewhere"}]})),
        ("a shard name with a NUL", json.dumps({**raw, "shards": [{**shard_info, "file": "toy\x00.jsonl"}]})),
        ("a shard name with a lone surrogate", json.dumps({**raw, "shards": [{**shard_info, "file": "\ud800"}]})),
        ("a 20 MB line", json.dumps({**raw, "config": {"key": "é" * (HUGE // 2)}}, ensure_ascii=False)),
        *((f"manifest: {line[:20]!r}", line) for line in BAD_JSON_LINES),
    ]
    for name, data in manifest_cases:
        _write(manifest, data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        fuzz.run(name, read, _records, [manifest, shard], under=folder)
    manifest.unlink()
    fuzz.run("no manifest", read, _records, [manifest])

    # The shard, re-signed in the manifest so that its lines reach the parser; then changed behind its back.
    records = [json.loads(r.to_line()) for r in RECORDS]
    huge = jsonl([*records, {**records[0], "docs": ["é" * (HUGE // 2), "x"]}])
    shard_cases = [
        *((name, data, None) for name, data in mutants(good_shard, rng)),
        *((name, data, 2) for name, data in json_mutants(records, RECORD_EXTRA)),
        ("a 20 MB line", huge, None),
    ]
    for name, data, line in shard_cases:
        _write(shard, data)
        signed = {**shard_info, "sha256": hashlib.sha256(data).hexdigest(), "rows": data.count(b"\n")}
        _write(manifest, json.dumps({**raw, "shards": [signed]}).encode())
        fuzz.run(f"re-signed shard: {name}", read, _records, [shard], line)
    _write(manifest, good_manifest)
    for name, data in list(mutants(good_shard, rng, n_random=10))[::3]:
        _write(shard, data)
        fuzz.run(f"shard changed behind the manifest's back: {name}", read, _records, [shard])
    shard.unlink()
    fuzz.run("no shard", read, _records, [shard])
    fuzz.check(at_least=500)
