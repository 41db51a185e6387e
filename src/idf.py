"""IDF of any corpus with a model's tokenizer, as idf.json (token -> weight), the inference-free query side:

    python -m src.idf CORPUS [--tokenizer MODEL] [--out idf.json]

CORPUS is a BEIR-layout folder (its corpus.jsonl), a corpus.jsonl, or an `id \\t text` file such as MS MARCO's
collection.tsv (plain or .gz), streamed so the 8.8M passages never sit in memory. `src.prepare` writes the same
file for its sources; train from a given one with `python -m src.train query.idf=FILE`.
"""

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from src.data.corpus import corpus_texts
from src.model.encoders import compute_idf, load_tokenizer, save_idf


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
