"""Query a sparse index from the terminal: `python -m src.search DIR "query"` (no query: read lines from stdin).

Shows the top documents and, for each, the matching terms with query weight x document weight.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from src.retrieval.index_folder import IndexSearcher


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="a folder written by `python -m src.index` (or its index/)")
    parser.add_argument("query", nargs="*", help="the query; none: one query per line from stdin")
    parser.add_argument("-k", "--top-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    args = parser.parse_args(argv)
    searcher = IndexSearcher(args.index)
    queries = [" ".join(args.query)] if args.query else (line.strip() for line in sys.stdin)
    if not args.query and sys.stdin.isatty():
        print("type a query and press enter (Ctrl-D to quit)", file=sys.stderr)
    for query in queries:
        if not query:
            continue
        if args.json:
            print(json.dumps({"query": query, "hits": searcher.explain(query, args.top_k)}, default=np.float64))
        else:
            searcher.print_results(query, args.top_k)


if __name__ == "__main__":
    main()
