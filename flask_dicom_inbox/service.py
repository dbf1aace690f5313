"""Submitting and executing import requests: the logic between the views and the engine."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from rq import Worker
from rq.job import Job
from rq.timeouts import JobTimeoutException

from .anon_scripts import steps_from_texts
from .errors import BadRequest, Conflict, DicomInboxError, Forbidden, ImportFailed
from .fanout import (
    KEY_TTL,
    ChunkBoard,
    ChunkWork,
    HelperRoll,
    RunSuperseded,
    await_posting,
    begin_run,
    end_run,
    is_current,
    run_phase,
    work_through,
)
from .importer import (
    HEADERS,
    PHASES,
    STORE,
    FileStorer,
    ImportEngine,
    ImportOptions,
    PhaseRunner,
    ProgressReporter,
    chunk_sizes,
    read_header_chunk,
)
from .jobs import help_import_job, job_id_for, run_import
from .protocols import Destination, InboxUser, ProjectSettings
from .recovery import Lease
from .registry import Submission, finish_source
from .requests import ACCEPTED, COMPLETED, FAILED, IMPORTING, QUEUED, ImportRequest
from .schemas import ImportParameters, load_import_parameters

if TYPE_CHECKING:
    from .extension import InboxState
    from .uploads import Upload

log = logging.getLogger("flask_dicom_inbox")


def submit_import(
    state: InboxState, user: InboxUser, raw: Mapping[str, str], *, upload: Upload | None = None
) -> ImportRequest:
    """Validate a submission, record it and queue its job. Refusals change nothing."""
    params = load_import_parameters(raw)
    handler = state.registry.get(params.import_handler)
    project = _editable_project(state, user, params.project_id)
    if params.prevent_anon and not state.projects.can_prevent_anon(user, project.id):
        raise Forbidden(
            f"user {user.username!r} may not import into project {project.id!r} without "
            "anonymization (prevent_anon=true)",
            errors={"prevent_anon": ["not allowed for this user"]},
        )
    destination = choose_destination(params, project)
    prepared = handler.prepare(
        Submission(
            user=user, params=params, config=state.config, projects=state.projects, upload=upload
        )
    )
    if (
        destination == "archive"
        and params.overwrite == "none"
        and params.expt_label
        and state.storage.session_exists("archive", project.id, params.expt_label)
    ):
        raise Conflict(
            f"the archive of project {project.id!r} already holds session "
            f"{params.expt_label!r}; pass overwrite=append or overwrite=delete",
            errors={"EXPT_LABEL": ["session exists"]},
        )
    cleanup = (
        params.cleanup_after_import
        if params.cleanup_after_import is not None
        else state.config.cleanup_default
    )
    parameters = _recorded_parameters(params, cleanup, prepared.session_path)
    options: dict[str, Any] = {"destination": destination}
    if prepared.file_count is not None:
        options["fileCount"] = prepared.file_count
        if prepared.byte_count is not None:  # counted only under a byte limit
            options["byteCount"] = prepared.byte_count
    try:
        with state.redis.lock(
            f"{state.config.key_prefix}submit-lock", timeout=30, blocking_timeout=10
        ):
            _refuse_overlap(state, prepared.session_path)
            record = state.store.create(
                username=user.username,
                handler=params.import_handler or "",
                project_id=project.id,
                session_path=prepared.session_path,
                cleanup_after_import=cleanup,
                parameters=parameters,
                options=options,
            )
    except redis.exceptions.LockError as exc:
        raise Conflict("another submission is being recorded; try again") from exc
    enqueue(state, record)
    state.signal("import_queued", record)
    return record


def _editable_project(state: InboxState, user: InboxUser, project_id: str) -> ProjectSettings:
    project = state.projects.get_project(project_id)
    if project is None:
        raise BadRequest(
            f"no project with the ID {project_id!r}", errors={"PROJECT_ID": ["unknown project"]}
        )
    if not state.projects.can_edit(user, project_id):
        raise Forbidden(
            f"user {user.username!r} cannot edit the destination project {project_id!r}",
            errors={"PROJECT_ID": [f"no edit right on project {project_id}"]},
        )
    return project


def choose_destination(params: ImportParameters, project: ProjectSettings) -> Destination:
    """``dest`` first, then ``AA``/``auto-archive``, then the project's setting."""
    if params.dest:
        parts = [p for p in params.dest.split("/") if p]
        if (
            parts
            and parts[0] in ("prearchive", "archive")
            and (len(parts) == 1 or (len(parts) == 3 and parts[1] == "projects"))
        ):
            if len(parts) == 3 and parts[2] != project.id:
                raise BadRequest(
                    f"dest {params.dest!r} names another project than PROJECT_ID {project.id!r}",
                    errors={"dest": ["project mismatch"]},
                )
            return "archive" if parts[0] == "archive" else "prearchive"
        raise BadRequest(
            f"dest must be /prearchive or /archive, got {params.dest!r}",
            errors={"dest": ["must be /prearchive or /archive"]},
        )
    if params.auto_archive is not None:
        return "archive" if params.auto_archive else "prearchive"
    return "archive" if project.auto_archive else "prearchive"


