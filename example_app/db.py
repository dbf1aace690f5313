"""SQLite storage of the example host: one short-lived connection per use."""

from __future__ import annotations

import sqlite3
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


@contextmanager
def connect(path: str) -> Iterator[sqlite3.Connection]:
    """A connection that commits on success and always closes."""
    conn = sqlite3.connect(path, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def init_app(app: Flask) -> None:
    with connect(app.config["DATABASE"]) as conn:
        conn.executescript(SCHEMA)
