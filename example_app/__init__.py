"""A real host for flask-dicom-inbox: SQLite users and projects, filesystem storage.

Run it with ``flask --app example_app run``; configure it with ``FLASK_``-prefixed environment
variables (``FLASK_DICOM_INBOX_PATH=/data/inbox``) or the mapping given to :func:`create_app`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify

from flask_dicom_inbox import DicomInbox

from . import db
from .commands import projects_cli, users_cli
from .dashboard import init_dashboard
from .host import SqliteAnonymization, SqliteProjects, SqliteUsers


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """The app factory: defaults, then ``FLASK_*`` environment variables, then ``config``."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DATABASE=os.path.join(app.instance_path, "example_app.sqlite"))
    app.config.from_prefixed_env()
    if config:
        app.config.from_mapping(config)
    os.makedirs(app.instance_path, exist_ok=True)
    db.init_app(app)
    DicomInbox(
        app,
        users=SqliteUsers(app),
        projects=SqliteProjects(app),
        anonymization=SqliteAnonymization(app),
    )
    state = DicomInbox.state(app)
    for folder in (
        state.config.inbox_path,
        state.config.prearchive_path,
        state.config.archive_path,
    ):
        folder.mkdir(parents=True, exist_ok=True)
    app.cli.add_command(users_cli)
    app.cli.add_command(projects_cli)
    init_dashboard(app)  # /rq, admins only

    @app.get("/")
    def index() -> Any:
        return jsonify({"application": "flask-dicom-inbox example host", "status": "ok"})

    return app
