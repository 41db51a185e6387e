"""LightningDataModule serving tokenised (query, G documents, teacher target) groups from a prepared set."""

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from src.data.groups import GroupRecord, PreparedSet
from src.teachers import combine

log = logging.getLogger(__name__)


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
    """Tokenises a batch of groups and turns its teachers' scores into one (N, G) target: each teacher
    min-max normalised over this batch, then averaged (`src.teachers.combine`), times `scale`."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int,
        query_max_length: int,
        normalize: str = "minmax",
        weights: dict[str, float] | None = None,
        scale: float = 1.0,
    ):
        self.tokenizer = tokenizer
        self.max_length, self.query_max_length = max_length, query_max_length
        self.normalize, self.weights, self.scale = normalize, weights, scale

    def __call__(self, batch: list[GroupRecord]) -> dict[str, torch.Tensor]:
        q = self.tokenizer(
            [g.query for g in batch],
            padding=True,
            truncation=True,
            max_length=self.query_max_length,
            return_tensors="pt",
        )
        d = self.tokenizer(
            [doc for g in batch for doc in g.docs],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        scores = {name: torch.tensor([g.scores[name] for g in batch], dtype=torch.float32) for name in batch[0].scores}
        return {
            "query_ids": q["input_ids"],  # (N, Lq)
            "query_mask": q["attention_mask"],
            "doc_ids": d["input_ids"],  # (N*G, Ld)
            "doc_mask": d["attention_mask"],
            "teacher_scores": combine(scores, self.normalize, self.weights) * self.scale,  # (N, G)
        }


class DistillationDataModule(L.LightningDataModule):
    """Groups of a prepared set (src/prepare.py), read from disk item by item."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prepared_dir: str | Path,
        batch_size: int,
        max_length: int,
        query_max_length: int,
        normalize: str = "minmax",
        weights: dict[str, float] | None = None,
        scale: float = 1.0,
        num_workers: int = 0,
        seed: int = 0,
        bucket_by_length: bool = True,
    ):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.bucket_by_length = bucket_by_length
        self.collate = GroupCollator(tokenizer, max_length, query_max_length, normalize, weights, scale)
        self.train_set: PreparedSet | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = PreparedSet(self.prepared_dir)
            log.info(
                "%s: %d training groups, teachers %s", self.prepared_dir, len(self.train_set), self.train_set.teachers
            )

    def doc_lengths(self) -> list[int]:
        """Characters of each group's longest document: a tokenizer-free proxy for its padded length."""
        return [max(map(len, group.docs)) for group in self.train_set]

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
