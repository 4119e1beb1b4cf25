"""The web server's memory bounds in glibc (``bound_malloc``), kept apart from the page so that
a process can take them before it imports anything heavy (the test's probe does)."""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 256 * 1024  # bytes: larger blocks go back to the system when freed


def bound_malloc() -> bool:
    """Keeps a long-running server's resident memory flat (glibc; elsewhere nothing happens).

    Requests are served from many threads (Gradio's workers, the sampler's, XLA's), and glibc
    gives threads heaps of their own (arenas: up to 8 per core), each keeping the freed space of
    the largest request it served (WAVs, piano-roll rasters, pandas frames; glibc serves blocks
    up to 32 MiB from the heaps once one such block was freed) and rarely giving it back: as
    requests land on ever more threads the server's RSS creeps up (``benchmarks/soak.py``: about
    +0.3 MB per request). Two heaps bound that by what two requests at once need; no cost in
    speed was measured. Blocks of ``MMAP_THRESHOLD`` bytes and up are always mapped on their
    own and unmapped when freed (glibc's threshold otherwise rises to the largest block freed, up
    to 32 MiB, and a heap keeps such blocks where it cannot give them back: a step of about
    +10 % between requests 150 and 300 of a CI soak, with two heaps). A ``MALLOC_ARENA_MAX`` in
    the environment is left alone. Returns whether glibc took the settings."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):  # not glibc
        return False
    m_arena_max, m_mmap_threshold = -8, -3  # glibc's malloc.h
    return mallopt(m_arena_max, 2) == 1 and mallopt(m_mmap_threshold, MMAP_THRESHOLD) == 1
