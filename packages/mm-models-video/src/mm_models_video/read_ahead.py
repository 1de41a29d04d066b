"""Batches read ahead of the step that trains on them, with a checkpoint that records the trained position.

Encoder-DP and interleaved offload read several steps of batches at once. A checkpoint taken between must resume
after the last batch trained on, not after the last one read: :class:`ReadAhead` makes the data iterator's
``state_dict`` (what the trainer's checkpoint saves) return the position after the last batch served, so a resumed
run reads and encodes the rest of the window again and trains on exactly the batches a straight run does.
"""

from __future__ import annotations

from mm_core.data_iter import DataIterator


class ReadAhead:
    """Reads from ``data_iterator`` ahead of training; its checkpointed position follows :meth:`served`."""

    def __init__(self, data_iterator: DataIterator) -> None:
        self.data_iterator = data_iterator
        self._served: dict | None = None
        data_iterator.state_dict = self.state_dict
        data_iterator.load_state_dict = self.load_state_dict

    def position(self) -> dict:
        """The iterator's position now (after the batches read so far)."""
        return type(self.data_iterator).state_dict(self.data_iterator)

    def served(self, position: dict) -> None:
        """The batch read at ``position`` is the one the current step trains on."""
        self._served = position

    def state_dict(self) -> dict:
        """The position after the last batch served (the iterator's own before any)."""
        return dict(self._served) if self._served is not None else type(self.data_iterator).state_dict(
            self.data_iterator)

    def load_state_dict(self, state: dict) -> None:
        """Resume the iterator at ``state``; nothing served since."""
        self._served = None
        type(self.data_iterator).load_state_dict(self.data_iterator, state)


def read_ahead(data_iterator: DataIterator) -> ReadAhead:
    """The one :class:`ReadAhead` of ``data_iterator`` (made on first use)."""
    existing = getattr(data_iterator, "_read_ahead", None)
    if existing is None:
        existing = data_iterator._read_ahead = ReadAhead(data_iterator)
    return existing
