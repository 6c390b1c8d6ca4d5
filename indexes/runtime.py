"""Process-wide settings: made once, at start-up, by the program that owns the process.

Library code in ``signals/`` and ``indexes/`` never changes process-wide state (thread
pools, environment variables, the garbage collector): a library call that did would
change every other user of that state in the process, behind its caller's back (FAISS's
OpenMP pool is one per process, whichever ``VectorIndex`` asked). The program that owns
the process decides, here: the CLI at the start of a command, the batch job's driver
and each of its Ray actors, each Ray Serve replica in its constructor. Call
:func:`configure_process` before any model or index is loaded (OpenMP reads its wait
policy when it starts).

It lives in ``indexes`` because it sets FAISS's threads, and ``signals`` never imports
FAISS; torch is imported only when its threads are asked for.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import faiss

from signals.errors import InvalidInput

OmpWaitPolicy = Literal["passive", "active"]


def configure_process(
    *,
    faiss_threads: int | None = None,
    torch_threads: int | None = None,
    omp_wait_policy: OmpWaitPolicy | None = None,
) -> None:
    """Set the process-wide knobs; ``None`` leaves a knob at its library default.

    - ``faiss_threads``: FAISS's OpenMP threads (``indexes.vector.threads`` in the config).
    - ``torch_threads``: torch's intra-op threads, for the ``torch`` text backend only
      (``signals.text_embedding.threads``); imports torch, so pass it only for that backend.
    - ``omp_wait_policy``: ``OMP_WAIT_POLICY`` for OpenMP runtimes not started yet (torch,
      FAISS): ``passive`` unless ``signals.text_embedding.spin_wait`` (about 2.5x the
      torch backend's throughput on 2 busy cores, 0.94x on quiet ones). A value already in
      the environment wins: the operator's setting beats ours.

    Safe to call again with the same values.
    """
    for name, value in (("faiss_threads", faiss_threads), ("torch_threads", torch_threads)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidInput(name, f"threads must be an int >= 1, got {value!r}")
    if omp_wait_policy is not None:
        if omp_wait_policy not in ("passive", "active"):
            raise InvalidInput("omp_wait_policy", f"'passive' or 'active', not {omp_wait_policy!r}")
        os.environ.setdefault("OMP_WAIT_POLICY", omp_wait_policy.upper())
    if faiss_threads is not None:
        faiss.omp_set_num_threads(faiss_threads)
    if torch_threads is not None:
        try:
            import torch
        except ImportError as exc:
            raise ImportError(
                "torch_threads is for the torch text backend, which needs torch (CPU build): "
                "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu") from exc
        torch.set_num_threads(torch_threads)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a bulk loop of the process owner's.

    For a program's own loops that build many small acyclic containers (the batch job's
    parse of a catalogue for the pair features: :meth:`indexes.pair_features.ParsedRecords.parse`),
    where the collections that the allocations trigger may cost more than the work. The
    collector is process-wide, so only the program that owns the process may pause it,
    never a library call; it is re-enabled on exit if it was enabled on entry.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
