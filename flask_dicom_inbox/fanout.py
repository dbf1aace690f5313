"""One request's work in chunks that every worker sharing the Redis can take.

The request's own job (the coordinator) posts a phase's chunks on a board in Redis, queues a
few helper jobs, and works through the chunks itself; a helper job that any worker on any
machine picks up takes chunks from the same board. A chunk is claimed with an expiring key
that is renewed while it runs: a helper that dies loses its claim and the coordinator posts
the chunk again. Work on a chunk is idempotent (a file stored twice is stored once), so a
chunk done twice does no harm.

Each attempt at a request is a *run* with its own token. A new run first waits until no
claim of an earlier run is alive, so an orphaned helper never races the retry.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import redis

from . import deadline

log = logging.getLogger("flask_dicom_inbox")

#: Chunk keys outlive a dead run this long at most (a live run deletes them at its end).
KEY_TTL = 7 * 24 * 3600

_POST_BATCH = 16

#: The longest a waiting helper or coordinator blocks in Redis before it looks around again
#: (renews its roll entry, asks whether the run goes on, looks for lapsed claims). The post
#: of a phase and the end of each chunk wake the waiters at once; a 10 ms poll cost each
#: phase up to 10 ms at its start and as much at its end, and a waiting helper four Redis
#: calls every 10 ms.
WAIT_SECONDS = 0.05

#: ``(payload, heartbeat) -> result``: the work on one chunk. Call ``heartbeat()`` often.
ChunkWork = Callable[[Any, Callable[[], None]], Any]

_TAKE = """
local i = redis.call('LPOP', KEYS[1])
if not i then return false end
redis.call('SET', KEYS[2] .. i, ARGV[1], 'EX', ARGV[2])
return i
"""


_ROLL_JOIN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]) * 1000, ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return redis.call('ZCARD', KEYS[1])
"""


class RunSuperseded(Exception):
    """This run no longer holds its request: its lease lapsed (the work-horse was stopped, or
    cut off from Redis, for longer than the lease), so another run may have begun.

    The run stops where it is and leaves the request's record, folders and source to the run
    that holds the lease now; what it stored is stored (storing is idempotent).
    """


def run_key(key_prefix: str, request_id: int) -> str:
    """Holds the token of the request's current run."""
    return f"{key_prefix}request:{int(request_id)}:run"


def _run_base(key_prefix: str, request_id: int, run: str) -> str:
    return f"{key_prefix}request:{int(request_id)}:run:{run}:"


