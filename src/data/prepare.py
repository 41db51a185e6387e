"""Build a distillation training set on disk (`prepare(cfg)`): what `python -m src.prepare` and `src.train` run.

Sources (any mix): BEIR-layout train splits (`datasets`, BM25 hard negatives mined here), MS MARCO style
triples files (`triples`), and the public MS MARCO distillation data (`msmarco`, see src/data/msmarco.py).
Each group is scored by every teacher in `teachers`, and written in shards (src/data/groups.py).

Resumable: each shard is written atomically and recorded in DIR/.prepare-state.json, so a killed run
continues with the first missing shard, and the result is byte-identical to an uninterrupted run
(batches never cross shard boundaries). The manifest is written last; a complete DIR is left as is.
"""

import fcntl
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from src.common.io import atomic_write_json, sha256_file
from src.config import ConfigError
from src.data import msmarco
from src.data.beir import DEV_FRACTION, DEV_SEED, BeirDataset, dataset_dir, load_beir, qrels_file, subsample
from src.data.groups import MANIFEST, Candidate, GroupRecord, Manifest, ShardInfo, write_shard
from src.data.mining import NEGATIVES_FROM, Ranker, bm25_candidates, ensemble_ranker, mine_groups
from src.data.sources import Source, SourceSpec
from src.model.encoders import DocEncoder, IdfQueryEncoder, compute_idf, load_tokenizer, resolve_model, save_idf
from src.retrieval.engine import encode_documents, encode_queries, search
from src.retrieval.index import fingerprint
from src.teachers import HF_KINDS, PER_SOURCE, Teacher, TeacherSpec, build_teacher
from src.teachers.hf import teacher_dtype

log = logging.getLogger(__name__)
STATE = ".prepare-state.json"
SCORE_DECIMALS = 6  # keeps shards small and their bytes independent of float printing noise


# The settings that make a prepared set; the key over them (and the inputs' content) names its cache folder.
SETTINGS = (
    "datasets", "split", "triples", "msmarco", "group_size", "negatives_from", "negatives_from_top", "teachers",
    "seed", "max_queries", "batch_size", "shard_size", "student",
)  # fmt: skip


def beir_source(cfg: DictConfig, name: str, teachers: "_Teachers | None" = None) -> SourceSpec:
    folder = dataset_dir(cfg.paths.data_dir, name, cfg.download)

    def load() -> Source:
        skipped: dict[str, int] = {}
        dataset = load_beir(cfg.paths.data_dir, name, cfg.split, skipped=skipped)
        dataset = subsample(dataset, cfg.max_queries, None)  # before mining: teachers score only what is used
        ranker = _ranker(cfg, dataset, teachers)
        candidates, counts = mine_groups(dataset, cfg.group_size, cfg.negatives_from_top, cfg.seed, ranker)
        counts = {"qrels_unknown_query": 0, "qrels_unknown_doc": 0, **skipped, **counts}
        return Source(name, candidates, counts, list(dataset.corpus.values()))

    return SourceSpec(name, [folder / "corpus.jsonl", folder / "queries.jsonl", qrels_file(folder, cfg.split)], load)


def _ranker(cfg: DictConfig, dataset: BeirDataset, teachers: "_Teachers | None") -> Ranker:
    """What the negatives are mined from (`negatives_from`): BM25, the teachers' ensemble or the student."""
    if cfg.negatives_from == "bm25":
        return bm25_candidates
    corpus = [dataset.corpus[d] for d in dataset.doc_ids]
    if cfg.negatives_from == "student":
        return student_ranker(cfg.student, corpus)
    scorers = [
        teacher.score_corpus
        for spec in teachers.specs
        if hasattr(teacher := teachers.get(spec, dataset.name, corpus), "score_corpus")
    ]
    if not scorers:
        raise ConfigError("negatives_from: teachers needs a teacher that can rank a corpus (bm25 or bi_encoder)")
    return ensemble_ranker(scorers)


def student_ranker(model: str | None, corpus: list[str], max_length: int = 256) -> Ranker:
    """The student before training, inference-free (IDF of this corpus): the documents it wrongly ranks high."""

    def rank(dataset: BeirDataset, qids: list[str], k: int) -> dict[str, list[str]]:
        tokenizer = load_tokenizer(model)
        encoder = DocEncoder.from_pretrained(model)
        docs = encode_documents(encoder, tokenizer, corpus, max_length, progress=True)  # (D, V)
        idf = compute_idf(corpus, tokenizer)
        queries = encode_queries(
            IdfQueryEncoder(idf, tokenizer.all_special_ids), tokenizer, [dataset.queries[q] for q in qids]
        )
        hits = search(queries, docs, qids, dataset.doc_ids, k=k)
        return {q: list(hits[q]) for q in qids}

    return rank


