"""mm-parallel: parallel engines for mm."""

__version__ = "0.1.0"

from mm_parallel.attention import attention
from mm_parallel.context import ContextParallel, build_context, context_parallel
from mm_parallel.sequence import gather_sequence, split_sequence
from mm_parallel.tp_ops import vocab_parallel_cross_entropy

__all__ = [
    "ContextParallel",
    "attention",
    "build_context",
    "context_parallel",
    "gather_sequence",
    "split_sequence",
    "vocab_parallel_cross_entropy",
]
