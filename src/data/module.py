"""LightningDataModule serving tokenised (query, G documents, teacher scores) groups."""

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from src.data.beir import BeirDataset, load_beir, subsample
from src.data.mining import Group, MiningConfig, load_or_build_groups

log = logging.getLogger(__name__)


class GroupDataset(Dataset):
    """Texts of each group: (query, [positive, negatives...], teacher scores)."""

    def __init__(self, groups: list[tuple[str, list[str], list[float]]]):
        self.groups = groups

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> tuple[str, list[str], list[float]]:
        return self.groups[i]


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of groups with similar document lengths, so little of each batch is padding.

    Each epoch shuffles the groups (seed + epoch), cuts them into pools of `pool_batches` batches,
    sorts each pool by length and serves the pool's batches in shuffled order: batches stay random
    in content and order, but their documents are padded to a similar length. Incomplete batches
    are dropped, as with `drop_last`.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, pool_batches: int = 32):
        self.lengths, self.batch_size, self.seed, self.pool_batches = lengths, batch_size, seed, pool_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it at every epoch start
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        order = order[: len(self) * self.batch_size]
        pool_size = self.batch_size * self.pool_batches
        for start in range(0, len(order), pool_size):
            pool = sorted(order[start : start + pool_size], key=lambda i: self.lengths[i])
            batches = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            rng.shuffle(batches)
            yield from batches


class GroupCollator:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, query_max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = query_max_length

    def __call__(self, batch: list[tuple[str, list[str], list[float]]]) -> dict[str, torch.Tensor]:
        queries, docs, scores = zip(*batch, strict=True)
        q = self.tokenizer(
            list(queries), padding=True, truncation=True, max_length=self.query_max_length, return_tensors="pt"
        )
        d = self.tokenizer(
            [t for group in docs for t in group],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {
            "query_ids": q["input_ids"],  # (N, Lq)
            "query_mask": q["attention_mask"],
            "doc_ids": d["input_ids"],  # (N*G, Ld)
            "doc_mask": d["attention_mask"],
            "teacher_scores": torch.tensor(scores, dtype=torch.float32),  # (N, G)
        }


class DistillationDataModule(L.LightningDataModule):
    """Train splits of BEIR datasets turned into distillation groups (mined once, then cached)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        data_dir: str,
        datasets: list[str],
        split: str,
        mining: MiningConfig,
        cache_dir: str,
        batch_size: int,
        max_length: int,
        query_max_length: int,
        max_queries: int | None = None,
        num_workers: int = 0,
        download: bool = False,
        seed: int = 0,
        bucket_by_length: bool = True,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.data_dir, self.dataset_names, self.split = data_dir, list(datasets), split
        self.mining, self.cache_dir = mining, Path(cache_dir)
        self.batch_size, self.num_workers, self.download, self.seed = batch_size, num_workers, download, seed
        self.max_queries, self.bucket_by_length, self.max_length = max_queries, bucket_by_length, max_length
        self.collate = GroupCollator(tokenizer, max_length, query_max_length)
        self.train_set: GroupDataset | None = None
        self.corpora: list[BeirDataset] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        rows: list[tuple[str, list[str], list[float]]] = []
        for name in self.dataset_names:
            # max_queries cuts before mining, so the teacher only scores what is used
            dataset = subsample(load_beir(self.data_dir, name, self.split, self.download), self.max_queries, None)
            self.corpora.append(dataset)
            groups: list[Group] = load_or_build_groups(dataset, self.mining, self.cache_dir)
            rows += [
                (dataset.queries[g.query_id], [dataset.corpus[d] for d in g.doc_ids], g.teacher_scores) for g in groups
            ]
            log.info("%s/%s: %d training groups", name, self.split, len(groups))
        self.train_set = GroupDataset(rows)

    def doc_lengths(self) -> list[int]:
        """Tokens of each group's longest document (capped at max_length): its padded length."""
        docs = [doc for _, group, _ in self.train_set.groups for doc in group]
        ids = self.tokenizer(docs, truncation=True, max_length=self.max_length, verbose=False)["input_ids"]
        group_size = len(self.train_set.groups[0][1])
        return [max(map(len, ids[i : i + group_size])) for i in range(0, len(ids), group_size)]

    def train_dataloader(self) -> DataLoader:
        if self.bucket_by_length:
            sampler = LengthBucketSampler(self.doc_lengths(), self.batch_size, self.seed)
            return DataLoader(
                self.train_set, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers
            )
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=generator,
        )
