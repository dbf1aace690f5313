"""Every ``DICOM_INBOX_*`` configuration key, its default, and the frozen view the code reads.

Defaults are applied with ``app.config.setdefault`` in ``DicomInbox.init_app``; paths left as
``None`` fall back to folders under the app's instance folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask

from .origin import normalized_origins

#: Key -> (default, one-line documentation). The README's configuration table mirrors this.
DEFAULTS: dict[str, tuple[Any, str]] = {
    "DICOM_INBOX_PATH": (None, "Inbox root; sessions live under <root>/<PROJECT_ID>/..."),
    "DICOM_INBOX_PREARCHIVE_PATH": (None, "Prearchive root (default storage)."),
    "DICOM_INBOX_ARCHIVE_PATH": (None, "Archive root (default storage)."),
    "DICOM_INBOX_REDIS_URL": ("redis://127.0.0.1:6379/0", "Redis for the RQ queue and records."),
    "DICOM_INBOX_QUEUE": ("dicom-inbox", "RQ queue name."),
    "DICOM_INBOX_KEY_PREFIX": ("dicom_inbox:", "Prefix of every Redis key of the records."),
    "DICOM_INBOX_CLEANUP_DEFAULT": (False, "cleanupAfterImport when not given (XNAT: true)."),
    "DICOM_INBOX_MAX_FILES": (0, "Most files one request may hold; 0 = no limit (413 above)."),
    "DICOM_INBOX_MAX_BYTES": (0, "Most bytes one request may hold; 0 = no limit (413 above)."),
    "DICOM_INBOX_JOB_TIMEOUT": (4 * 3600, "Base RQ job timeout in seconds."),
    "DICOM_INBOX_JOB_TIMEOUT_PER_FILE": (0.05, "Seconds added to the timeout per counted file."),
    "DICOM_INBOX_MAX_INFLATED_BYTES": (
        512 * 1024 * 1024,
        "Largest size a deflated DICOM file may inflate to before it is refused.",
    ),
    "DICOM_INBOX_PROGRESS_EVERY": (50, "Files between progress writes to Redis."),
    "DICOM_INBOX_URL_PREFIX": ("", "Prefix of the blueprint's routes (e.g. /xnat)."),
    "DICOM_INBOX_SESSION_TTL": (900, "Idle lifetime in seconds of a JSESSIONID login session."),
    "DICOM_INBOX_AUTH_CACHE_SECONDS": (
        30,
        "Seconds a worker process remembers credentials that passed the password check "
        "(an HMAC, never the password); 0 = check the password on every call.",
    ),
    "DICOM_INBOX_CHUNK_FILES": (
        256,
        "Files per chunk of work; any worker may take a chunk of a running import.",
    ),
    "DICOM_INBOX_HELPER_JOBS": (
        4,
        "Helper jobs an import keeps at most (queued as it starts or a phase needs them) so "
        "other workers join it; 0 = none.",
    ),
    "DICOM_INBOX_WORKHORSE_JOBS": (
        50,
        "Jobs a forked work-horse runs, one after another, before it exits and its worker "
        "forks a new one; 1 = a work-horse per job, as RQ's Worker does.",
    ),
    "DICOM_INBOX_WORKHORSE_MAX_MB": (
        512,
        "A work-horse whose peak RSS passed this many MB exits after its job.",
    ),
    "DICOM_INBOX_LEASE_SECONDS": (
        30,
        "A running import renews a lease this often x3; a dead worker's lapses after it.",
    ),
    "DICOM_INBOX_MAX_ATTEMPTS": (
        3,
        "Imports of one request a dead worker may cut short; then recovery fails it instead "
        "of re-queuing it again.",
    ),
    "DICOM_INBOX_REDIS_RETRY_SECONDS": (
        60,
        "How long a worker retries a lost Redis connection (a restart) before giving up.",
    ),
    "DICOM_INBOX_WORK_PATH": (
        None,
        "Private working folder for uploads and extracted archives (default: beside the "
        "prearchive, so moves stay renames).",
    ),
    "DICOM_INBOX_ARCHIVE_MAX_BYTES": (
        64 * 1024**3,
        "Most bytes an archive may expand to (declared sizes and bytes written); 0 = no limit.",
    ),
    "DICOM_INBOX_ARCHIVE_MAX_MEMBERS": (
        200_000,
        "Most members an archive may hold; 0 = no limit.",
    ),
    "DICOM_INBOX_ARCHIVE_MAX_RATIO": (
        200,
        "Largest expansion ratio (uncompressed / compressed) of an archive or a zip member.",
    ),
    "DICOM_INBOX_UPLOAD_MAX_BYTES": (
        32 * 1024**3,
        "Largest DICOM-zip upload body, enforced while streaming (413); 0 = no limit.",
    ),
    "DICOM_INBOX_UPLOAD_WAIT": (
        600,
        "Seconds a DICOM-zip POST waits for its import to answer the session URL as XNAT "
        "does; 0 = answer the status URL at once.",
    ),
    "DICOM_INBOX_TRUSTED_ORIGINS": (
        "",
        "Origins (scheme://host[:port], comma-separated) of other sites whose pages may send "
        "state-changing calls from a browser; a browser's others are refused (403).",
    ),
}


@dataclass(frozen=True)
class InboxConfig:
    """The configuration as read once from ``app.config``."""

    inbox_path: Path
    prearchive_path: Path
    archive_path: Path
    redis_url: str
    queue: str
    key_prefix: str
    cleanup_default: bool
    max_files: int
    max_bytes: int
    job_timeout: int
    job_timeout_per_file: float
    max_inflated_bytes: int
    progress_every: int
    url_prefix: str
    lease_seconds: int
    chunk_files: int = 256
    auth_cache_seconds: float = 30.0
    helper_jobs: int = 4
    workhorse_jobs: int = 50
    workhorse_max_mb: int = 512
    max_attempts: int = 3
    work_path: Path = Path("dicom-inbox-work")
    archive_max_bytes: int = 64 * 1024**3
    archive_max_members: int = 200_000
    archive_max_ratio: float = 200.0
    upload_max_bytes: int = 32 * 1024**3
    upload_wait: float = 600.0
    trusted_origins: frozenset[str] = frozenset()

    @classmethod
    def from_app(cls, app: Flask) -> InboxConfig:
        c = app.config
        instance = Path(app.instance_path)

        def folder(key: str, default_name: str) -> Path:
            value = c.get(key)
            return Path(os.path.realpath(value if value else instance / default_name))

        return cls(
            inbox_path=folder("DICOM_INBOX_PATH", "inbox"),
            prearchive_path=folder("DICOM_INBOX_PREARCHIVE_PATH", "prearchive"),
            archive_path=folder("DICOM_INBOX_ARCHIVE_PATH", "archive"),
            redis_url=str(c["DICOM_INBOX_REDIS_URL"]),
            queue=str(c["DICOM_INBOX_QUEUE"]),
            key_prefix=str(c["DICOM_INBOX_KEY_PREFIX"]),
            cleanup_default=_as_bool(c["DICOM_INBOX_CLEANUP_DEFAULT"]),
            max_files=int(c["DICOM_INBOX_MAX_FILES"]),
            max_bytes=int(c["DICOM_INBOX_MAX_BYTES"]),
            job_timeout=int(c["DICOM_INBOX_JOB_TIMEOUT"]),
            job_timeout_per_file=float(c["DICOM_INBOX_JOB_TIMEOUT_PER_FILE"]),
            max_inflated_bytes=int(c["DICOM_INBOX_MAX_INFLATED_BYTES"]),
            progress_every=max(1, int(c["DICOM_INBOX_PROGRESS_EVERY"])),
            url_prefix=str(c["DICOM_INBOX_URL_PREFIX"] or "").rstrip("/"),
            lease_seconds=max(1, int(c["DICOM_INBOX_LEASE_SECONDS"])),
            chunk_files=max(1, int(c["DICOM_INBOX_CHUNK_FILES"])),
            auth_cache_seconds=max(0.0, float(c["DICOM_INBOX_AUTH_CACHE_SECONDS"])),
            helper_jobs=max(0, int(c["DICOM_INBOX_HELPER_JOBS"])),
            workhorse_jobs=max(1, int(c["DICOM_INBOX_WORKHORSE_JOBS"])),
            workhorse_max_mb=max(1, int(c["DICOM_INBOX_WORKHORSE_MAX_MB"])),
            max_attempts=max(1, int(c["DICOM_INBOX_MAX_ATTEMPTS"])),
            work_path=Path(
                os.path.realpath(
                    c.get("DICOM_INBOX_WORK_PATH")
                    or folder("DICOM_INBOX_PREARCHIVE_PATH", "prearchive").parent
                    / "dicom-inbox-work"
                )
            ),
            archive_max_bytes=max(0, int(c["DICOM_INBOX_ARCHIVE_MAX_BYTES"])),
            archive_max_members=max(0, int(c["DICOM_INBOX_ARCHIVE_MAX_MEMBERS"])),
            archive_max_ratio=float(c["DICOM_INBOX_ARCHIVE_MAX_RATIO"]),
            upload_max_bytes=max(0, int(c["DICOM_INBOX_UPLOAD_MAX_BYTES"])),
            upload_wait=max(0.0, float(c["DICOM_INBOX_UPLOAD_WAIT"])),
            trusted_origins=normalized_origins(c["DICOM_INBOX_TRUSTED_ORIGINS"] or ""),
        )


def _as_bool(value: Any) -> bool:
    """Config from the environment arrives as text or JSON; accept both."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)
