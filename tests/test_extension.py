"""The extension's shape: config defaults, env config, one init per app, docs match the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app import create_app
from example_app.host import SqliteProjects, SqliteUsers
from flask_dicom_inbox import DicomInbox
from flask_dicom_inbox.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent


def test_every_config_key_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [key for key in DEFAULTS if f"`{key}`" not in readme]
    assert missing == []


def test_defaults_fill_only_unset_keys(app_config: dict[str, Any]) -> None:
    app = create_app({**app_config, "DICOM_INBOX_QUEUE": "my-queue"})
    assert app.config["DICOM_INBOX_QUEUE"] == "my-queue"
    assert app.config["DICOM_INBOX_MAX_FILES"] == DEFAULTS["DICOM_INBOX_MAX_FILES"][0]
    assert DicomInbox.state(app).queue.name == "my-queue"


def test_paths_default_to_the_instance_folder(tmp_path: Path, redis_url: str) -> None:
    app = create_app({"DATABASE": str(tmp_path / "db.sqlite"), "DICOM_INBOX_REDIS_URL": redis_url})
    cfg = DicomInbox.state(app).config
    instance = Path(app.instance_path).resolve()
    assert cfg.inbox_path == instance / "inbox"
    assert cfg.prearchive_path == instance / "prearchive"
    assert cfg.archive_path == instance / "archive"


def test_config_from_flask_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    monkeypatch.setenv("FLASK_DICOM_INBOX_PATH", str(tmp_path / "env-inbox"))
    monkeypatch.setenv("FLASK_DATABASE", str(tmp_path / "env.sqlite"))
    monkeypatch.setenv("FLASK_DICOM_INBOX_REDIS_URL", redis_url)
    monkeypatch.setenv("FLASK_DICOM_INBOX_MAX_FILES", "7")
    app = create_app()
    cfg = DicomInbox.state(app).config
    assert cfg.inbox_path == (tmp_path / "env-inbox").resolve()
    assert cfg.max_files == 7
    assert app.config["DATABASE"] == str(tmp_path / "env.sqlite")
    assert (tmp_path / "env.sqlite").exists()


def test_second_init_app_is_refused(app: Flask) -> None:
    ext = DicomInbox(users=SqliteUsers(app), projects=SqliteProjects(app))
    with pytest.raises(RuntimeError, match="already initialised"):
        ext.init_app(app)


def test_state_of_an_app_without_the_extension_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not initialised"):
        DicomInbox.state(Flask("bare"))


def test_extension_does_not_keep_the_app(app: Flask) -> None:
    ext = DicomInbox.state(app).extension
    assert not hasattr(ext, "app")
    assert app.extensions["dicom_inbox"].extension is ext


def test_new_redis_connections_do_not_read_the_package_metadata(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every RQ work-horse opens its connections anew; redis-py 7+ read their version from
    the package metadata for each one (5-6 ms) unless it is handed over."""
    import importlib.metadata
    import importlib.util

    import redis
    import redis.utils

    state = DicomInbox.state(app)
    looked_up: list[str] = []
    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata, "version", lambda name: looked_up.append(name) or real_version(name)
    )
    # redis-py 8.2 and later remember the version once per process (functools.cache); forget
    # it, so that a lookup by either client below would be seen.
    forget = getattr(redis.utils.get_lib_version, "cache_clear", lambda: None)
    forget()
    state.redis.connection_pool.disconnect()
    state.redis.connection_pool.reset()  # as in a forked work-horse: no connection left
    assert state.redis.ping()
    assert looked_up == []
    forget()
    plain = redis.Redis.from_url(state.config.redis_url)  # the control: redis-py's default
    try:
        plain.ping()
    finally:
        plain.close()
    if importlib.util.find_spec("redis.driver_info") is not None:  # redis-py 7 and later
        assert looked_up == ["redis"]
