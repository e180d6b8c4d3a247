"""Episodes played in parallel worker processes, one game per worker.

A job is a picklable object with ``open()`` (make the game and policy, inside the worker),
``run(index)`` (play episode ``index``; return a small picklable result) and ``close()``.
Workers are fresh interpreters (spawn: no forked game or torch state) on one thread each.
A worker closes its game when it finishes, is terminated, or finds its parent gone, so
VizDoom's game processes are never left behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from worldsim.errors import WorldsimError


class EpisodeJob(Protocol):
    """What :func:`run_episodes` needs from a job."""

    def open(self) -> None: ...

    def run(self, index: int) -> Any: ...

    def close(self) -> None: ...


class GameJob:
    """Base of jobs whose :meth:`open` makes one game (``_game``) and one policy
    (``_policy``) in each worker: closes the game, and pickles without them (every worker
    opens its own)."""

    _game: Any
    _policy: Any

    def close(self) -> None:
        if self._game is not None:
            self._game.close()
            self._game = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_game": None, "_policy": None}


def run_episodes(job: EpisodeJob, indices: Sequence[int], workers: int,
                 what: str = "worker") -> Iterator[Any]:
    """Yield ``job.run(i)`` for every index, in the order episodes finish.

    Args:
        job: the work; opened once per worker.
        indices: episode numbers to play.
        workers: worker processes; 1 plays in this process.
        what: the kind of worker, for error messages (e.g. "collection").
    """
    if not indices:
        return
    if workers == 1:
        job.open()
        try:
            for index in indices:
                yield job.run(index)
        finally:
            job.close()
        return
    context = mp.get_context("spawn")
    tasks: Any = context.Queue()
    results: Any = context.Queue()
    for index in indices:
        tasks.put(index)
    count = min(workers, len(indices))
    for _ in range(count):
        tasks.put(None)  # one stop sign per worker
    processes = [context.Process(target=_worker_loop, args=(job, tasks, results), daemon=True)
                 for _ in range(count)]
    for process in processes:
        process.start()
    try:
        for _ in indices:
            item = _next_result(results, processes)
            if isinstance(item, _Failure):
                raise WorldsimError(f"a {what} worker failed:\n{item.text}")
            yield item
    finally:
        for process in processes:  # workers close their games before they exit
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


class _Failure:
    """A worker's traceback, sent back instead of a result."""

    def __init__(self, text: str) -> None:
        self.text = text


def _next_result(results: Any, processes: list[Any]) -> Any:
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            dead = [p for p in processes if p.exitcode not in (None, 0)]
            if dead:
                return _Failure(f"worker process exited with code {dead[0].exitcode}")


def _worker_loop(job: EpisodeJob, tasks: Any, results: Any) -> None:
    # A terminated worker still closes its game: VizDoom runs the game in a child process
    # that would otherwise be left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    import torch

    torch.set_num_threads(1)  # one core per worker: frame work must not oversubscribe
    parent = os.getppid()
    try:
        job.open()
        while (index := tasks.get()) is not None:
            if os.getppid() != parent:  # the parent was killed: stop, finished files are safe
                break
            results.put(job.run(index))
    except Exception:
        results.put(_Failure(traceback.format_exc()))
    finally:
        job.close()
