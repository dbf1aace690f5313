"""``flask dicom-inbox ...`` commands, added to the host app by ``init_app``."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import click
from flask import current_app
from flask.cli import AppGroup
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .extension import current_state
from .recovery import recover
from .workers import make_worker

dicom_inbox_cli = AppGroup("dicom-inbox", help="DICOM inbox: workers and maintenance.")


@dicom_inbox_cli.command("worker")
@click.option("--burst", is_flag=True, help="Quit once the queue is empty.")
@click.option("--simple", is_flag=True, help="Run jobs in this process (no work-horse).")
@click.option("--with-scheduler", is_flag=True, help="Also run RQ's scheduler.")
@click.option(
    "--logging-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Of the worker's log (INFO: a line per import with the seconds of each phase).",
)
def worker_command(burst: bool, simple: bool, with_scheduler: bool, logging_level: str) -> None:
    """Start an RQ worker for the import queue, bound to this app."""
    _log_to_stderr(logging_level.upper())
    state = current_state()
    # Ride out a Redis restart: the worker, its work-horse and the import's record writes
    # retry a lost connection instead of dying with the request half done.
    state.redis.set_retry(
        patient_retry(float(current_app.config["DICOM_INBOX_REDIS_RETRY_SECONDS"]))
    )
    worker = make_worker(state, simple=simple)
    requeued = recover(state)
    if requeued:
        click.echo(f"re-queued request(s) whose worker died: {', '.join(map(str, requeued))}")
    current_app.logger.info("dicom-inbox worker on queue %s", state.queue.name)
    worker.work(burst=burst, with_scheduler=with_scheduler)


def _log_to_stderr(level: str) -> None:
    """The package's log on stderr, beside RQ's, unless the host configured logging."""
    package_log = logging.getLogger("flask_dicom_inbox")
    package_log.setLevel(level)
    if not package_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package_log.addHandler(handler)


def patient_retry(seconds: float) -> Retry:
    """Retries of a lost Redis connection spanning about ``seconds`` (0.1 s doubling to 2 s)."""
    return Retry(ExponentialBackoff(cap=2.0, base=0.1), max(3, int(seconds / 2) + 3))


@dicom_inbox_cli.command("recover")
def recover_command() -> None:
    """Re-queue unfinished requests whose job died (no need to wait for RQ's maintenance)."""
    requeued = recover(current_state())
    if requeued:
        click.echo(f"re-queued: {', '.join(map(str, requeued))}")
    else:
        click.echo("nothing to recover")


@dicom_inbox_cli.command("prune")
@click.option(
    "--older-than",
    "days",
    type=click.FloatRange(min=0),
    required=True,
    help="Days since the request finished (Completed or Failed).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
def prune_command(days: float, dry_run: bool) -> None:
    """Delete the records of requests that finished more than DAYS ago.

    Their status URLs then answer 404 and they leave the status lists; unfinished requests
    are never touched. Run it from cron to keep Redis from growing for ever.
    """
    cutoff = time.time() - days * 86400
    pruned = current_state().store.prune(int(cutoff * 1000), dry_run=dry_run)
    when = datetime.fromtimestamp(cutoff, timezone.utc).isoformat(timespec="seconds")
    shown = ", ".join(map(str, pruned[:20])) + (", ..." if len(pruned) > 20 else "")
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} {len(pruned)} request record(s) finished before {when}"
        + (f": {shown}" if pruned else "")
    )


@dicom_inbox_cli.command("handlers")
def handlers_command() -> None:
    """List the registered import handlers, where each came from, and broken entry points."""
    registry = current_state().registry
    for name, handler in registry.items():
        kind = f"{type(handler).__module__}.{type(handler).__qualname__}"
        click.echo(f"{name}\t{kind}\t{registry.source_of(name)}")
    for name, reason in sorted(registry.broken.items()):
        click.echo(f"{name}\tBROKEN\t{reason}")


anon_cli = AppGroup("anon", help="Anonymization scripts (DicomEdit 6 subset).")
dicom_inbox_cli.add_command(anon_cli)


def _read_script(path: str) -> str:
    from .anon_scripts import compile_script
    from .errors import BadRequest

    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        compile_script(text)
    except BadRequest as exc:
        raise click.ClickException(f"{path}: {exc.message}") from None
    return text


@anon_cli.command("set-site")
@click.argument("script_file", type=click.Path(exists=True, dir_okay=False))
def anon_set_site(script_file: str) -> None:
    """Set the site-wide script from SCRIPT_FILE (refused, unchanged, if it does not parse)."""
    current_state().anonymization.set_site_script(_read_script(script_file))
    click.echo("site anonymization script set")


@anon_cli.command("set-project")
@click.argument("project_id")
@click.argument("script_file", type=click.Path(exists=True, dir_okay=False))
def anon_set_project(project_id: str, script_file: str) -> None:
    """Set PROJECT_ID's script from SCRIPT_FILE (refused, unchanged, if it does not parse)."""
    state = current_state()
    if state.projects.get_project(project_id) is None:
        raise click.ClickException(f"no project {project_id!r}")
    state.anonymization.set_project_script(project_id, _read_script(script_file))
    click.echo(f"anonymization script of project {project_id} set")


@anon_cli.command("test")
@click.argument("script_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("dicom_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--project", default="test_project", show_default=True)
@click.option("--subject", default="test_subject", show_default=True)
@click.option("--session", "session_label", default="test_session", show_default=True)
def anon_test(
    script_file: str, dicom_file: str, project: str, subject: str, session_label: str
) -> None:
    """Run SCRIPT_FILE over DICOM_FILE in memory and print the changed tags (nothing written)."""
    from pathlib import Path

    from .anon_scripts import compile_script
    from .dicom import read_full

    script = compile_script(_read_script(script_file))
    ds = read_full(Path(dicom_file).resolve())  # a link given here is the user's choice
    changes = script.apply(ds, {"project": project, "subject": subject, "session": session_label})
    for change in changes:
        click.echo(change)
    if not changes:
        click.echo("no changes")
