"""The forking worker forks each job's work-horse ahead, while it waits for the job.

Real RQ workers run in this process (``work(burst=True)``) on the test app's queue in the
shared Redis; their work-horses are real forked processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from flask_dicom_inbox.extension import InboxState
from flask_dicom_inbox.workers import PreforkingWorker, RecoveringWorker, make_worker

from .conftest import process_alive, wait_until


def where_am_i(tag: str) -> dict[str, Any]:
    """A job: the process it ran in, its parent, and the tag it was given."""
    return {"pid": os.getpid(), "ppid": os.getppid(), "tag": tag}


def enqueue(state: InboxState, tag: str) -> Any:
    """A ``where_am_i`` job named after the test app's queue, so that the app fixture's cleanup
    removes it and its result from the shared Redis."""
    return state.queue.enqueue(where_am_i, tag, job_id=f"{state.config.queue}-{tag}")


def recording_spares(worker: PreforkingWorker, *, kill: bool = False) -> list[int]:
    """Record (and with ``kill``, SIGKILL) each spare the worker forks, as it forks it."""
    forked: list[int] = []
    fork_spare = worker._fork_spare

    def record() -> None:
        fork_spare()
        assert worker._spare is not None
        pid = worker._spare.pid
        forked.append(pid)
        if kill:
            os.kill(pid, signal.SIGKILL)
            # A zombie then: dead, not yet reaped.
            wait_until(lambda: not process_alive(pid), 10, "the spare to die of SIGKILL", 0.005)

    worker._fork_spare = record  # type: ignore[method-assign]
    return forked


def reaped(pid: int) -> bool:
    """Whether ``pid`` is no child of this process any more (neither running nor a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_forking_worker_forks_ahead(state: InboxState) -> None:
    worker = make_worker(state)
    assert isinstance(worker, RecoveringWorker) and isinstance(worker, PreforkingWorker)
    assert not isinstance(make_worker(state, simple=True), PreforkingWorker)


def fails(tag: str) -> None:
    """A job that fails, naming the process it failed in."""
    raise RuntimeError(f"{tag} failed in pid={os.getpid()}")


def enqueue_failing(state: InboxState, tag: str) -> Any:
    return state.queue.enqueue(fails, tag, job_id=f"{state.config.queue}-{tag}")


def pid_of(job: Any) -> int:
    """The process a ``where_am_i`` or ``fails`` job ran in, from its result."""
    result = job.latest_result()
    assert result is not None, job.id
    if result.type.name == "SUCCESSFUL":
        return int(result.return_value["pid"])
    return int(result.exc_string.rsplit("pid=", 1)[1].split()[0])


def test_jobs_run_one_after_another_in_the_horse_forked_before_the_first(
    state: InboxState,
) -> None:
    jobs = [enqueue(state, tag) for tag in ("first", "second", "third")]
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    assert worker.horse_jobs == state.config.workhorse_jobs == 50
    forked = recording_spares(worker)
    assert worker.work(burst=True)
    results = [job.latest_result() for job in jobs]
    assert [r.type.name if r else None for r in results] == ["SUCCESSFUL"] * 3
    returned = [r.return_value for r in results if r]
    assert [r["tag"] for r in returned] == ["first", "second", "third"]
    # One horse, forked before the first dequeue, ran every job, a child of the worker; it
    # waited for the next job meanwhile, so no other was forked. It was told to go at the end.
    assert len(forked) == 1
    assert [r["pid"] for r in returned] == forked * 3
    assert {r["ppid"] for r in returned} == {os.getpid()}
    assert reaped(forked[0])
    assert worker._spare is None and worker._running is None


def test_with_one_job_a_horse_each_job_runs_in_the_horse_forked_before_it_was_taken(
    state: InboxState,
) -> None:
    """``DICOM_INBOX_WORKHORSE_JOBS=1``: a work-horse per job, as RQ's Worker forks."""
    jobs = [enqueue(state, tag) for tag in ("first", "second")]
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    worker.horse_jobs = 1
    forked = recording_spares(worker)
    assert worker.work(burst=True)
    results = [job.latest_result() for job in jobs]
    assert [r.type.name if r else None for r in results] == ["SUCCESSFUL", "SUCCESSFUL"]
    returned = [r.return_value for r in results if r]
    assert [r["tag"] for r in returned] == ["first", "second"]
    # One spare before each dequeue: one per job, and one more for the dequeue that found the
    # queue empty. Each job ran in the spare forked before it was taken, a child of the worker.
    assert len(forked) == 3
    assert [r["pid"] for r in returned] == forked[:2]
    assert {r["ppid"] for r in returned} == {os.getpid()}
    # Every horse was reaped, and the spare left over at the end was told to go and reaped.
    assert all(reaped(pid) for pid in forked)
    assert worker._spare is None


def test_a_new_horse_after_its_job_count_and_after_a_failed_job(state: InboxState) -> None:
    jobs = [
        enqueue(state, "a"),
        enqueue(state, "b"),  # the horse's second job: its last
        enqueue(state, "c"),
        enqueue_failing(state, "d"),  # fails in c's horse, which then exits
        enqueue(state, "e"),
    ]
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    worker.horse_jobs = 2
    forked = recording_spares(worker)
    worker.work(burst=True)
    assert [j.latest_result().type.name for j in jobs] == [
        "SUCCESSFUL", "SUCCESSFUL", "SUCCESSFUL", "FAILED", "SUCCESSFUL",
    ]  # fmt: skip
    a, b, c, d, e = (pid_of(j) for j in jobs)
    assert a == b and c == d and len({a, c, e}) == 3
    assert forked == [a, c, e]
    assert all(reaped(pid) for pid in forked)


def test_a_horse_over_its_memory_bound_is_replaced_after_its_job(state: InboxState) -> None:
    jobs = [enqueue(state, tag) for tag in ("first", "second")]
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    worker.horse_max_mb = 1  # every Python process is past it
    forked = recording_spares(worker)
    assert worker.work(burst=True)
    pids = [pid_of(j) for j in jobs]
    assert len(set(pids)) == 2 and pids == forked[:2]
    assert all(reaped(pid) for pid in forked)


def test_a_spare_that_died_while_waiting_is_replaced_by_an_ordinary_fork(
    state: InboxState,
) -> None:
    jobs = [enqueue(state, tag) for tag in ("first", "second")]
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    killed = recording_spares(worker, kill=True)
    assert worker.work(burst=True)
    returned = [job.latest_result() for job in jobs]
    assert [r.return_value["tag"] if r else None for r in returned] == ["first", "second"]
    pids = {r.return_value["pid"] for r in returned if r}
    assert len(pids) == 2 and not pids & set(killed), "each job in a horse forked for it"
    assert all(reaped(pid) for pid in killed), "the dead spares were reaped, not left zombies"


def test_a_stop_signal_during_the_spares_fork_reaches_the_worker(state: InboxState) -> None:
    """SIGTERM while fork() runs: Python ran the handler inside logging's after-fork hook and
    dropped its StopRequested, so the worker went on waiting for jobs instead of stopping."""

    class Stop(Exception):
        pass

    def stop(_number: int, _frame: Any) -> None:
        raise Stop

    armed = [True]

    def signal_during_fork() -> None:  # stays registered: armed for this test's fork only
        if armed:
            armed.clear()
            os.kill(os.getpid(), signal.SIGTERM)

    os.register_at_fork(before=signal_during_fork)
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stop):
            worker._fork_spare()
        assert not armed, "the signal was sent during the fork"
        assert signal.getsignal(signal.SIGTERM) is stop, "the worker's handler is back"
        assert worker._spare is not None, "recorded before the stop was raised"
    finally:
        signal.signal(signal.SIGTERM, previous)
        pid = worker._spare.pid if worker._spare else None
        worker._drop_spare()
    assert pid is not None and reaped(pid), "the spare read end-of-file, exited and was reaped"