def _recorded_parameters(params: ImportParameters, cleanup: bool, path: str) -> dict[str, str]:
    recorded = {k: v for k, v in params.raw.items()}
    recorded["cleanupAfterImport"] = "true" if cleanup else "false"
    recorded.setdefault("overrideExceptions", "false")
    recorded.setdefault("allowSessionMerge", "false")
    recorded.setdefault("path", path)
    return recorded


def _refuse_overlap(state: InboxState, session_path: str) -> None:
    """409 when an unfinished request covers this folder, a folder inside it or around it."""
    other = state.store.overlapping(session_path)
    if other is not None:
        raise Conflict(
            f"request {other.id} ({other.status}) is already importing this folder or one "
            "that overlaps it",
            errors={"path": [f"overlaps unfinished request {other.id}"]},
        )


def job_timeout(state: InboxState, record: ImportRequest) -> int:
    """The base timeout plus time per counted file: a big request gets a big timeout."""
    files = int(record.options.get("fileCount") or 0)
    return int(state.config.job_timeout + files * state.config.job_timeout_per_file)


def enqueue(state: InboxState, record: ImportRequest) -> Job:
    """Put the request's job on the queue (a retry reuses the same job id)."""
    return state.queue.enqueue_call(
        func=run_import,
        args=(record.id,),
        job_id=job_id_for(state.config.key_prefix, record.id),
        description=f"DICOM inbox import request {record.id}",
        timeout=job_timeout(state, record),
        result_ttl=24 * 3600,
        failure_ttl=7 * 24 * 3600,
        meta={"request_id": record.id},
    )


def execute_import(state: InboxState, request_id: int, job: Job | None) -> str:
    """The job body: status changes around the engine; every failure lands in the record.

    The record is read once, under the lease (a read before it, to skip a finished request,
    cost every import a round trip and found nothing the read under the lease does not).
    """
    lease = Lease(state, request_id)
    if not lease.acquire():
        log.warning("dicom-inbox: request %s is being imported by another worker", request_id)
        current = state.store.get(request_id)
        return FAILED if current is None else current.status
    try:
        record = state.store.get(request_id)
        if record is None:
            log.error("dicom-inbox: request %s has no record; nothing to do", request_id)
            return FAILED
        if record.finished:
            return record.status
        try:
            # The handler's finish() runs under the lease, after the outcome is recorded.
            return finish_source(
                state.registry, record, state.config, _execute_locked(state, record, job, lease)
            )
        except RunSuperseded:
            log.error(
                "dicom-inbox: request %s: this run lost its lease and stopped; its record, "
                "folders and source are left to the run that holds the lease now",
                request_id,
            )
            current = state.store.get(request_id)
            return (current or record).status
    finally:
        lease.release()