class ChunkBoard:
    """The chunks of one phase of one run: payloads, a pending list, claims, results."""

    def __init__(
        self,
        connection: redis.Redis,
        key_prefix: str,
        request_id: int,
        run: str,
        phase: str,
        *,
        claim_seconds: int,
    ) -> None:
        self._r = connection
        self._phase = phase
        self._phases = _run_base(key_prefix, request_id, run) + _PHASES
        self._base = f"{_run_base(key_prefix, request_id, run)}{phase}:"
        self.claim_seconds = max(1, int(claim_seconds))
        self._owner = uuid.uuid4().hex
        self._take = connection.register_script(_TAKE)

    def _k(self, name: str) -> str:
        return self._base + name

    def post(self, payloads: Iterable[Any], meta: Mapping[str, Any]) -> int:
        """Put every chunk up for taking; returns how many.

        Chunks are encoded and written in batches as ``payloads`` makes them (a 50,000-file
        request's payloads, made and encoded at once, would be tens of MB), then offered all
        together: nobody takes one before that.
        """
        count = 0
        batch = self._r.pipeline(transaction=False)  # emptied by each execute()
        # The run's end deletes its keys by name, phase by phase (never by a SCAN of the
        # whole keyspace): the phase is named in the run before its first key is written.
        # ... and "written" bounds the chunk keys written so far, even if the post is cut
        # short: each batch sets it to its own end before its first chunk.
        batch.sadd(self._phases, self._phase)
        batch.expire(self._phases, KEY_TTL)
        batch.set(self._k("written"), _POST_BATCH, ex=KEY_TTL)
        for payload in payloads:
            batch.set(self._k(f"chunk:{count}"), json.dumps(payload), ex=KEY_TTL)
            count += 1
            if count % _POST_BATCH == 0:
                batch.execute()
                batch.set(self._k("written"), count + _POST_BATCH, ex=KEY_TTL)
        batch.execute()
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._k("pending"), self._k("done"))
        pipe.set(self._k("meta"), json.dumps(meta), ex=KEY_TTL)
        pipe.set(self._k("total"), count, ex=KEY_TTL)
        if count:
            pipe.rpush(self._k("pending"), *range(count))
            pipe.expire(self._k("pending"), KEY_TTL)
        # One token wakes every helper blocked in wait_for_post(): each takes it and puts it
        # back in one step, so it stays for the next (and for a helper that comes later).
        pipe.delete(self._k("posted"))
        pipe.rpush(self._k("posted"), 1)
        pipe.expire(self._k("posted"), KEY_TTL)
        pipe.execute()
        return count

    def wait_for_post(self, timeout: float) -> None:
        """Block until the phase is posted, at most ``timeout`` seconds."""
        self._r.brpoplpush(self._k("posted"), self._k("posted"), timeout=timeout)

    def meta(self) -> dict[str, Any] | None:
        raw = self._r.get(self._k("meta"))
        return None if raw is None else dict(json.loads(raw))

    def total(self) -> int:
        raw = self._r.get(self._k("total"))
        return 0 if raw is None else int(raw)

    def take(self) -> tuple[int, Any] | None:
        """Claim the next pending chunk (atomically with its removal from the list)."""
        raw = self._take(
            keys=[self._k("pending"), self._k("claim:")],
            args=[self._owner, self.claim_seconds],
        )
        if raw is None:
            return None
        index = int(raw)
        payload = self._r.get(self._k(f"chunk:{index}"))
        if payload is None:  # the run ended meanwhile
            return None
        return index, json.loads(payload)

    def renew(self, index: int) -> None:
        self._r.set(self._k(f"claim:{index}"), self._owner, ex=self.claim_seconds)

    def finish(self, index: int, result: Any) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._k(f"result:{index}"), json.dumps(result), ex=KEY_TTL)
        pipe.sadd(self._k("done"), index)
        pipe.expire(self._k("done"), KEY_TTL)
        pipe.delete(self._k(f"claim:{index}"))
        pipe.rpush(self._k("finished"), index)  # wakes the coordinator's wait_for_finish()
        pipe.expire(self._k("finished"), KEY_TTL)
        pipe.execute()

    def done_count(self) -> int:
        return int(self._r.scard(self._k("done")))

    def wait_for_finish(self, timeout: float) -> None:
        """Block until a chunk is finished (since the last call), at most ``timeout``
        seconds; the caller then counts the done chunks.

        The wake-ups queued meanwhile (one per chunk, the caller's own included) are dropped
        after the first: the count the caller reads next already holds their chunks.
        """
        if self._r.blpop([self._k("finished")], timeout=timeout) is not None:
            self._r.delete(self._k("finished"))

    def reclaim_lapsed(self) -> list[int]:
        """Post again each chunk neither done, pending nor claimed (its taker died)."""
        total = self.total()
        done = {int(x) for x in self._r.smembers(self._k("done"))}
        pending = {int(x) for x in self._r.lrange(self._k("pending"), 0, -1)}
        lapsed = []
        for i in range(total):
            if i in done or i in pending or self._r.exists(self._k(f"claim:{i}")):
                continue
            # Re-check done: the taker may have finished between the reads above.
            if self._r.sismember(self._k("done"), str(i)):
                continue
            lapsed.append(i)
        if lapsed:
            self._r.rpush(self._k("pending"), *lapsed)
            log.warning("dicom-inbox: chunk(s) %s lost their worker; posted again", lapsed)
        return lapsed

    def results(self) -> Iterator[Any]:
        """Each chunk's result in order, read as it is asked for (never all at once)."""
        for i in range(self.total()):
            raw = self._r.get(self._k(f"result:{i}"))
            if raw is None:
                raise RuntimeError(f"chunk {i} has no result")
            yield json.loads(raw)


