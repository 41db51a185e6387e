"""Build a distillation training set on disk: `python -m src.prepare datasets=[scifact,nfcorpus] paths.output_dir=DIR`.

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
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from src.config import ConfigError
from src.data.beir import dataset_dir, load_beir, subsample
from src.data.groups import MANIFEST, Candidate, GroupRecord, Manifest, ShardInfo, sha256_file, write_shard
from src.data.mining import mine_groups
from src.encoders import compute_idf, load_tokenizer, resolve_model, save_idf
from src.index import fingerprint
from src.io import atomic_write_json
from src.teachers import CORPUS_DEPENDENT, Teacher, TeacherSpec, build_teacher

log = logging.getLogger(__name__)
STATE = ".prepare-state.json"
SCORE_DECIMALS = 6  # keeps shards small and their bytes independent of float printing noise


# The settings that make a prepared set; the key over them (and the inputs' content) names its cache folder.
SETTINGS = (
    "datasets", "split", "triples", "msmarco", "group_size", "negatives_from_top", "teachers", "seed",
    "max_queries", "batch_size", "shard_size", "idf_tokenizer",
)  # fmt: skip


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


def beir_source(cfg: DictConfig, name: str) -> SourceSpec:
    folder = dataset_dir(cfg.paths.data_dir, name, cfg.download)

    def load() -> Source:
        skipped: dict[str, int] = {}
        dataset = load_beir(cfg.paths.data_dir, name, cfg.split, skipped=skipped)
        dataset = subsample(dataset, cfg.max_queries, None)  # before mining: teachers score only what is used
        candidates, counts = mine_groups(dataset, cfg.group_size, cfg.negatives_from_top, cfg.seed)
        counts = {"qrels_unknown_query": 0, "qrels_unknown_doc": 0, **skipped, **counts}
        return Source(name, candidates, counts, list(dataset.corpus.values()))

    return SourceSpec(
        name, [folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels" / f"{cfg.split}.tsv"], load
    )


def triples_source(cfg: DictConfig, path: str) -> SourceSpec:
    from src.data.msmarco import read_triples, triples_corpus

    if cfg.group_size != 2:
        raise ConfigError(f"group_size: a triples file gives groups of 2, got {cfg.group_size} (triples={path})")
    if not Path(path).is_file():
        raise ConfigError(f"triples: {path} does not exist")

    def load() -> Source:
        candidates, counts = read_triples(Path(path), cfg.max_queries)
        return Source(Path(path).stem, candidates, counts, triples_corpus(candidates))

    return SourceSpec(Path(path).stem, [Path(path)], load)


def source_specs(cfg: DictConfig) -> list[SourceSpec]:
    found = [beir_source(cfg, name) for name in cfg.datasets]
    found += [triples_source(cfg, path) for path in cfg.triples]
    if cfg.msmarco.format:
        from src.data import msmarco

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
    weights = []
    for spec in teacher_specs(cfg):
        if spec.kind in CORPUS_DEPENDENT:
            continue
        folder = Path(resolve_model(spec.model)) if spec.kind == "splade" or spec.model else None
        if folder is not None and folder.is_dir():  # a hub id has no local files: its name in settings is the key
            weights += [sha256_file(p) for p in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))]
    inputs = [sha256_file(p) for s in source_specs(cfg) for p in s.inputs]
    return fingerprint(settings, inputs, weights)


class _Teachers:
    """Loads each teacher once, on first use; corpus-dependent ones once per source."""

    def __init__(self, specs: list[TeacherSpec]):
        self.specs, self.loaded = specs, {}

    def get(self, spec: TeacherSpec, source: Source) -> Teacher:
        key = (spec.name, source.name if spec.kind in CORPUS_DEPENDENT else None)
        if key not in self.loaded:
            log.info("loading teacher %s (%s)", spec.name, spec.kind)
            self.loaded[key] = build_teacher(spec, source.corpus)
        return self.loaded[key]


def _score_shard(
    chunk: list[Candidate], source: Source, teachers: _Teachers, batch_size: int, bar: tqdm
) -> list[GroupRecord]:
    scores: list[dict[str, list[float]]] = [dict(c.given_scores) for c in chunk]
    for start in range(0, len(chunk), batch_size):
        batch = chunk[start : start + batch_size]
        for spec in teachers.specs:
            teacher = teachers.get(spec, source)
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
    found = [spec.load() for spec in source_specs(cfg)]
    names = _check_teachers(found, specs)
    out.mkdir(parents=True, exist_ok=True)

    shard_size = cfg.shard_size - cfg.shard_size % cfg.batch_size or cfg.batch_size  # whole batches per shard
    teachers = _Teachers(specs)
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

    tokenizer = load_tokenizer(cfg.idf_tokenizer)
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


@hydra.main(version_base="1.3", config_path="../conf/tools", config_name="prepare")
def main(cfg: DictConfig) -> None:
    if cfg.paths.output_dir is None:
        raise ConfigError("paths.output_dir: say where the prepared set goes")
    if cfg.overwrite and Path(cfg.paths.output_dir).exists():
        shutil.rmtree(cfg.paths.output_dir)
    prepare(cfg)


if __name__ == "__main__":
    main()
