"""LightningDataModule serving tokenised (query, G documents, raw teacher scores) groups from a prepared set."""

import logging
import random
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from src.data.groups import GroupRecord, PreparedSet

log = logging.getLogger(__name__)


class LengthBucketSampler(Sampler[list[int]]):
    """Seeded batches of groups, optionally of similar document lengths, resumable at any batch.

    Each epoch shuffles the groups (seed + epoch). With `lengths`, it cuts them into pools of
    `pool_batches` batches, sorts each pool by length and serves the pool's batches in shuffled order:
    batches stay random in content and order, but their documents are padded to a similar length.
    Incomplete batches are dropped, as with `drop_last`. `start_batch` (batches already trained on,
    counted from the first epoch) skips what a resumed run has seen, so it continues the same order.

    Data parallel (`num_replicas` W > 1 ranks): every rank builds the same global batches of W x batch_size
    groups (same seed) and takes every W-th group of each, starting at its `rank`: the W local batches of one
    step are together exactly the batch of a one-process run with batch size W x batch_size (bucketed by
    length, the strided share gives every rank similar lengths). len() and `start_batch` count global
    batches, i.e. this rank's batches. Lightning's DistributedSampler must stay off (use_distributed_sampler).
    """

    def __init__(
        self,
        num_groups: int,
        batch_size: int,
        seed: int,
        lengths: list[int] | None = None,
        pool_batches: int = 32,
        start_batch: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas={num_replicas}), got {rank}")
        self.num_groups, self.batch_size, self.seed = num_groups, batch_size, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.global_batch_size = batch_size * num_replicas
        self.lengths, self.pool_batches = lengths, pool_batches
        # Lightning calls set_epoch at each epoch start; before that (its first prefetch) the resumed epoch holds.
        self.epoch, self._skip = divmod(start_batch, max(1, len(self)))
        self._skip_epoch = self.epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def sampler(self) -> "LengthBucketSampler":
        """Lightning calls set_epoch at each epoch start on a batch sampler's `sampler`, never on the batch sampler
        itself: without this, every epoch would repeat the first one's order (and a resume re-skip its batches)."""
        return self

    def __len__(self) -> int:
        return self.num_groups // self.global_batch_size

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        order = list(range(self.num_groups))
        rng.shuffle(order)
        size = self.global_batch_size
        order = order[: len(self) * size]
        pool_size = size * (self.pool_batches if self.lengths else 1)
        batches = []
        for start in range(0, len(order), pool_size):
            pool = order[start : start + pool_size]
            if self.lengths:
                pool.sort(key=lambda i: self.lengths[i])
            pooled = [pool[i : i + size] for i in range(0, len(pool), size)]
            rng.shuffle(pooled)
            batches += pooled
        skip = self._skip if self.epoch == self._skip_epoch else 0
        for batch in batches[skip:]:
            yield batch[self.rank :: self.num_replicas]  # this rank's share of the global batch


class GroupCollator:
    """Tokenises a batch of groups and stacks its teachers' raw scores. They are combined into one target in the
    training step (`src.training.module.distillation_target`): min-max normalised over the global batch of all ranks,
    which a collator, seeing one rank's batch, cannot do."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, query_max_length: int):
        self.tokenizer = tokenizer
        self.max_length, self.query_max_length = max_length, query_max_length

    def __call__(self, batch: list[GroupRecord]) -> dict[str, torch.Tensor | tuple[str, ...]]:
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
        names = tuple(batch[0].scores)  # the records' order: the order in which combine sums the teachers
        scores = torch.tensor([[g.scores[name] for g in batch] for name in names], dtype=torch.float32)  # (T, N, G)
        return {
            "query_ids": q["input_ids"],  # (N, Lq)
            "query_mask": q["attention_mask"],
            "doc_ids": d["input_ids"],  # (N*G, Ld)
            "doc_mask": d["attention_mask"],
            "teacher_scores": scores,  # (T, N, G), raw
            "teacher_names": names,  # T names; Lightning moves the tensors to the device and leaves these be
        }


class DistillationDataModule(L.LightningDataModule):
    """Groups of a prepared set (src/data/prepare.py), read from disk item by item."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prepared_dir: str | Path,
        batch_size: int,
        max_length: int,
        query_max_length: int,
        num_workers: int = 0,
        seed: int = 0,
        bucket_by_length: bool = True,
    ):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.bucket_by_length = bucket_by_length
        self.collate = GroupCollator(tokenizer, max_length, query_max_length)
        self.train_set: PreparedSet | None = None
        self.start_batch = 0  # batches already trained on, when resuming

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = PreparedSet(self.prepared_dir)
            log.info(
                "%s: %d training groups, teachers %s", self.prepared_dir, len(self.train_set), self.train_set.teachers
            )

    def doc_lengths(self) -> list[int]:
        """Characters of each group's longest document: a tokenizer-free proxy for its padded length."""
        return [max(map(len, group.docs)) for group in self.train_set]

    def state_dict(self) -> dict[str, int]:
        """Saved in each checkpoint: where the data order stands, so a resumed run continues it."""
        return {"batches_done": self.trainer.global_step * self.trainer.accumulate_grad_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:  # Lightning calls it before train_dataloader()
        self.start_batch = state["batches_done"]

    def train_dataloader(self) -> DataLoader:
        lengths = self.doc_lengths() if self.bucket_by_length else None
        # Under DDP each rank serves its share of the same global batches (the trainer knows rank and world size).
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = LengthBucketSampler(
            len(self.train_set),
            self.batch_size,
            self.seed,
            lengths,
            start_batch=self.start_batch,
            num_replicas=world,
            rank=rank,
        )
        return DataLoader(self.train_set, batch_sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers)