def _execute_locked(state: InboxState, record: ImportRequest, job: Job | None, lease: Lease) -> str:
    store = state.store
    rid = record.id
    if record.status == QUEUED:
        store.set_status(rid, ACCEPTED, "a worker took the request")
    store.set_status(rid, IMPORTING, "importing")
    state.signal("import_started", record)  # sent as stored now

    def on_progress(_totals: dict[str, int]) -> None:
        if job is not None:  # the request's counters: every chunk's worker adds to them
            # The counters only: a whole read decoded every error so far at each write, and
            # an import of 20,000 non-DICOM files took 13 s instead of 3.
            job.meta["request_id"] = rid
            job.meta["progress"] = store.progress(rid)
            job.save_meta()  # type: ignore[no-untyped-call]

    run: str | None = None
    try:
        try:
            handler = state.registry.get(record.handler)
            project = state.projects.get_project(record.project_id)
            if project is None:
                raise ImportFailed(f"project {record.project_id!r} no longer exists")
            options = _engine_options(state, record)
            run = begin_run(
                state.redis, state.config.key_prefix, rid, claim_seconds=state.config.lease_seconds
            )
            queue_helpers_ahead(state, record, run)
            engine = ImportEngine(
                request=record,
                store=store,
                storage=state.storage,
                options=options,
                runner=_phase_runner(state, record, run, lease.owned),
                script_texts=state.anonymization_texts(record),
                on_progress=on_progress,
                keep_going=lease.owned,
            )
            with handler.open_source(record, state.config) as root:
                sessions = engine.run(root)
        except RunSuperseded:
            raise
        except (ImportFailed, DicomInboxError) as exc:
            _still_held(lease)
            return _fail(state, rid, exc.message)
        except JobTimeoutException:
            if lease.owned():
                _fail(state, rid, f"the import timed out after {job_timeout(state, record)} s")
                finish_source(state.registry, record, state.config, FAILED)  # e.g. drop the upload
            raise
        except Exception as exc:
            _still_held(lease)
            log.exception("dicom-inbox: request %s failed", rid)
            return _fail(state, rid, f"internal error: {type(exc).__name__}: {exc}")
        _still_held(lease)
        resolution = sessions[0]["url"] if len(sessions) == 1 else _common_resolution(record)
        store.set_result(rid, sessions=sessions, resolution=resolution)
        files = sum(int(s["files"]) for s in sessions)
        store.set_status(
            rid, COMPLETED, f"{files} file(s) imported into {len(sessions)} session(s)"
        )
        state.signal("import_finished", record)
        return COMPLETED
    finally:
        # The run's chunk keys go once the outcome is written, not before: a client waits for
        # the outcome, and the keys' deletion (1-4 ms) then no longer delays it. Not reached
        # when the work-horse is killed: a retry finds the keys and deletes them.
        if run is not None:
            _end_run_quietly(state, rid, run)


def _end_run_quietly(state: InboxState, request_id: int, run: str) -> None:
    """Forget the run's chunks; a Redis error here is logged (the outcome is written, and the
    keys expire on their own), so it never turns a finished import into a failed job."""
    try:
        end_run(state.redis, state.config.key_prefix, request_id, run)
    except redis.exceptions.RedisError:
        log.warning(
            "dicom-inbox: request %s: its run's keys were not deleted (they expire in %d days)",
            request_id,
            KEY_TTL // 86400,
            exc_info=True,
        )


def _still_held(lease: Lease) -> None:
    """A run writes the request's outcome only while it holds the lease."""
    if not lease.owned():
        raise RunSuperseded()


def _fail(state: InboxState, request_id: int, message: str) -> str:
    current = state.store.get(request_id)
    if current is not None and not current.finished:
        state.store.set_status(request_id, FAILED, message)
    state.signal("import_finished", current)
    return FAILED


