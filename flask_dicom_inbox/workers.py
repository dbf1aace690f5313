"""RQ workers that also recover dead imports, every lease period, not every 10 minutes.

RQ's own maintenance (which notices a dead worker's job) runs every 10 minutes. These workers
run :func:`~.recovery.recover` at start and then at every maintenance pass, which they hold
every ``DICOM_INBOX_LEASE_SECONDS`` while idle, so a request whose worker died is re-queued
within about two lease periods by any idle worker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from rq import SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.worker import BaseWorker

from .recovery import recover

if TYPE_CHECKING:
    from .extension import InboxState

log = logging.getLogger("flask_dicom_inbox")


class _RecoveringMixin:
    inbox_state: InboxState

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()  # type: ignore[misc]
        try:
            requeued = recover(self.inbox_state)
        except StopRequested:  # SIGTERM during the pass: RQ's loop must see it, or it runs on
            raise
        except Exception:  # a failed pass is retried at the next one; the worker goes on
            log.exception("dicom-inbox: recovery pass failed")
            return
        if requeued:
            log.warning("dicom-inbox: re-queued request(s) %s", requeued)


class RecoveringWorker(_RecoveringMixin, Worker):
    """A forking worker (one work-horse per job) that recovers dead imports."""


class RecoveringSimpleWorker(_RecoveringMixin, SimpleWorker):
    """An in-process worker that recovers dead imports."""


def make_worker(state: InboxState, *, simple: bool = False, **kwargs: Any) -> BaseWorker:
    """A worker on the import queue, bound to the app's job class, recovering every lease."""
    cls = RecoveringSimpleWorker if simple else RecoveringWorker
    seconds = state.config.lease_seconds
    worker = cls(
        [state.queue],
        connection=state.redis,
        job_class=state.job_class,
        worker_ttl=seconds + 15,  # RQ listens for worker_ttl - 15 s between maintenance checks
        maintenance_interval=seconds,
        **kwargs,
    )
    worker.inbox_state = state
    return worker
