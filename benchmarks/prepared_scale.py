"""How a prepared set of MS MARCO's size behaves: open time, memory, random reads.

    python benchmarks/prepared_scale.py [--groups 500000] [--dir /tmp/prepared_scale]

Writes `--groups` synthetic groups (G=2, passages of MS MARCO's mean length, ~330 characters) in shards of
10,000 with `write_shard` + `Manifest`, then opens the set with `PreparedSet` and reports the seconds and the
resident memory it takes, and the rate of random single-item reads (what a shuffled DataLoader does).
"""

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/prepared_scale.py`: the root holds benchmarks/harness.py
    sys.path.insert(0, str(ROOT))

from benchmarks import harness
from src.data.groups import GroupRecord, Manifest, PreparedSet, write_shard

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on"]


def text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(map(len, words)) + len(words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def build(folder: Path, groups: int, shard_size: int = 10_000) -> None:
    rng = random.Random(0)
    shards = []
    for start in range(0, groups, shard_size):
        records = [
            GroupRecord(str(i), text(rng, 35), [f"{i}a", f"{i}b"], [text(rng, 330), text(rng, 330)], {"ce": [5.0, 0.0]})
            for i in range(start, min(groups, start + shard_size))
        ]
        shards.append(write_shard(folder / f"synthetic-{len(shards):05d}.jsonl", records))
    Manifest(2, ["ce"], shards, {"synthetic": {"groups": groups}}, {}).save(folder)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=500_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/prepared_scale"))
    args = parser.parse_args()
    if not (args.dir / "manifest.json").is_file():
        seconds, _ = harness.timed(lambda: build(args.dir, args.groups))
        print(f"wrote {args.groups:,} groups in {seconds:.1f} s", flush=True)
    size = sum(p.stat().st_size for p in args.dir.glob("*.jsonl")) / 2**20
    before = harness.maxrss_mib()
    opened, prepared = harness.timed(lambda: PreparedSet(args.dir))
    rng = random.Random(1)
    picks = [rng.randrange(len(prepared)) for _ in range(20_000)]

    def read_picks() -> None:
        for i in picks:
            prepared[i]

    reads = len(picks) / harness.timed(read_picks)[0]
    print(
        f"{len(prepared):,} groups, {size:,.0f} MiB of shards: opened (SHA-256 checked) in {opened:.1f} s, "
        f"peak RSS {before:,.0f} -> {harness.maxrss_mib():,.0f} MiB; {reads:,.0f} random reads/s",
        flush=True,
    )


if __name__ == "__main__":
    main()