def give_up(state: InboxState, request_id: int, message: str) -> None:
    """Fail a request no job holds (recovery stops re-queuing it) and tell its handler."""
    _fail(state, request_id, message)
    record = state.store.get(request_id)
    if record is not None:
        finish_source(state.registry, record, state.config, FAILED)


def _common_resolution(record: ImportRequest) -> str:
    dest = record.options.get("destination", "prearchive")
    return f"/{dest}/projects/{record.project_id}"


def _engine_options(state: InboxState, record: ImportRequest) -> ImportOptions:
    p = record.parameters

    def flag(name: str) -> bool:
        return p.get(name, "").strip().lower() in {"true", "1", "yes", "on"}

    expt_label = p.get("EXPT_LABEL") or p.get("session") or None
    # A session path that is the project's inbox folder itself is emptied, never removed.
    keep_root = Path(record.session_path).parent == state.config.inbox_path
    return ImportOptions(
        project_id=record.project_id,
        subject_id=p.get("SUBJECT_ID") or None,
        expt_label=expt_label,
        destination=record.options.get("destination", "prearchive"),
        overwrite=p.get("overwrite", "none") or "none",
        rename=flag("rename"),
        cleanup=record.cleanup_after_import,
        keep_root=keep_root,
        max_inflated_bytes=state.config.max_inflated_bytes,
        progress_every=state.config.progress_every,
        chunk_files=state.config.chunk_files,
    )


# -- fan-out: the chunks of one request, done by its own job and by helper jobs ---------------
def _board(state: InboxState, request_id: int, run: str, phase: str) -> ChunkBoard:
    return ChunkBoard(
        state.redis,
        state.config.key_prefix,
        request_id,
        run,
        phase,
        claim_seconds=state.config.lease_seconds,
    )


def _phase_runner(
    state: InboxState,
    record: ImportRequest,
    run: str,
    keep_going: Callable[[], bool] = lambda: True,
) -> PhaseRunner:
    def runner(phase: str, payloads: Iterable[Any], meta: Mapping[str, Any]) -> Iterator[Any]:
        return run_phase(
            _board(state, record.id, run, phase),
            payloads,
            meta,
            chunk_work(state, record, phase, meta),
            start_helpers=lambda wanted: start_helpers(state, record, run, phase, wanted),
            max_helpers=state.config.helper_jobs,
            keep_going=keep_going,
        )

    return runner


def chunk_work(
    state: InboxState, record: ImportRequest, phase: str, meta: Mapping[str, Any]
) -> ChunkWork:
    """The work on one chunk of ``phase``: the same in the request's job and in helpers."""
    report = ProgressReporter(state.store, record.id, state.config.progress_every)
    if phase == HEADERS:
        return functools.partial(
            read_header_chunk, max_inflated_bytes=state.config.max_inflated_bytes, report=report
        )
    if phase == STORE:
        return FileStorer(
            options=_engine_options(state, record),
            anonymization=steps_from_texts(meta.get("scripts", [])),
            report=report,
            ledger=functools.partial(state.store.add_stored, record.id),
        )
    raise ValueError(f"unknown phase {phase!r}")


def idle_workers(state: InboxState) -> int:
    """About how many workers of the import queue could take a helper job now.

    Workers registered on the queue less the jobs running from it (this import's own among
    them). Each helper job costs a worker a job's start (a hand-off to its work-horse, or a
    fork) even when it finds nothing left to do, and a worker busy with surplus helpers of
    one phase joins the next phase late: a 1,000-file import with 2 workers used to queue 3
    helpers per phase where 1 could run.
    """
    workers = Worker.count(connection=state.redis, queue=state.queue)
    running = int(state.queue.started_job_registry.get_job_count(cleanup=False))
    return max(0, workers - running)