class HelperRoll:
    """The helpers a run can count on: queued, waiting for its next phase, or taking chunks.

    The coordinator enters each helper it queues; a helper renews its entry while it waits
    and before each phase's work, and leaves at its end. An entry lapses ``seconds`` after
    its last renewal (Redis's clock, so machines' clocks never disagree): a helper that died,
    or still waits in the queue behind other jobs, stops counting then.
    """

    def __init__(
        self, connection: redis.Redis, key_prefix: str, request_id: int, run: str, *, seconds: int
    ) -> None:
        self._r = connection
        self._key = f"{_run_base(key_prefix, request_id, run)}helpers"
        self.seconds = max(1, int(seconds))
        self._join = connection.register_script(_ROLL_JOIN)

    def renew(self, helper: str) -> int:
        """Enter or renew ``helper``; returns how many helpers count now."""
        return int(self._join(keys=[self._key], args=[helper, self.seconds, KEY_TTL]))

    def count(self) -> int:
        return int(self._join(keys=[self._key], args=["", 0, 0]))

    def leave(self, helper: str) -> None:
        self._r.zrem(self._key, helper)


def await_posting(
    board: ChunkBoard,
    roll: HelperRoll,
    helper: str,
    *,
    may_wait: Callable[[], bool],
    patience: float,
    poll_seconds: float = WAIT_SECONDS,
) -> dict[str, Any] | None:
    """A helper between phases: the phase's meta once the coordinator posts it, or None.

    A helper that stays saves the next phase a new job's start and the time a newly queued
    helper takes to reach a worker (20-30 ms here; a 1,000-file import takes 0.3-0.7 s). It
    waits at most ``patience`` seconds, and only while ``may_wait()`` (the run goes on, no
    other job needs the worker); then it leaves the roll, so the coordinator queues a new
    helper instead.
    """
    give_up = time.monotonic() + patience
    while True:
        meta = board.meta()
        if meta is not None:
            return meta
        if time.monotonic() > give_up or not may_wait():
            roll.leave(helper)
            return board.meta()  # posted meanwhile: the coordinator counted on this helper
        deadline.check()
        roll.renew(helper)
        board.wait_for_post(max(0.001, min(poll_seconds, give_up - time.monotonic())))


class _Heartbeat:
    """Renews a chunk's claim when a third of its lifetime has passed."""

    def __init__(self, board: ChunkBoard, index: int) -> None:
        self._board = board
        self._index = index
        self._every = board.claim_seconds / 3
        self._last = time.monotonic()

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self._last >= self._every:
            self._board.renew(self._index)
            self._last = now


def work_through(
    board: ChunkBoard, work: ChunkWork, *, keep_going: Callable[[], bool] = lambda: True
) -> int:
    """Take and do chunks until none is pending; return how many were done here."""
    done = 0
    while keep_going():
        deadline.check()  # the job's timeout, should its alarm have been lost
        taken = board.take()
        if taken is None:
            return done
        index, payload = taken
        result = work(payload, _Heartbeat(board, index))
        board.finish(index, result)
        done += 1
    return done


def run_phase(
    board: ChunkBoard,
    payloads: Iterable[Any],
    meta: Mapping[str, Any],
    work: ChunkWork,
    *,
    start_helpers: Callable[[int], object],
    max_helpers: int,
    poll_seconds: float = WAIT_SECONDS,
    keep_going: Callable[[], bool] = lambda: True,
) -> Iterator[Any]:
    """The coordinator's side of a phase: post, ask for help, work, wait; then each chunk's
    result in order, read from the board as the caller takes it.

    ``keep_going`` is asked before each chunk and each wait; once it says no, the phase
    raises :class:`RunSuperseded` (its chunks may be another run's by then).
    """
    total = board.post(payloads, meta)
    if total > 1 and max_helpers > 0:
        start_helpers(min(total - 1, max_helpers))
    while True:
        work_through(board, work, keep_going=keep_going)
        if not keep_going():
            raise RunSuperseded()
        if board.done_count() >= total:
            return board.results()
        if not board.reclaim_lapsed():
            board.wait_for_finish(poll_seconds)


