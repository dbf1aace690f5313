"""RQ workers that also recover dead imports, every lease period, not every 10 minutes.

RQ's own maintenance (which notices a dead worker's job) runs every 10 minutes. These workers
run :func:`~.recovery.recover` at start and then at every maintenance pass, which they hold
every ``DICOM_INBOX_LEASE_SECONDS`` while idle, so a request whose worker died is re-queued
within about two lease periods by any idle worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import redis
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import StopRequested
from rq.executions import Execution
from rq.job import Job
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


@dataclass
class _Horse:
    """A work-horse forked ahead: its pid, the pipe that hands it a job's ids, and the pipe on
    which it says, after each job, whether it takes another (``1``) or exits (``0``)."""

    pid: int
    jobs_fd: int
    done_fd: int

    def close(self) -> None:
        for fd in (self.jobs_fd, self.done_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


class PreforkingWorker(Worker):
    """A forking worker whose work-horse is forked while it waits for a job, and runs up to
    ``horse_jobs`` jobs, one after another, before it exits.

    RQ forks a work-horse after it has dequeued a job, for each job; the fork, and the horse
    starting cold (its first Redis and database connections, every page of memory it writes
    copied or faulted in anew), then lie between the POST and the import's first step: a
    10-file import was Completed about 14 ms later, a 1,000-file one 25-30 ms later, than on
    an in-process (``--simple``) worker. Here the horse is forked ahead, connects, and waits
    on a pipe; the worker hands it each job's ids, and the horse says on a second pipe when
    the job is done. Each job still runs outside the worker: a horse that crashes, or that
    the worker kills for a job's timeout or a stop, takes only its job with it, and the next
    job gets a new horse, as does the job after a failed one, after ``horse_jobs`` jobs, or
    once the horse's peak RSS passed ``horse_max_mb``. ``horse_jobs=1`` forks a horse per
    job, as RQ's ``Worker`` does.
    """

    _spare: _Horse | None = None  # waiting for a job
    _running: _Horse | None = None  # running the current job
    horse_jobs: int = 1
    horse_max_mb: int = 512

    def dequeue_job_and_maintain_ttl(self, timeout: Any, max_idle_time: Any = None) -> Any:
        if self._spare is None:
            self._fork_spare()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def fork_work_horse(self, job: Job, queue: Queue) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            handed = self.execution is not None and _send(
                spare.jobs_fd, json.dumps([job.id, queue.name, self.execution.id]).encode() + b"\n"
            )
            if handed:
                os.environ["RQ_WORKER_ID"] = self.name
                os.environ["RQ_JOB_ID"] = job.id
                self._horse_pid = spare.pid
                self._running = spare
                self.procline(f"Handed {job.id} to {spare.pid} at {time.time()}")  # type: ignore[no-untyped-call]
                return
            spare.close()
            _reap(spare.pid)  # it died while waiting: the job is forked for, as RQ does
        super().fork_work_horse(job, queue)

    def wait_for_horse(self) -> tuple[int | None, int | None, Any]:
        """The job's end: the horse's word that it is done (it then waits for the next job,
        or exits), else its death, as RQ waits for it. RQ's alarm for heartbeats interrupts
        the read as it interrupts RQ's own wait."""
        running = self._running
        if running is None:
            return super().wait_for_horse()
        try:
            word = os.read(running.done_fd, 1)
        except OSError:
            word = b""
        if word == b"1":
            self._running, self._spare = None, running
            return running.pid, os.EX_OK, None
        self._running = None
        running.close()  # "0" (it exits now) or end-of-file (it died): RQ reaps it
        return super().wait_for_horse()

    def teardown(self) -> None:
        try:  # RQ's first: it stops the scheduler, which may hold the spare's pipe too
            super().teardown()  # type: ignore[no-untyped-call]
        finally:
            self._drop_spare()

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()  # the spare reads end-of-file and exits
            _reap(spare.pid)
        running, self._running = self._running, None
        if running is not None:  # RQ killed and reaped it (a cold shutdown)
            running.close()

    def _fork_spare(self) -> None:
        jobs_read, jobs_write = os.pipe()
        done_read, done_write = os.pipe()
        # A stop signal during fork() was raised inside logging's after-fork hook, where
        # Python prints and drops it (the worker then waited for a job instead of stopping).
        # Noted meanwhile, it is handed to RQ's handler once the spare is recorded.
        noted: list[int] = []
        handlers: dict[signal.Signals, Any] = {}
        worker = os.getpid()
        try:
            for sig in _STOP:
                handlers[sig] = signal.signal(sig, lambda n, _f: noted.append(n))
            pid = os.fork()
            if pid == 0:
                os.close(jobs_write)
                os.close(done_read)
                self._spare_main(jobs_read, done_write, worker)  # never returns
            os.close(jobs_read)
            os.close(done_write)
            with contextlib.suppress(OSError):  # the child may have done it (or ended)
                os.setpgid(pid, pid)  # so that killing the horse's group spares the worker
            self._spare = _Horse(pid, jobs_write, done_read)
        except OSError:  # no spare this time (out of memory?): RQ forks for the job
            log.warning("dicom-inbox: could not fork a work-horse ahead", exc_info=True)
            for fd in (jobs_read, jobs_write, done_read, done_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        for number in noted:
            handler = handlers[signal.Signals(number)]
            if callable(handler):
                handler(number, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(number)

    def _spare_main(self, jobs_fd: int, done_fd: int, worker: int) -> NoReturn:
        """The horse's life: get ready, then for each job's ids run it as RQ's work-horse
        does, and say whether another may follow."""
        try:
            os.setpgrp()
            random.seed()  # as RQ's work-horse does: not the worker's random sequence
            self.setup_work_horse_signals()  # type: ignore[no-untyped-call]
            self._is_horse = True
            self.log = logging.getLogger("rq.worker")  # as RQ's work-horse logs
            self._spare = self._running = None
            with contextlib.suppress(redis.RedisError):
                self.connection.ping()  # the horse's own connection, made before the job
            runs = 0
            while True:
                message = _next_message(jobs_fd, worker)
                if message is None:  # the worker stopped, or died
                    os._exit(0)
                job_id, queue_name, execution_id = json.loads(message)
                os.environ["RQ_WORKER_ID"] = self.name
                os.environ["RQ_JOB_ID"] = job_id
                job = self.job_class.fetch(
                    job_id, connection=self.connection, serializer=self.serializer
                )
                queue = next(q for q in self.queues if q.name == queue_name)
                self.execution = Execution.fetch(execution_id, job_id, connection=self.connection)
                runs += 1
                succeeded = self.perform_job(job, queue)
                again = succeeded and runs < self.horse_jobs and _peak_rss_mb() <= self.horse_max_mb
                try:
                    os.write(done_fd, b"1" if again else b"0")
                except OSError:  # the worker is gone (EPIPE): the job ran, no other follows
                    os._exit(0)
                if not again:
                    os._exit(0)
        except BaseException:
            log.exception("dicom-inbox: the work-horse could not run its job")
        os._exit(1)


def _next_message(fd: int, worker: int) -> bytes | None:
    """The next job's ids from the worker, or None once the worker is gone."""
    message = b""
    while not message.endswith(b"\n"):
        # End-of-file when the worker stops or dies, unless another child of the worker holds
        # the pipe too (RQ's scheduler, restarted by a maintenance pass after this horse was
        # forked): hence a look at the parent every second.
        if not select.select([fd], [], [], 1.0)[0]:
            if os.getppid() != worker:
                return None
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        message += chunk
    return message


def _peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_STOP = (signal.SIGINT, signal.SIGTERM)


def _send(fd: int, message: bytes) -> bool:
    """Write ``message`` (under PIPE_BUF: one write, never split) to a spare's pipe; False
    if the spare is gone."""
    try:
        return os.write(fd, message) == len(message)
    except OSError:  # EPIPE: the spare died while it waited
        return False


def _reap(pid: int, patience: float = 5.0) -> None:
    """Collect a spare's exit status; one still running after ``patience`` seconds (stuck in
    its first Redis call, say) is killed, so a worker's stop never hangs on its spare."""
    end = time.monotonic() + patience
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > end:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.005)
    except ChildProcessError:
        pass


class _PromptShutdownMixin:
    """RQ's ``unsubscribe`` with the wait for its command listener bounded.

    RQ unsubscribes its listener thread, then stops it and joins it for up to 1 s. redis-py
    8.2's ``PubSubWorkerThread.stop()`` itself joins the thread, with no bound, and a thread
    that has just seen the unsubscription waits up to RQ's ``sleep_time`` (60 s) for a new
    subscription: every warm shutdown took up to a minute (a systemd stop, Ctrl-C, a test's
    ``SIGTERM``). The thread is a daemon, left to end with the process, as before 8.2.
    """

    pubsub: Any
    pubsub_thread: Any
    pubsub_channel_name: str
    log: logging.Logger
    name: str

    def unsubscribe(self) -> None:
        thread = self.pubsub_thread
        if not thread:
            return
        self.log.info(
            "Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name
        )
        self.pubsub.unsubscribe()
        try:
            thread.stop(timeout=1)
        except TypeError:  # redis-py before 8.2: stop() only tells the thread to end
            thread.stop()
            thread.join(timeout=1)
        self.pubsub.close()


class RecoveringWorker(_PromptShutdownMixin, _RecoveringMixin, PreforkingWorker):
    """A forking worker (one work-horse per job, forked ahead) that recovers dead imports."""


class RecoveringSimpleWorker(_PromptShutdownMixin, _RecoveringMixin, SimpleWorker):
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
    if isinstance(worker, PreforkingWorker):
        worker.horse_jobs = state.config.workhorse_jobs
        worker.horse_max_mb = state.config.workhorse_max_mb
    return worker