#: How long a helper that finished a phase waits for the run's next one (then it leaves, and
#: the coordinator queues a new helper when it posts that phase).
HELPER_PATIENCE_SECONDS = 3.0


def _roll(state: InboxState, request_id: int, run: str) -> HelperRoll:
    return HelperRoll(
        state.redis, state.config.key_prefix, request_id, run, seconds=state.config.lease_seconds
    )


def queue_helpers_ahead(state: InboxState, record: ImportRequest, run: str) -> list[Job]:
    """Queue the run's helpers before it walks the folder, for idle workers only: they start
    (in a waiting work-horse, or a fork) while the coordinator walks, and take the first
    phase's chunks from its start. The file count from the submission says whether there will
    be a second chunk."""
    files = int(record.options.get("fileCount") or 0)
    chunks = sum(1 for _ in chunk_sizes(files, max(1, state.config.chunk_files)))
    wanted = min(chunks - 1, state.config.helper_jobs)
    if wanted <= 0:
        return []
    count = min(wanted, idle_workers(state))
    return enqueue_helpers(state, record, run, PHASES[0], count)


def start_helpers(
    state: InboxState, record: ImportRequest, run: str, phase: str, wanted: int
) -> list[Job]:
    """Queue helpers for a phase just posted so that ``wanted`` can help: those the run
    already has (queued, or waiting from an earlier phase) count; new ones only for idle
    workers, and one when the run has none (for a worker that may come free)."""
    have = _roll(state, record.id, run).count()
    count = min(wanted - have, max(0 if have else 1, idle_workers(state)))
    return enqueue_helpers(state, record, run, phase, count)


def enqueue_helpers(
    state: InboxState, record: ImportRequest, run: str, phase: str, count: int
) -> list[Job]:
    """Queue ``count`` helper jobs at the front, so idle workers join this request at once.

    Each helps with ``phase`` and then with the run's later phases; it is entered in the run's
    roll before it is queued, so the coordinator counts it from then on.
    """
    base = job_id_for(state.config.key_prefix, record.id)
    roll = _roll(state, record.id, run)
    jobs = []
    for _ in range(count):
        job_id = f"{base}-{run}-{phase}-{uuid.uuid4().hex[:8]}"
        roll.renew(job_id)
        jobs.append(
            state.queue.enqueue_call(
                func=help_import_job,
                args=(record.id, run, phase),
                job_id=job_id,
                description=f"DICOM inbox import request {record.id}: helper (from {phase})",
                timeout=job_timeout(state, record),
                result_ttl=600,
                failure_ttl=24 * 3600,
                meta={"request_id": record.id, "helper": phase},
                at_front=True,
            )
        )
    return jobs


def help_import(
    state: InboxState, request_id: int, run: str, phase: str, helper: str | None = None
) -> int:
    """A helper job's body: take chunks of the run's ``phase`` until none is left, then wait
    for each later phase and do the same; returns how many chunks it did.

    ``helper`` is its entry in the run's roll (its job id); it leaves the roll at its end.
    """
    prefix = state.config.key_prefix
    roll = _roll(state, request_id, run)
    me = helper or uuid.uuid4().hex

    def current() -> bool:
        return is_current(state.redis, prefix, request_id, run)

    def next_chunk() -> bool:  # still counted while it works, however long its phase
        roll.renew(me)
        return current()

    def may_wait() -> bool:  # a job waiting for a worker gets this one
        return current() and not state.queue.count

    try:
        record = state.store.get(request_id)
        if record is None or record.finished or not current():
            return 0
        done = 0
        for name in PHASES[PHASES.index(phase) :]:
            board = _board(state, request_id, run, name)
            meta = await_posting(
                board, roll, me, may_wait=may_wait, patience=HELPER_PATIENCE_SECONDS
            )
            if meta is None:
                break
            done += work_through(
                board, chunk_work(state, record, name, meta), keep_going=next_chunk
            )
        return done
    finally:
        roll.leave(me)
