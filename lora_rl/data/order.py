"""The order samples are served in: a seeded permutation per epoch, and a resumable position.

The whole order is a pure function of (seed, epoch), so a resumed run only needs (epoch, offset)
to continue with exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lora_rl.data.jsonl import DataError


@dataclass
class DataPosition:
    epoch: int = 0
    offset: int = 0


class DataOrder:
    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        if size <= 0:
            raise DataError("empty data set")
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.position = DataPosition()

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}").shuffle(order)
        return order

    def next_batch(self, batch_size: int) -> tuple[list[int], int]:
        """The next `batch_size` indices (an epoch's incomplete tail is dropped) and the epoch
        they belong to."""
        if batch_size > self.size:
            raise DataError(f"global batch {batch_size} is larger than the data set "
                             f"({self.size} records)")
        if self.position.offset + batch_size > self.size:
            self.position = DataPosition(self.position.epoch + 1, 0)
        start = self.position.offset
        epoch = self.position.epoch
        self.position = DataPosition(epoch, start + batch_size)
        return self._permutation(epoch)[start:start + batch_size], epoch

    def state(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "offset": self.position.offset}

    def load_state(self, state: dict[str, int]) -> None:
        self.position = DataPosition(int(state["epoch"]), int(state["offset"]))
