"""``flask dicom-inbox ...`` commands, added to the host app by ``init_app``."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup
from rq import SimpleWorker, Worker

from .extension import current_state

dicom_inbox_cli = AppGroup("dicom-inbox", help="DICOM inbox: workers and maintenance.")


@dicom_inbox_cli.command("worker")
@click.option("--burst", is_flag=True, help="Quit once the queue is empty.")
@click.option("--simple", is_flag=True, help="Run jobs in this process (no fork per job).")
@click.option("--with-scheduler", is_flag=True, help="Also run RQ's scheduler.")
def worker_command(burst: bool, simple: bool, with_scheduler: bool) -> None:
    """Start an RQ worker for the import queue, bound to this app."""
    state = current_state()
    worker_class = SimpleWorker if simple else Worker
    worker = worker_class([state.queue], connection=state.redis, job_class=state.job_class)
    current_app.logger.info("dicom-inbox worker on queue %s", state.queue.name)
    worker.work(burst=burst, with_scheduler=with_scheduler)


@dicom_inbox_cli.command("handlers")
def handlers_command() -> None:
    """List the registered import handlers."""
    for name, handler in current_state().registry.items():
        click.echo(f"{name}\t{type(handler).__module__}.{type(handler).__qualname__}")
