"""Worker processes that read the input themselves and each build every Nth chunk (issue 22).

With `--workers N` and rows that leave in input order, the main process neither parses the
input nor pickles records to a pool. Each worker, forked before the writers start so it
inherits the options and a format's hooks, streams the inputs itself, applies the same
filter and limit, cuts the same chunks, and builds rows only for the chunks k with
k % N == its number. The main process takes chunk 0 from worker 0, chunk 1 from worker 1,
and so on, and writes them: the rows and their order are those of one process.

What happened while a chunk filled (records read, rejected by the reader, filtered) travels
with that chunk (`medrl.data.chunks.Tally`), so the counts, the progress bar and the rejects
file are also those of one process. Measured on 100,000 grounding records (2026-12-04): reading the input
again costs a worker about 5 us a record, where pickling records to a pool and back cost the
two sides about 13 us a record and kept the main process busy.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Callable, Iterator



QUEUE_CHUNKS = 2  # finished chunks a worker may hold ahead of the writer (memory stays flat)

Chunks = Iterator[tuple[object, list]]  # each chunk with what happened while it filled; the last may be empty


class WorkerFailed(RuntimeError):
    """A worker process raised or died; the message carries its traceback or exit code."""


def _work(make_chunks: Callable[[], Chunks], build: Callable[[list], list], shard: int, shards: int,
          out: Connection, others: list[Connection]) -> None:
    """A worker: build this shard's chunks and send (tally, results, is last) for each, in order."""
    for conn in others:  # the other pipes' ends this fork copied: else another worker's death is no end of file
        conn.close()
    # A thread sends while the worker builds on: up to QUEUE_CHUNKS finished chunks wait (a send
    # blocks while the pipe is full; sending from the builder cost a fifth of embed mode's speed).
    pending: queue.Queue = queue.Queue(QUEUE_CHUNKS)
    sender = threading.Thread(target=_send_all, args=(pending, out), daemon=True)
    sender.start()
    try:
        chunks = make_chunks()
        current = next(chunks)
        k = 0
        while True:
            following = next(chunks, None)  # one ahead: the last chunk says so
            if k % shards == shard:
                tally, chunk = current
                pending.put((tally, build(chunk), following is None))
            if following is None:
                break
            current, k = following, k + 1
    except BaseException:  # noqa: BLE001 - the main process re-raises it with this traceback
        pending.put(WorkerFailed(f"conversion worker {shard} failed:\n{traceback.format_exc()}"))
    finally:
        pending.put(None)
        sender.join()
        out.close()


def _send_all(pending: queue.Queue, out: Connection) -> None:
    """The worker's sending thread: each item in turn, until None; after a broken pipe, drop the rest."""
    broken = False
    while (item := pending.get()) is not None:
        if not broken:
            try:
                out.send(item)
            except OSError:  # the main process stopped reading: it ends this worker
                broken = True


class ShardedRun:
    """`shards` forked workers; iterate it for (tally, results) of every chunk, in input order.

    Enter it before any thread starts in this process (the parquet writers' threads, tqdm's
    monitor): a fork copies only the forking thread, and a lock another thread held stays
    locked in the child.
    """

    def __init__(self, make_chunks: Callable[[], Chunks], build: Callable[[list], list], shards: int):
        self.shards = shards
        ctx = mp.get_context("fork")  # the workers inherit the options, hooks and caches: nothing is pickled
        # A pipe per worker, not a multiprocessing.Queue: this process closes its copy of the
        # sending end, so a worker that dies, even halfway through a message, is an end of file
        # here and never a wait without end.
        pipes = [ctx.Pipe(duplex=False) for _ in range(shards)]
        self.conns = [r for r, _ in pipes]
        self._senders = [w for _, w in pipes]
        self.procs = [ctx.Process(target=_work, name=f"medrl-convert-{i}", daemon=True,
                                  args=(make_chunks, build, i, shards, pipes[i][1],
                                        [c for j, pair in enumerate(pipes) for c in pair if c is not pipes[i][1]]))
                      for i in range(shards)]

    def __enter__(self) -> "ShardedRun":
        for p in self.procs:
            p.start()
        for w in self._senders:
            w.close()
        return self

    def __iter__(self) -> Iterator[tuple[object, list]]:
        k = 0
        while True:
            tally, results, last = self._get(k % self.shards)
            yield tally, results
            if last:
                return
            k += 1

    def _get(self, shard: int) -> tuple:
        try:
            item = self.conns[shard].recv()
        except (EOFError, OSError):
            proc = self.procs[shard]
            proc.join(timeout=5)
            raise WorkerFailed(f"conversion worker {shard} exited with code {proc.exitcode} "
                               "before sending its next chunk") from None
        if isinstance(item, WorkerFailed):
            raise item
        return item

    def __exit__(self, *exc) -> bool:
        for conn in self.conns:  # a worker still sending gets a broken pipe and ends
            conn.close()
        for p in self.procs:  # on success every worker has sent its last chunk and ends by itself
            if exc[0] is not None:
                p.terminate()
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        return False
