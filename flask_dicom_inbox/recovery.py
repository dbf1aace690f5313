"""Per-request leases and recovery of requests whose worker died.

A running import holds a lease: a Redis lock with a short expiry that a daemon thread in the
work-horse keeps renewing. If the horse is killed (SIGKILL, OOM, machine lost) the renewals
stop and the lease lapses within ``DICOM_INBOX_LEASE_SECONDS``. An orphaned horse whose
worker died keeps renewing while it still works, so a retry never races it.

``recover()`` (run by ``flask dicom-inbox recover`` and at every worker start) re-queues each
unfinished request that holds no lease and has no job waiting to run, without waiting for RQ's
own 10-minute maintenance pass.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import redis
from redis.lock import Lock
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from .jobs import job_id_for
from .requests import QUEUED, now_ms

if TYPE_CHECKING:
    from .extension import InboxState

log = logging.getLogger("flask_dicom_inbox")

#: A request whose job is missing is left alone this long after its last change (a job
#: being enqueued right now is not yet visible).
GRACE_MS = 10_000


def lease_name(state: InboxState, request_id: int) -> str:
    return f"{state.config.key_prefix}request:{request_id}:lease"


class Lease:
    """A renewed Redis lock for one request; ``acquire()`` is non-blocking."""

    def __init__(self, state: InboxState, request_id: int) -> None:
        self._seconds = state.config.lease_seconds
        self._lock: Lock = state.redis.lock(
            lease_name(state, request_id), timeout=self._seconds, blocking=False, thread_local=False
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self._lock.acquire(blocking=False):
            return False
        self._thread = threading.Thread(target=self._renew, name="dicom-inbox-lease", daemon=True)
        self._thread.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                self._lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                # Lapsed (this process was stopped, or cut off from Redis, for longer than the
                # lease): renewing cannot take it back, and another worker may hold it now.
                log.error("dicom-inbox: the lease %s lapsed; this run stops", self._lock.name)
                return
            except (redis.exceptions.LockError, redis.exceptions.ConnectionError) as exc:
                log.warning("dicom-inbox: lease renewal failed: %s", exc)

    def owned(self) -> bool:
        """Whether this lease still holds the request (one Redis read): a run whose lease
        lapsed must stop, since another worker may have started the request again."""
        return self._lock.owned()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._lock.release()
        except redis.exceptions.LockError:
            log.warning("dicom-inbox: lease had lapsed before release")


def is_leased(state: InboxState, request_id: int) -> bool:
    return bool(state.redis.exists(lease_name(state, request_id)))


def recover(state: InboxState) -> list[int]:
    """Re-queue every unfinished request whose job died; return their ids.

    A request whose imports a dead worker cut short ``DICOM_INBOX_MAX_ATTEMPTS`` times (a
    work-horse killed for memory each time, say) is failed instead, with the reason: it
    would take a worker down again and again.
    """
    from .service import enqueue, give_up

    requeued: list[int] = []
    started = StartedJobRegistry(queue=state.queue)
    for record in list(state.store.active()):
        if is_leased(state, record.id):
            continue
        job_id = job_id_for(state.config.key_prefix, record.id)
        status = _job_status(state, job_id)
        if record.status == QUEUED:
            # Statuses past Queued are only set under the lease, so an unleased Accepted or
            # Importing request is dead for sure; a Queued one may be just starting.
            if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                continue
            if status in (None, JobStatus.STARTED) and now_ms() - record.timestamp < GRACE_MS:
                continue
        _forget_started(started, state, job_id)
        attempts = state.store.attempts(record.id) if record.status != QUEUED else 0
        if attempts >= state.config.max_attempts:
            give_up(
                state,
                record.id,
                f"its import was cut short {attempts} times (the job {status or 'lost'}, no "
                "lease: the worker or its work-horse died, e.g. killed for memory); not "
                "re-queued again (DICOM_INBOX_MAX_ATTEMPTS); see the workers' log",
            )
            log.error(
                "dicom-inbox: request %s failed after %d cut-short imports", record.id, attempts
            )
            continue
        state.store.set_status(
            record.id, QUEUED, f"re-queued: its job was {status or 'lost'} and held no lease"
        )
        fresh = state.store.get(record.id)
        assert fresh is not None
        enqueue(state, fresh)
        requeued.append(record.id)
        log.warning("dicom-inbox: re-queued request %s (job %s)", record.id, status or "missing")
    return requeued


def _forget_started(started: StartedJobRegistry, state: InboxState, job_id: str) -> None:
    """Drop the dead execution, so RQ's own cleanup later cannot fail the re-queued job."""
    try:
        started.remove_executions(Job.fetch(job_id, connection=state.redis))
    except NoSuchJobError:
        return


def _job_status(state: InboxState, job_id: str) -> JobStatus | None:
    try:
        return Job.fetch(job_id, connection=state.redis).get_status(refresh=False)
    except NoSuchJobError:
        return None
