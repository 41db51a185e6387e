"""IDF of any corpus with a model's tokenizer, as idf.json (token -> weight), the inference-free query side:

    python -m src.idf CORPUS [--tokenizer MODEL] [--out idf.json]

CORPUS is a BEIR-layout folder (its corpus.jsonl), a corpus.jsonl, or an `id \\t text` file such as MS MARCO's
collection.tsv (plain or .gz), streamed so the 8.8M passages never sit in memory. `src.prepare` writes the same
file for its sources; train from a given one with `python -m src.train query.idf=FILE`.
"""

import argparse
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from src.data.beir import load_corpus
from src.data.msmarco import iter_id_text_tsv
from src.model.encoders import compute_idf, load_tokenizer, save_idf


def corpus_texts(path: Path) -> Iterable[str]:
    if path.is_dir():
        path = path / "corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such corpus (give a BEIR folder, a corpus.jsonl or an id<TAB>text file)")
    if path.name.endswith(".jsonl"):
        return load_corpus(path).values()
    return (text for _, _, text in iter_id_text_tsv(path))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--tokenizer", default=None, help="a hub id or model folder; default: the bundled splade-tiny")
    parser.add_argument("--out", type=Path, default=Path("idf.json"))
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    texts = tqdm(corpus_texts(args.corpus), desc="IDF", unit="doc", mininterval=2)
    save_idf(compute_idf(texts, tokenizer), tokenizer, args.out)
    print(f"idf.json over {texts.n:,} documents: {args.out}", flush=True)


if __name__ == "__main__":
    main()
