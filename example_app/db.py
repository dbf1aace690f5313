"""SQLite storage of the example host: a connection per thread and database."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Flask

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL REFERENCES users(name),
    auto_archive INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS members (
    project_id TEXT NOT NULL REFERENCES projects(id),
    username TEXT NOT NULL REFERENCES users(name),
    role TEXT NOT NULL CHECK (role IN ('owner', 'member', 'collaborator')),
    PRIMARY KEY (project_id, username)
);
CREATE TABLE IF NOT EXISTS project_anonymization (
    project_id TEXT PRIMARY KEY REFERENCES projects(id),
    script TEXT,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


_local = threading.local()
_MAX_PER_THREAD = 4
_inherited: list[sqlite3.Connection] = []  # kept unreferenced-proof, so never closed


@contextmanager
def connect(path: str) -> Iterator[sqlite3.Connection]:
    """This thread's connection to ``path``, in a transaction that commits on success.

    Opening a connection costs more than the query of an authorized status GET, so each
    thread keeps one per database; a forked process (an RQ work-horse) opens its own.
    """
    conns: dict[tuple[int, str], sqlite3.Connection] = _local.__dict__.setdefault("conns", {})
    key = (os.getpid(), path)
    conn = conns.get(key)
    if conn is None:
        for old in [k for k in conns if k[0] != key[0]]:
            # A parent's, inherited through fork: SQLite forbids using (or closing) it here.
            _inherited.append(conns.pop(old))
        while len(conns) >= _MAX_PER_THREAD:  # many databases (tests): close the oldest
            conns.pop(next(iter(conns))).close()
        conn = sqlite3.connect(path, timeout=30)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conns[key] = conn
    with conn:
        yield conn


def init_app(app: Flask) -> None:
    with connect(app.config["DATABASE"]) as conn:
        conn.executescript(SCHEMA)
