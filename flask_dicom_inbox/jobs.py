"""RQ entry points. Jobs take a request id, never objects, and run inside the app context."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from flask import Flask
from rq.job import Job


class AppJob(Job):
    """An RQ Job that performs inside the Flask app context of the app it is bound to.

    :func:`bind_job_class` makes a subclass per app, so a worker started by
    ``flask dicom-inbox worker`` runs every job with that app's configuration.
    """

    flask_app: ClassVar[Flask | None] = None

    def perform(self) -> Any:
        app = type(self).flask_app
        if app is None:
            return super().perform()
        with app.app_context():
            return super().perform()


def bind_job_class(app: Flask) -> type[AppJob]:
    return type("DicomInboxAppJob", (AppJob,), {"flask_app": app})


def run_import(request_id: int) -> str:
    """Import one request; returns its final status (``Completed`` or ``Failed``)."""
    from rq import get_current_job

    from . import deadline
    from .extension import current_state
    from .service import execute_import

    with deadline.of_current_job():
        return execute_import(current_state(), int(request_id), get_current_job())


def job_id_for(key_prefix: str, request_id: int) -> str:
    """The RQ job id of a request: unique per key prefix, so apps sharing a Redis never clash.

    RQ job ids may not hold ':', '/' or spaces, so the prefix is reduced to ``[A-Za-z0-9_-]``.
    """
    namespace = re.sub(r"[^A-Za-z0-9_-]", "-", key_prefix).strip("-") or "dicom-inbox"
    return f"{namespace}-import-{int(request_id)}"


def help_import_job(request_id: int, run: str, phase: str) -> int:
    """Take chunks of a running import from ``phase`` on (any worker, any machine); returns
    how many it did."""
    from rq import get_current_job

    from . import deadline
    from .extension import current_state
    from .service import help_import

    job = get_current_job()
    with deadline.of_current_job():
        return help_import(
            current_state(), int(request_id), str(run), str(phase), job.id if job else None
        )
