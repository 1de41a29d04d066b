"""Stop signals (SIGTERM, and SIGUSR1 that Slurm's ``--signal`` sends) turned into a save-and-exit after the step,
and the restart count torchrun gives restarted workers."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def restart_count() -> int:
    """How many times torchrun has restarted this run's workers (``--max-restarts``); 0 outside torchrun."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


class StopSignals:
    """While entered, a stop signal is remembered instead of killing the process; ``agreed`` tells every rank.

    Outside the main thread (where Python cannot install handlers) it never stops anything.
    """

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def agreed(self, device: torch.device) -> int:
        """The signal any rank received (the largest number when several did), else 0; collective."""
        if not dist.is_initialized():
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name
