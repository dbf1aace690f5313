"""The example host's implementation of flask-dicom-inbox's protocols, on SQLite."""

from __future__ import annotations

import functools

from flask import Flask
from werkzeug.security import check_password_hash, generate_password_hash

from flask_dicom_inbox import InboxUser, ProjectSettings, ScriptSetting

from .db import connect

EDIT_ROLES = frozenset({"owner", "member"})
ROLES = ("owner", "member", "collaborator")


@functools.cache
def _dummy_hash() -> str:
    """Checked for unknown users so a wrong name costs as long as a wrong password.

    Made on first use, not at import: scrypt takes 32 MB and 0.1 s, which every process that
    imports the app (each RQ worker, every CLI command) would otherwise pay for nothing.
    """
    return generate_password_hash("dicom-inbox-timing-equaliser")


class SqliteUsers:
    """Users with hashed passwords (Werkzeug's default, scrypt)."""

    def __init__(self, app: Flask) -> None:
        self.database = app.config["DATABASE"]

    def authenticate(self, username: str, password: str) -> InboxUser | None:
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT name, password_hash, is_admin FROM users WHERE name = ?", (username,)
            ).fetchone()
        if row is None:
            check_password_hash(_dummy_hash(), password)
            return None
        if not check_password_hash(row["password_hash"], password):
            return None
        return InboxUser(username=row["name"], is_admin=bool(row["is_admin"]))

    def get_user(self, username: str) -> InboxUser | None:
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT name, is_admin FROM users WHERE name = ?", (username,)
            ).fetchone()
        return None if row is None else InboxUser(row["name"], bool(row["is_admin"]))

    def create(self, name: str, password: str, *, admin: bool = False) -> None:
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO users (name, password_hash, is_admin) VALUES (?, ?, ?)",
                (name, generate_password_hash(password), int(admin)),
            )


class SqliteProjects:
    """Projects, their members' roles and their auto-archive setting."""

    def __init__(self, app: Flask) -> None:
        self.database = app.config["DATABASE"]

    def get_project(self, project_id: str) -> ProjectSettings | None:
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT id, auto_archive FROM projects WHERE id = ?", (project_id,)
            ).fetchone()
        return None if row is None else ProjectSettings(row["id"], bool(row["auto_archive"]))

    def role(self, user: InboxUser, project_id: str) -> str | None:
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT role FROM members WHERE project_id = ? AND username = ?",
                (project_id, user.username),
            ).fetchone()
        return None if row is None else str(row["role"])

    def can_edit(self, user: InboxUser, project_id: str) -> bool:
        if self.get_project(project_id) is None:
            return False
        return user.is_admin or self.role(user, project_id) in EDIT_ROLES

    def can_prevent_anon(self, user: InboxUser, project_id: str) -> bool:
        if self.get_project(project_id) is None:
            return False
        return user.is_admin or self.role(user, project_id) == "owner"

    def can_manage(self, user: InboxUser, project_id: str) -> bool:
        return self.can_prevent_anon(user, project_id)

    def create(self, project_id: str, owner: str, *, auto_archive: bool = False) -> None:
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO projects (id, owner, auto_archive) VALUES (?, ?, ?)",
                (project_id, owner, int(auto_archive)),
            )
            conn.execute(
                "INSERT INTO members (project_id, username, role) VALUES (?, ?, 'owner')",
                (project_id, owner),
            )

    def add_member(self, project_id: str, username: str, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO members (project_id, username, role) VALUES (?, ?, ?) "
                "ON CONFLICT (project_id, username) DO UPDATE SET role = excluded.role",
                (project_id, username, role),
            )


class SqliteAnonymization:
    """The site script (table ``settings``) and each project's (``project_anonymization``)."""

    def __init__(self, app: Flask) -> None:
        self.database = app.config["DATABASE"]

    def _setting(self, key: str) -> str | None:
        with connect(self.database) as conn:
            row = conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def _put(self, key: str, value: str) -> None:
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def site_script(self) -> ScriptSetting:
        enabled = self._setting("anon.site.enabled")
        return ScriptSetting(self._setting("anon.site.script"), enabled != "false")

    def set_site_script(self, text: str) -> None:
        self._put("anon.site.script", text)

    def set_site_enabled(self, enabled: bool) -> None:
        self._put("anon.site.enabled", "true" if enabled else "false")

    def project_script(self, project_id: str) -> ScriptSetting:
        with connect(self.database) as conn:
            row = conn.execute(
                "SELECT script, enabled FROM project_anonymization WHERE project_id = ?",
                (project_id,),
            ).fetchone()
        if row is None:
            return ScriptSetting(None, False)
        return ScriptSetting(row["script"], bool(row["enabled"]))

    def set_project_script(self, project_id: str, text: str) -> None:
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO project_anonymization (project_id, script, enabled) VALUES (?, ?, 1) "
                "ON CONFLICT (project_id) DO UPDATE SET script = excluded.script",
                (project_id, text),
            )

    def set_project_enabled(self, project_id: str, enabled: bool) -> None:
        with connect(self.database) as conn:
            conn.execute(
                "INSERT INTO project_anonymization (project_id, script, enabled) "
                "VALUES (?, NULL, ?) "
                "ON CONFLICT (project_id) DO UPDATE SET enabled = excluded.enabled",
                (project_id, int(enabled)),
            )
