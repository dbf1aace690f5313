"""Fan-out: one request's chunks taken by several workers, lost chunks posted again, a new run
waits for an earlier run's live claims, and three worker processes share one import."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from rq import Worker
from rq.job import Job
from rq.registry import FinishedJobRegistry

from example_app.demo import write_session
from flask_dicom_inbox import InboxState
from flask_dicom_inbox.dicom import read_header
from flask_dicom_inbox.fanout import (
    ChunkBoard,
    HelperRoll,
    await_posting,
    begin_run,
    end_run,
    is_current,
    run_key,
    run_phase,
    work_through,
)
from flask_dicom_inbox.filetable import HEADER_FIELDS
from flask_dicom_inbox.importer import (
    ProgressReporter,
    chunk_sizes,
    header_of_result,
    read_header_chunk,
)
from flask_dicom_inbox.service import idle_workers, queue_helpers_ahead, start_helpers
from flask_dicom_inbox.storage import TEMP_PREFIX

from .conftest import auth, new_record, recorded_commands, run_worker, stop_workers, submit


def _board(state: InboxState, run: str = "r1", claim_seconds: int = 30) -> ChunkBoard:
    return ChunkBoard(
        state.redis, state.config.key_prefix, 7, run, "headers", claim_seconds=claim_seconds
    )


def _square(payload: Any, heartbeat: Any) -> list[int]:
    heartbeat()
    return [x * x for x in payload]


def test_every_chunk_is_done_once_and_results_come_back_in_order(state: InboxState) -> None:
    board = _board(state)
    payloads = [[i, i + 1] for i in range(0, 20, 2)]
    started: list[int] = []
    results = list(
        run_phase(board, payloads, {"k": 1}, _square, start_helpers=started.append, max_helpers=3)
    )
    assert results == [[x * x for x in p] for p in payloads]
    assert started == [3], "min(chunks - 1, max_helpers) helpers asked for"
    assert board.meta() == {"k": 1}
    assert board.done_count() == 10


def test_header_results_travel_by_position_and_named_ones_of_earlier_helpers_still_read(
    state: InboxState, tmp_path: Path
) -> None:
    files = [str(p) for p in write_session(tmp_path / "s", series=1, files_per_series=3).files]
    (tmp_path / "notes.txt").write_text("not DICOM")
    chunk = [*files, str(tmp_path / "notes.txt")]
    report = ProgressReporter(state.store, 1, 10**6)
    sent = read_header_chunk(chunk, lambda: None, max_inflated_bytes=1 << 20, report=report)
    results = json.loads(json.dumps(sent))  # as the board carries it between workers
    assert [sorted(r) for r in results] == [["h"]] * 3 + [["e"]]
    expected = [read_header(path, max_inflated_bytes=1 << 20) for path in files]
    assert all(isinstance(r["h"], list) for r in results[:3])  # by position, not by name
    assert [header_of_result(r["h"]) for r in results[:3]] == expected
    named = [{n: getattr(h, n) for n in HEADER_FIELDS} for h in expected]  # as sent before
    assert [header_of_result(fields) for fields in named] == expected


def test_a_single_chunk_asks_for_no_helper(state: InboxState) -> None:
    started: list[int] = []
    run_phase(_board(state), [[3]], {}, _square, start_helpers=started.append, max_helpers=4)
    assert started == []


def test_two_takers_share_a_board_without_doing_a_chunk_twice(state: InboxState) -> None:
    board = _board(state)
    board.post([[i] for i in range(40)], {})
    seen: list[int] = []
    lock = threading.Lock()

    def work(payload: Any, heartbeat: Any) -> int:
        with lock:
            seen.extend(payload)
        time.sleep(0.002)
        return int(payload[0])

    other = _board(state)  # another worker's view of the same board
    thread = threading.Thread(target=work_through, args=(other, work))
    thread.start()
    mine = work_through(board, work)
    thread.join()
    assert sorted(seen) == list(range(40))
    assert 0 < mine < 40, "both takers got chunks"
    assert list(board.results()) == list(range(40))


def test_a_chunk_whose_taker_died_is_posted_again(state: InboxState) -> None:
    board = _board(state, claim_seconds=1)
    board.post([[1], [2], [3]], {})
    dead = _board(state, claim_seconds=1)
    taken = dead.take()  # a helper takes a chunk and is SIGKILLed: it never finishes it
    assert taken is not None
    assert board.reclaim_lapsed() == [], "the claim is still alive"
    work_through(board, _square)
    assert board.done_count() == 2
    time.sleep(1.2)
    assert board.reclaim_lapsed() == [taken[0]]
    work_through(board, _square)
    assert list(board.results()) == [[1], [4], [9]]


def test_a_new_run_waits_for_the_live_claims_of_the_old_one(state: InboxState) -> None:
    prefix = state.config.key_prefix
    old = begin_run(state.redis, prefix, 7, claim_seconds=1)
    board = _board(state, run=old, claim_seconds=1)
    board.post([[1], [2]], {})
    assert board.take() is not None  # an orphaned helper holds this claim for up to 1 s
    started = time.monotonic()
    new = begin_run(state.redis, prefix, 7, claim_seconds=1)
    waited = time.monotonic() - started
    assert new != old
    assert waited >= 0.5, "the new run waited for the old claim to lapse"
    assert not is_current(state.redis, prefix, 7, old)
    assert is_current(state.redis, prefix, 7, new)
    assert board.total() == 0, "the old run's keys are gone"
    assert work_through(_board(state, run=old), _square) == 0
    end_run(state.redis, prefix, 7, new)
    assert state.redis.get(run_key(prefix, 7)) is None


def test_a_run_s_end_deletes_its_keys_by_name_and_no_other_key(state: InboxState) -> None:
    """Two phases (one of 1,200 chunks, so deletion spans batches), claims, results, a roll
    and a post cut short: every key of the run goes at its end, and no SCAN is made (one
    read the whole keyspace of the shared Redis at each request's end)."""
    prefix = state.config.key_prefix
    run = begin_run(state.redis, prefix, 7, claim_seconds=30)
    neighbour = f"{prefix}request:70:run:{run}:headers:chunk:0"  # another request's key
    state.redis.set(neighbour, "x")
    big = ChunkBoard(state.redis, prefix, 7, run, "headers", claim_seconds=30)
    big.post(([i] for i in range(1200)), {})
    work_through(big, _square, keep_going=lambda: big.done_count() < 1100)
    assert big.take() is not None  # a claim left alive
    store = ChunkBoard(state.redis, prefix, 7, run, "store", claim_seconds=30)

    def cut_short() -> Iterator[list[int]]:
        yield from ([i] for i in range(40))
        raise RuntimeError("the coordinator died while posting")

    with pytest.raises(RuntimeError):
        store.post(cut_short(), {})
    _roll(state, run=run).renew("helper-1")
    base = f"{prefix}request:7:run:{run}:"
    assert len(list(state.redis.scan_iter(match=f"{base}*", count=1000))) > 2300
    with recorded_commands(state.redis) as commands:
        end_run(state.redis, prefix, 7, run)
    assert {"SCAN", "KEYS"}.isdisjoint(c[0] for c in commands) and commands
    assert list(state.redis.scan_iter(match=f"{base}*", count=1000)) == []
    assert state.redis.get(neighbour) == b"x"
    state.redis.delete(neighbour)


def _roll(state: InboxState, run: str = "r1", seconds: int = 30) -> HelperRoll:
    return HelperRoll(state.redis, state.config.key_prefix, 7, run, seconds=seconds)


def test_a_helper_waits_for_the_next_phase_and_takes_its_chunks(state: InboxState) -> None:
    """Between phases a helper stays (counted in the roll) until the coordinator posts."""
    board, roll = _board(state), _roll(state)
    got: list[Any] = []

    def helper() -> None:
        meta = await_posting(board, roll, "h1", may_wait=lambda: True, patience=10)
        got.append(meta)
        got.append(work_through(_board(state), _square))

    thread = threading.Thread(target=helper)
    thread.start()
    time.sleep(0.15)
    assert thread.is_alive(), "the helper waits for the phase"
    assert roll.count() == 1, "a waiting helper counts"
    board.post([[i] for i in range(40)], {"phase": 2})
    mine = work_through(board, lambda p, h: (time.sleep(0.002), p)[1])
    thread.join(5)
    assert got[0] == {"phase": 2}
    assert got[1] > 0 and mine + got[1] == 40, "the helper took chunks of the posted phase"
    assert roll.count() == 1, "still counted: it leaves when its job ends"
    roll.leave("h1")
    assert roll.count() == 0


def test_a_waiting_helper_leaves_when_out_of_patience_or_needed_elsewhere(
    state: InboxState,
) -> None:
    board, roll = _board(state), _roll(state)
    started = time.monotonic()
    assert await_posting(board, roll, "h1", may_wait=lambda: True, patience=0.2) is None
    assert 0.2 <= time.monotonic() - started < 2
    assert roll.count() == 0, "it left the roll"
    started = time.monotonic()
    assert await_posting(board, roll, "h2", may_wait=lambda: False, patience=10) is None
    assert time.monotonic() - started < 1, "another job wants the worker: it leaves at once"
    assert roll.count() == 0


def test_a_phase_posted_as_its_helper_gives_up_is_still_taken(state: InboxState) -> None:
    """The coordinator may have counted the helper just before it gave up."""
    board, roll = _board(state), _roll(state)

    def post_then_stop() -> bool:
        board.post([[1]], {"late": True})
        return False

    meta = await_posting(board, roll, "h1", may_wait=post_then_stop, patience=10)
    assert meta == {"late": True}


def test_waiting_helpers_wake_when_the_phase_is_posted_not_at_their_next_look(
    state: InboxState,
) -> None:
    """Helpers blocked in Redis between phases (however long they would block) all start the
    moment the coordinator posts, and a helper arriving later finds the phase at once."""
    board, roll = _board(state), _roll(state)
    woke: dict[str, float] = {}

    def helper(name: str) -> None:
        meta = await_posting(board, roll, name, may_wait=lambda: True, patience=30, poll_seconds=10)
        assert meta == {"phase": 2}
        woke[name] = time.monotonic()

    threads = [threading.Thread(target=helper, args=(f"h{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert not woke and roll.count() == 3, "all three wait, blocked in Redis"
    posted = time.monotonic()
    board.post([[1], [2]], {"phase": 2})
    for thread in threads:
        thread.join(5)
    assert sorted(woke) == ["h0", "h1", "h2"]
    assert max(woke.values()) - posted < 2, "woken by the post, not by their 10 s timeout"
    started = time.monotonic()
    assert await_posting(board, roll, "h3", may_wait=lambda: True, patience=30) == {"phase": 2}
    assert time.monotonic() - started < 2


def test_the_coordinator_wakes_when_a_helper_finishes_the_last_chunk(state: InboxState) -> None:
    """At the end of a phase the coordinator waits for the helpers' chunks blocked in Redis,
    and the end of the last one wakes it (not its next look, here 10 s away)."""
    board = _board(state)
    release = threading.Event()
    finished: list[float] = []

    def helper() -> None:  # takes the first chunk and holds it until released
        taken = _board(state).take()
        assert taken is not None
        release.wait(10)
        _board(state).finish(taken[0], _square(taken[1], lambda: None))
        finished.append(time.monotonic())

    def start_helpers(_n: int) -> None:
        threading.Thread(target=helper).start()
        time.sleep(0.2)  # the helper has taken chunk 0 before the coordinator looks

    threading.Timer(0.6, release.set).start()
    results = list(
        run_phase(
            board,
            [[2], [3]],
            {},
            _square,
            start_helpers=start_helpers,
            max_helpers=1,
            poll_seconds=10,
        )
    )
    assert results == [[4], [9]]
    assert finished and time.monotonic() - finished[0] < 2, "woken by the helper's finish"


def test_a_helper_that_never_renews_stops_counting(state: InboxState) -> None:
    roll = _roll(state, seconds=1)
    assert roll.renew("queued-helper") == 1
    assert roll.renew("other") == 2
    roll.leave("other")
    assert roll.count() == 1
    time.sleep(1.1)
    assert roll.count() == 0, "a dead (or still queued) helper lapses"


@contextlib.contextmanager
def _idle_workers(state: InboxState, n: int) -> Iterator[list[Worker]]:
    """``n`` workers registered on the queue (none running) for the block's length."""
    workers = [
        Worker([state.queue], connection=state.redis, name=f"idle-{i}-{os.getpid()}")
        for i in range(n)
    ]
    for worker in workers:
        worker.register_birth()
    try:
        yield workers
    finally:
        for worker in workers:
            worker.register_death()


def _record(state: InboxState, files: int) -> Any:
    return new_record(state.store, options={"fileCount": files})


def test_helpers_are_queued_ahead_for_idle_workers_when_there_will_be_chunks(
    state: InboxState,
) -> None:
    chunk = state.config.chunk_files
    with _idle_workers(state, 2):
        assert queue_helpers_ahead(state, _record(state, chunk), "r1") == [], "one chunk: no help"
        record = _record(state, 10 * chunk)
        jobs = queue_helpers_ahead(state, record, "r2")
        assert len(jobs) == 2, "one per idle worker"
        assert all(job.args == (record.id, "r2", "headers") for job in jobs), "first phase on"
        roll = HelperRoll(state.redis, state.config.key_prefix, record.id, "r2", seconds=30)
        assert roll.count() == 2, "counted from the moment they are queued"
    assert queue_helpers_ahead(state, _record(state, 10 * chunk), "r3") == [], "no idle worker"


def test_a_posted_phase_counts_the_run_s_helpers_before_queuing_more(
    state: InboxState,
) -> None:
    record = _record(state, 1000)
    roll = HelperRoll(state.redis, state.config.key_prefix, record.id, "r1", seconds=30)
    assert len(start_helpers(state, record, "r1", "store", 3)) == 1, (
        "no helper and no idle worker: one, for a worker that may come free"
    )
    assert roll.count() == 1, "a queued helper counts at once"
    assert start_helpers(state, record, "r1", "store", 3) == [], "no idle worker for more"
    with _idle_workers(state, 5):
        assert len(start_helpers(state, record, "r1", "store", 3)) == 2, "3 wanted, 1 there"
        assert roll.count() == 3
        assert start_helpers(state, record, "r1", "store", 3) == []


def test_small_chunks_and_helpers_in_one_worker_import_every_file_once(
    app: Flask, client: FlaskClient, inbox: Path, state: InboxState
) -> None:
    """Chunks of 7 files over two phases; a helper job queued behind finds nothing to do.

    The only worker runs the request, so no worker is idle: none is queued ahead, the first
    phase queues one (for a worker that may come free), not one per chunk up to
    DICOM_INBOX_HELPER_JOBS, and the second phase counts that one and queues none.
    """
    app.config["DICOM_INBOX_CHUNK_FILES"] = 7
    app.config["DICOM_INBOX_HELPER_JOBS"] = 2
    from flask_dicom_inbox.config import InboxConfig

    state.config = InboxConfig.from_app(app)
    session = inbox / "test_proj" / "chunked"
    generated = write_session(session, series=3, files_per_series=20, rows=32, columns=32)
    response = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="chunked", path=str(session))
    assert response.status_code == 200
    run_worker(app)
    status = client.get(response.get_data(as_text=True).strip(), headers=auth()).get_json()
    assert status["status"] == "Completed", status["errors"][:3]
    assert status["progress"]["filesImported"] == 60
    assert status["progress"]["filesDone"] == 60
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert len(written) == 60
    assert sorted(p.name for p in written) == sorted(p.name for p in generated.files)
    assert not state.redis.keys(f"{state.config.key_prefix}request:*:run*"), "runs cleaned up"
    helpers = FinishedJobRegistry(queue=state.queue).get_job_ids()
    assert len([j for j in helpers if "-headers-" in j]) == 1, helpers
    assert len([j for j in helpers if "-store-" in j]) == 0, helpers


def test_idle_workers_counts_the_queue_s_workers_less_its_running_jobs(
    state: InboxState,
) -> None:
    assert idle_workers(state) == 0
    with _idle_workers(state, 3) as workers:
        assert idle_workers(state) == 3
        job = state.queue.enqueue(len, "x")
        workers[0].prepare_execution(job)  # RQ's own step: the job enters the started registry
        assert idle_workers(state) == 2
        job.delete()
    assert idle_workers(state) == 0


@pytest.mark.parametrize(
    ("count", "sizes"),
    [
        (0, []),
        (10, [10]),
        (256, [256]),
        (300, [75, 75, 75, 75]),
        (1000, [256, 256, 122, 122, 122, 122]),
        (1001, [256, 256, 123, 122, 122, 122]),
    ],
)
def test_a_phase_s_last_chunks_are_cut_smaller_so_its_workers_end_together(
    count: int, sizes: list[int]
) -> None:
    assert list(chunk_sizes(count, 256)) == sizes


def test_chunk_sizes_cover_every_item_within_the_chunk_size() -> None:
    for size in (1, 7, 20, 256):
        for count in range(0, 6 * size + 3):
            sizes = list(chunk_sizes(count, size))
            assert sum(sizes) == count and all(0 < n <= size for n in sizes), (count, size)
            assert len(sizes) <= count // size + 4


def _env(app_config: dict[str, Any], **extra: Any) -> dict[str, str]:
    values = {**app_config, **extra}
    return {**os.environ, **{f"FLASK_{k}": str(v) for k, v in values.items() if k != "TESTING"}}


@pytest.mark.slow
def test_three_worker_processes_share_one_import(
    app: Flask,
    client: FlaskClient,
    inbox: Path,
    state: InboxState,
    app_config: dict[str, Any],
) -> None:
    settings = {"DICOM_INBOX_CHUNK_FILES": 20, "DICOM_INBOX_HELPER_JOBS": 4}
    app.config.update(settings)
    from flask_dicom_inbox.config import InboxConfig

    state.config = InboxConfig.from_app(app)
    assert client.put("/xapi/anonymize/site/enabled", data="true", headers=auth()).status_code
    session = inbox / "test_proj" / "shared"
    generated = write_session(session, series=4, files_per_series=100, rows=64, columns=64)
    env = _env(app_config, **settings)
    command = [sys.executable, "-m", "flask", "--app", "example_app", "dicom-inbox", "worker"]
    workers = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(3)
    ]
    try:
        time.sleep(2)  # all three listening before the request arrives
        response = submit(client, PROJECT_ID="test_proj", EXPT_LABEL="shared", path=str(session))
        assert response.status_code == 200
        url = response.get_data(as_text=True).strip()
        deadline = time.monotonic() + 120
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = client.get(url, headers=auth()).get_json()
            if status["status"] in ("Completed", "Failed"):
                break
            time.sleep(0.1)
        assert status["status"] == "Completed", (status["message"], status["errors"][:3])
        time.sleep(0.5)  # helpers still finishing their (empty) last take
        helper_chunks = [
            Job.fetch(job_id, connection=state.redis).return_value()
            for job_id in FinishedJobRegistry(queue=state.queue).get_job_ids()
            if "-headers-" in job_id or "-store-" in job_id
        ]
    finally:
        stop_workers(*workers)
    assert sum(int(n or 0) for n in helper_chunks) > 0, "helper jobs took chunks"
    written = [p for p in state.config.prearchive_path.rglob("*") if p.is_file()]
    assert not [p for p in written if p.name.startswith(TEMP_PREFIX)]
    assert len(written) == 400
    assert len({p.name for p in written}) == 400
    assert all(p.read_bytes() != b"" for p in written)
    assert all(p.exists() for p in generated.files), "copy mode keeps the sources"
