"""The running job's deadline, so that a timeout Python lost still ends the job.

RQ times a job out with SIGALRM, whose handler raises ``JobTimeoutException`` wherever the job
happens to be, once. Code there may turn it into another error: pydicom's
``Dataset.__getitem__`` wraps whatever ``Tag(keyword)`` raises in a ``KeyError``, so a timeout
landing there reaches a per-file guard as ``KeyError: 'ImplementationClassUID'``, is reported
as that file's fault, and the job runs on with no timeout left. So each job also notes its
deadline; the per-file guards, the phase boundaries and the chunk loop call :func:`check`,
which raises the timeout once the deadline has passed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rq.timeouts import JobTimeoutException

_deadline: tuple[float, float] | None = None  # (monotonic deadline, the job's timeout)


@contextlib.contextmanager
def of_current_job() -> Iterator[None]:
    """While the current RQ job runs: its deadline is its timeout from now (none outside a
    job, or for a job without a timeout)."""
    from rq import get_current_job

    global _deadline
    earlier = _deadline
    job = get_current_job()
    timeout = None if job is None else job.timeout
    if timeout is not None and timeout >= 0:
        _deadline = (time.monotonic() + timeout, timeout)
    try:
        yield
    finally:
        _deadline = earlier


def check() -> None:
    """Raise the job's timeout if its deadline has passed (a no-op outside a job)."""
    if _deadline is not None and time.monotonic() > _deadline[0]:
        raise JobTimeoutException(f"Task exceeded maximum timeout value ({_deadline[1]:g} seconds)")


def reraise_timeout(exc: Exception) -> None:
    """For a per-file guard's broad ``except``: the job's timeout is no fault of the file, be it
    ``exc`` itself or turned into ``exc`` by the code it landed in (then past the deadline)."""
    if isinstance(exc, JobTimeoutException):
        raise exc
    check()