def test_a_worker_process_killed_outright_leaves_no_spare_behind(
    state: InboxState, tmp_path: Path
) -> None:
    """The spare waits on a pipe to its worker. When the worker dies, even by SIGKILL, the spare
    exits: at end-of-file, or, when another child of the worker (RQ's scheduler, restarted
    after the spare was forked) still holds the pipe, on seeing its parent gone."""
    worker = make_worker(state)
    assert isinstance(worker, PreforkingWorker)
    pids = tmp_path / "pids"
    child = os.fork()
    if child == 0:  # the worker's process: a spare, another child, then killed while it waits
        try:
            worker._fork_spare()
            assert worker._spare is not None
            holder = os.fork()
            if holder == 0:  # holds a copy of the spare's pipe, as a forked scheduler would
                time.sleep(60)
                os._exit(0)
            (tmp_path / "pids.tmp").write_text(f"{worker._spare.pid} {holder}")
            (tmp_path / "pids.tmp").rename(pids)
            time.sleep(60)
        finally:
            os._exit(1)
    wait_until(pids.exists, 20, "the worker to make a spare")
    spare, holder = map(int, pids.read_text().split())
    try:
        assert process_alive(spare) and process_alive(holder)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        # Reparented to init, which reaps it once it exits.
        wait_until(lambda: not process_alive(spare), 10, "the spare to leave with its worker")
        assert process_alive(holder), "the pipe was still held open when the spare left"
    finally:
        os.kill(holder, signal.SIGKILL)


@pytest.mark.parametrize("simple", [False, True], ids=["forking", "simple"])
def test_a_warm_shutdown_does_not_wait_for_the_command_listener(
    state: InboxState, simple: bool
) -> None:
    """RQ's command listener thread, once unsubscribed, waits up to 60 s for a new
    subscription; with redis-py 8.2 stopping it joined it with no bound, so a warm shutdown
    took up to a minute whenever the thread saw the unsubscription before it was told to
    stop. Here it is made to see it first, every time."""
    worker = make_worker(state, simple=simple)
    worker.subscribe()
    try:
        wait_until(lambda: worker.pubsub.subscribed, 10, "the listener to subscribe", 0.01)
        worker.pubsub.unsubscribe()  # the thread sees this, and waits for a subscription
        wait_until(lambda: not worker.pubsub.subscribed, 10, "the unsubscription", 0.01)
        time.sleep(0.2)
        started = time.monotonic()
        worker.unsubscribe()
        assert time.monotonic() - started < 5
    finally:
        worker.pubsub.close()