def triples_source(cfg: DictConfig, path: str) -> SourceSpec:
    if cfg.group_size != 2:
        raise ConfigError(f"group_size: a triples file gives groups of 2, got {cfg.group_size} (triples={path})")
    if not Path(path).is_file():
        raise ConfigError(f"triples: {path} does not exist")

    def load() -> Source:
        candidates, counts = msmarco.read_triples(Path(path), cfg.max_queries)
        return Source(Path(path).stem, candidates, counts, msmarco.triples_corpus(candidates))

    return SourceSpec(Path(path).stem, [Path(path)], load)


def source_specs(cfg: DictConfig, teachers: "_Teachers | None" = None) -> list[SourceSpec]:
    """`teachers`: where negatives_from=teachers finds them (only `load` needs them)."""
    if cfg.negatives_from not in NEGATIVES_FROM:
        raise ConfigError(f"negatives_from: must be one of {', '.join(NEGATIVES_FROM)}, got {cfg.negatives_from!r}")
    found = [beir_source(cfg, name, teachers) for name in cfg.datasets]
    found += [triples_source(cfg, path) for path in cfg.triples]
    if cfg.msmarco.format:
        found.append(msmarco.source_spec(cfg))
    if not found:
        raise ConfigError("datasets / triples / msmarco.format: name at least one source")
    names = [s.name for s in found]
    if len(set(names)) != len(names):
        raise ConfigError(f"datasets / triples: two sources share a name: {names}")
    return found


def teacher_specs(cfg: DictConfig) -> list[TeacherSpec]:
    try:
        specs = [TeacherSpec.from_config(dict(t), f"teachers[{i}]") for i, t in enumerate(cfg.teachers)]
    except ValueError as err:
        raise ConfigError(str(err)) from None
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"teachers: names must be unique (set `name:`), got {names}")
    return specs


def prepared_key(cfg: DictConfig) -> str:
    """Everything the bytes of the set depend on: the settings, the inputs' content and the teachers' weights."""
    settings = {k: OmegaConf.to_container(cfg, resolve=True)[k] for k in SETTINGS}
    models = [resolve_model(s.model) for s in teacher_specs(cfg) if s.kind == "splade" or s.model]
    if cfg.negatives_from == "student":
        models.append(resolve_model(cfg.student))
    weights = []
    for folder in map(Path, models):
        if folder.is_dir():  # a hub id has no local files: its name in settings is the key
            weights += [sha256_file(p) for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))]
    inputs = [sha256_file(p) for s in source_specs(cfg) for p in s.inputs]
    # A Hugging Face teacher's scores depend on the dtype it computes in here ("auto": bf16 where native).
    dtypes = {s.name: teacher_dtype(**_precision_options(s)) for s in teacher_specs(cfg) if s.kind in HF_KINDS}
    # Which train queries are held out as dev (datasets without a dev split) decides which groups there are.
    held_out = {"dev_fraction": DEV_FRACTION, "dev_seed": DEV_SEED}
    return fingerprint(settings, inputs, weights, held_out, {"teacher_dtypes": dtypes})


def _precision_options(spec: TeacherSpec) -> dict:
    return {k: spec.options[k] for k in ("precision", "device") if k in spec.options}


class _Teachers:
    """Loads each teacher once, on first use; PER_SOURCE kinds once per source (mining and scoring share it)."""

    def __init__(self, specs: list[TeacherSpec]):
        self.specs, self.loaded = specs, {}

    def get(self, spec: TeacherSpec, source: str, corpus: Sequence[str]) -> Teacher:
        key = (spec.name, source if spec.kind in PER_SOURCE else None)
        if key not in self.loaded:
            log.info("loading teacher %s (%s)", spec.name, spec.kind)
            self.loaded[key] = build_teacher(spec, corpus)
        return self.loaded[key]

    def for_source(self, source: Source) -> list[Teacher]:
        """The teachers of a source, in spec order, each given all the source's documents before any is scored."""
        teachers = [self.get(spec, source.name, source.corpus) for spec in self.specs]
        for teacher in teachers:
            if hasattr(teacher, "precompute"):
                teacher.precompute([d for c in source.candidates for d in c.docs])
        return teachers


def _score_shard(
    chunk: list[Candidate], source: Source, teachers: _Teachers, batch_size: int, bar: tqdm
) -> list[GroupRecord]:
    scores: list[dict[str, list[float]]] = [dict(c.given_scores) for c in chunk]
    loaded = teachers.for_source(source)
    for start in range(0, len(chunk), batch_size):
        batch = chunk[start : start + batch_size]
        for spec, teacher in zip(teachers.specs, loaded, strict=True):
            raw = teacher.score([c.query for c in batch], [c.docs for c in batch])  # (B, G)
            rounded = np.round(raw.numpy().astype(np.float64), SCORE_DECIMALS)  # (B, G)
            for row, values in zip(scores[start : start + len(batch)], rounded, strict=True):
                row[spec.name] = values.tolist()
        bar.update(len(batch))
    return [GroupRecord(c.query_id, c.query, c.doc_ids, c.docs, s) for c, s in zip(chunk, scores, strict=True)]