def begin_run(
    connection: redis.Redis, key_prefix: str, request_id: int, *, claim_seconds: int
) -> str:
    """Start a new run: wait out the live claims of an earlier run, drop its keys."""
    current = run_key(key_prefix, request_id)
    run = uuid.uuid4().hex[:16]
    # From here on, an earlier run's helpers take no more chunks.
    old = connection.set(current, run, ex=KEY_TTL, get=True)
    if old is not None:
        old_run = old.decode() if isinstance(old, bytes) else str(old)
        _wait_for_claims(connection, _run_base(key_prefix, request_id, old_run), claim_seconds)
        _delete_run(connection, _run_base(key_prefix, request_id, old_run))
    return run


def is_current(connection: redis.Redis, key_prefix: str, request_id: int, run: str) -> bool:
    value = connection.get(run_key(key_prefix, request_id))
    if value is None:
        return False
    return (value.decode() if isinstance(value, bytes) else str(value)) == run


def end_run(connection: redis.Redis, key_prefix: str, request_id: int, run: str) -> None:
    """Forget the run's chunks; helpers still queued find nothing and return."""
    if is_current(connection, key_prefix, request_id, run):
        connection.delete(run_key(key_prefix, request_id))
    _delete_run(connection, _run_base(key_prefix, request_id, run))


#: The run's set of the phases it posted (see :meth:`ChunkBoard.post`).
_PHASES = "phases"

#: A phase's keys other than its numbered ones (``chunk:i``, ``result:i``, ``claim:i``).
_PHASE_KEYS = ("meta", "total", "written", "pending", "done", "finished", "posted")

_BATCH = 500


def _phase_bases(connection: redis.Redis, base: str) -> list[str]:
    phases = connection.smembers(base + _PHASES)
    return [f"{base}{p.decode() if isinstance(p, bytes) else p}:" for p in sorted(phases)]


def _number(connection: redis.Redis, key: str) -> int:
    raw = connection.get(key)
    return 0 if raw is None else int(raw)


def _claims(connection: redis.Redis, base: str) -> list[str]:
    """The live claims of the run at ``base``, looked up by name (a chunk is claimed only
    once its phase is posted whole, so its phase's total bounds the indexes)."""
    claims: list[str] = []
    for phase_base in _phase_bases(connection, base):
        total = _number(connection, phase_base + "total")
        for start in range(0, total, _BATCH):
            names = [f"{phase_base}claim:{i}" for i in range(start, min(total, start + _BATCH))]
            pipe = connection.pipeline(transaction=False)
            for name in names:
                pipe.exists(name)
            claims += [name for name, found in zip(names, pipe.execute(), strict=True) if found]
    return claims


def _wait_for_claims(connection: redis.Redis, base: str, claim_seconds: int) -> None:
    """A dead taker's claim lapses within ``claim_seconds``; a live one finishes its chunk."""
    deadline = time.monotonic() + max(600, 20 * claim_seconds)
    while _claims(connection, base):
        if time.monotonic() > deadline:
            log.error("dicom-inbox: a chunk of an earlier run is still claimed; going on")
            return
        time.sleep(0.2)


def _delete_run(connection: redis.Redis, base: str) -> None:
    """Delete the run's keys by name: its roll, and each posted phase's keys.

    A SCAN for the run's prefix read the whole keyspace of the shared Redis at every
    request's end: 92 ms with 100,000 other keys, 538 ms with 500,000 (RQ's job hashes and
    results, other apps). A phase's numbered keys lie below its "written" bound, set before
    its chunks were (a post cut short included).
    """
    for phase_base in _phase_bases(connection, base):
        written = _number(connection, phase_base + "written")
        for start in range(0, written, _BATCH):
            connection.delete(
                *(
                    f"{phase_base}{kind}:{i}"
                    for i in range(start, min(written, start + _BATCH))
                    for kind in ("chunk", "result", "claim")
                )
            )
        connection.delete(*(phase_base + name for name in _PHASE_KEYS))
    connection.delete(base + "helpers", base + _PHASES)
