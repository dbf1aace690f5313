"""The ``DicomInbox`` Flask extension: per-app state, handler registration, routes, CLI."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, current_app
from flask_httpauth import HTTPBasicAuth
from rq import Queue
from rq.timeouts import JobTimeoutException

from .anon_scripts import DefaultAnonymizationSettings, script_texts, steps_from_texts
from .api import build_blueprint
from .auth import build_basic_auth
from .auth_cache import CredentialCache
from .config import DEFAULTS, InboxConfig
from .handlers.dicom_zip import DicomZipHandler
from .handlers.inbox import InboxHandler
from .importer import AnonymizationStep
from .jobs import AppJob, bind_job_class
from .protocols import AnonymizationSettings, ProjectDirectory, SessionStorage, UserDirectory
from .registry import HandlerRegistry, ImportHandler
from .requests import ImportRequest, RequestStore
from .storage import FilesystemStorage

EXTENSION_KEY = "dicom_inbox"
_log = logging.getLogger("flask_dicom_inbox")


def connect_redis(url: str) -> redis.Redis:
    """A client for ``url`` whose new connections do not each look up redis-py's version.

    redis-py 7 and later read their own version from the package metadata for every new
    connection (parsing it as an e-mail header: 5-6 ms of CPU on a slow host), and every RQ
    work-horse opens its connections anew after the fork, so each job paid it again. The
    version is handed over once instead; Redis is told the same name and version (``CLIENT
    SETINFO``). Older redis-py read it once per process and take the default.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py < 7
        return redis.Redis.from_url(url)
    return redis.Redis.from_url(url, driver_info=DriverInfo(lib_version=redis.__version__))


@dataclass
class InboxState:
    """Everything the extension keeps per app (``app.extensions['dicom_inbox']`` holds it)."""

    extension: DicomInbox
    app: Flask
    config: InboxConfig
    redis: redis.Redis
    store: RequestStore
    queue: Queue
    job_class: type[AppJob]
    users: UserDirectory
    projects: ProjectDirectory
    storage: SessionStorage
    auth: HTTPBasicAuth
    anonymization: AnonymizationSettings
    credential_cache: CredentialCache

    @property
    def registry(self) -> HandlerRegistry:
        return self.extension.registry

    def anonymization_steps(self, record: ImportRequest) -> Sequence[AnonymizationStep]:
        """Site script, then project script; none with ``prevent_anon=true``."""
        return steps_from_texts(self.anonymization_texts(record))

    def anonymization_texts(self, record: ImportRequest) -> list[tuple[str, str]]:
        """``(script_id, text)`` of the scripts :meth:`anonymization_steps` would run."""
        if record.parameters.get("prevent_anon", "").strip().lower() in {"true", "1", "yes"}:
            return []
        return script_texts(self.anonymization, record.project_id)

    def signal(self, name: str, record: ImportRequest | None) -> None:
        """Send a host signal with the request as stored now; a failing receiver is logged.

        A host's receiver (a notification, a pipeline start) must never break the import it
        hears about, nor keep the other receivers from hearing it.
        """
        from . import signals

        sent = getattr(signals, name)
        receivers = [] if sent.is_muted else list(sent.receivers_for(self.app))
        if record is None or not receivers:
            return  # nobody listens: the record is not read again
        try:  # the caller's copy may predate the status change it announces
            record = self.store.get(record.id) or record
        except redis.exceptions.RedisError:
            pass  # the caller's copy is still the request; the import notices Redis itself
        for receiver in receivers:
            try:
                receiver(self.app, request=record)
            except JobTimeoutException:
                raise
            except Exception:
                _log.exception("dicom-inbox: a receiver of %s failed (request %s)", name, record.id)


class DicomInbox:
    """XNAT's DICOM Inbox as a Flask extension.

    ``users`` and ``projects`` are the host's (see :mod:`.protocols`); ``storage`` defaults to
    :class:`~.storage.FilesystemStorage` on ``DICOM_INBOX_PREARCHIVE_PATH`` and
    ``DICOM_INBOX_ARCHIVE_PATH``. ``anonymization`` keeps the site and project scripts
    (default: in memory, XNAT's default site script on). Handlers are registered with
    :meth:`register_handler`; ``inbox`` and ``DICOM-zip`` are registered that way too, then
    every handler packages declare in the ``flask_dicom_inbox.handlers`` entry-point group.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        users: UserDirectory,
        projects: ProjectDirectory,
        storage: SessionStorage | None = None,
        anonymization: AnonymizationSettings | None = None,
    ) -> None:
        self.users = users
        self.projects = projects
        self.storage = storage
        self.anonymization = anonymization
        self.registry = HandlerRegistry()
        self.register_handler("inbox", InboxHandler())
        self.register_handler("DICOM-zip", DicomZipHandler())
        self.registry.load_entry_points()
        if app is not None:
            self.init_app(app)

    def register_handler(self, name: str, handler: ImportHandler, *, replace: bool = False) -> None:
        """Make ``import-handler=<name>`` use ``handler`` (the public call for every handler)."""
        self.registry.register(name, handler, replace=replace)

    def init_app(self, app: Flask) -> None:
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("DicomInbox is already initialised on this app")
        for key, (default, _doc) in DEFAULTS.items():
            app.config.setdefault(key, default)
        config = InboxConfig.from_app(app)
        connection = connect_redis(config.redis_url)
        job_class = bind_job_class(app)
        storage = self.storage or FilesystemStorage(config.prearchive_path, config.archive_path)
        state = InboxState(
            extension=self,
            app=app,
            config=config,
            redis=connection,
            store=RequestStore(connection, config.key_prefix),
            queue=Queue(config.queue, connection=connection, job_class=job_class),
            job_class=job_class,
            users=self.users,
            projects=self.projects,
            storage=storage,
            auth=build_basic_auth(),
            anonymization=self.anonymization or DefaultAnonymizationSettings(),
            credential_cache=CredentialCache(config.auth_cache_seconds),
        )
        app.extensions[EXTENSION_KEY] = state
        app.register_blueprint(build_blueprint(state.auth), url_prefix=config.url_prefix or None)
        from .cli import dicom_inbox_cli

        app.cli.add_command(dicom_inbox_cli)

    @staticmethod
    def state(app: Flask | None = None) -> InboxState:
        """The per-app state of ``app`` (default: the current app)."""
        target: Any = app if app is not None else current_app
        try:
            return target.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
        except KeyError:
            raise RuntimeError("DicomInbox is not initialised on this app") from None


def current_state() -> InboxState:
    return DicomInbox.state()