def _check_teachers(found: list[Source], specs: list[TeacherSpec]) -> list[str]:
    """Every group must carry the same teachers: the local ones plus those its source came with."""
    local = [s.name for s in specs]
    names = None
    for source in found:
        given = sorted({n for c in source.candidates for n in c.given_scores})
        clash = set(given) & set(local)
        if clash:
            raise ConfigError(f"teachers: {sorted(clash)} already come with source {source.name}; rename it")
        if names is not None and given != names:
            raise ConfigError(f"sources disagree on their published teachers: {source.name} has {given}, not {names}")
        names = given
    return local + (names or [])


def _open_state(out: Path, key: str) -> dict[str, ShardInfo]:
    """Shards finished by an earlier run with the same key; refuses a folder holding something else."""
    state_file = out / STATE
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if state["key"] != key:
            raise ConfigError(
                f"paths.output_dir: {out} holds an unfinished prepared set with different settings or inputs; "
                "delete it or choose another folder"
            )
        done = {s["file"]: ShardInfo(**s) for s in state["shards"]}
        return {f: info for f, info in done.items() if (out / f).is_file() and sha256_file(out / f) == info.sha256}
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"paths.output_dir: {out} is not empty and holds no prepared set; choose an empty folder")
    return {}


def prepare(cfg: DictConfig, key: str | None = None) -> Path:
    """Builds (or finishes) the prepared set in cfg.paths.output_dir; returns the folder.

    Parallel runs (sweep points on a cold cache) take turns on a lock file beside the folder: the first
    builds the set, the others then find it complete. `key`: `prepared_key(cfg)` when the caller has it already
    (it hashes every input file).
    """
    out = Path(cfg.paths.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare(cfg, out, key or prepared_key(cfg))


def _prepare(cfg: DictConfig, out: Path, key: str) -> Path:
    specs = teacher_specs(cfg)
    if cfg.group_size < 2:
        raise ConfigError(f"group_size: must be >= 2 (a positive and a negative), got {cfg.group_size}")
    if cfg.shard_size < 1 or cfg.batch_size < 1:
        raise ConfigError("shard_size and batch_size: must be >= 1")
    if (out / MANIFEST).is_file():
        if Manifest.load(out).config.get("key") == key:
            log.info("%s is complete for these settings; nothing to do", out)
            return out
        raise ConfigError(f"paths.output_dir: {out} holds a prepared set with other settings or inputs")
    done = _open_state(out, key)
    teachers = _Teachers(specs)
    found = [spec.load() for spec in source_specs(cfg, teachers)]
    names = _check_teachers(found, specs)
    out.mkdir(parents=True, exist_ok=True)

    shard_size = cfg.shard_size - cfg.shard_size % cfg.batch_size or cfg.batch_size  # whole batches per shard
    shards: list[ShardInfo] = []
    for source in found:
        chunks = [source.candidates[i : i + shard_size] for i in range(0, len(source.candidates), shard_size)]
        with tqdm(total=len(source.candidates), desc=f"teachers on {source.name}", unit="group") as bar:
            for number, chunk in enumerate(chunks):
                file = f"{source.name}-{number:05d}.jsonl"
                if file in done:
                    shards.append(done[file])
                    bar.update(len(chunk))
                    continue
                shards.append(write_shard(out / file, _score_shard(chunk, source, teachers, cfg.batch_size, bar)))
                done[file] = shards[-1]
                atomic_write_json(out / STATE, {"key": key, "shards": [asdict(s) for s in done.values()]})

    tokenizer = load_tokenizer(cfg.student)
    texts = (t for s in found for t in (s.idf_texts() if s.idf_texts else s.corpus))
    save_idf(compute_idf(tqdm(texts, desc="IDF", unit="doc", mininterval=2), tokenizer), tokenizer, out / "idf.json")

    counts = {s.name: s.counts for s in found}
    config = {"key": key, **{k: OmegaConf.to_container(cfg, resolve=True)[k] for k in SETTINGS}}
    details = [{"name": s.name, "kind": s.kind, "model": s.model, **s.options} for s in specs]
    Manifest(cfg.group_size, names, shards, counts, config, teacher_details=details).save(out)
    (out / STATE).unlink(missing_ok=True)
    _print_counts(counts, out)
    return out


def _print_counts(counts: dict[str, dict[str, int]], out: Path) -> None:
    keys = list(dict.fromkeys(k for c in counts.values() for k in c))
    width = max(map(len, keys)) + 2
    lines = [f"{'':{width}}" + "".join(f"{name:>12}" for name in counts)]
    lines += [f"{k:{width}}" + "".join(f"{c.get(k, 0):>12}" for c in counts.values()) for k in keys]
    print("\n".join(lines) + f"\nprepared set: {out} (counts also in {MANIFEST})", flush=True)
