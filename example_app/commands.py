"""``flask --app example_app users ...`` and ``projects ...``."""

from __future__ import annotations

import re
import sqlite3

import click
from flask import current_app
from flask.cli import AppGroup

from flask_dicom_inbox import DicomInbox

from .host import ROLES, SqliteProjects, SqliteUsers

users_cli = AppGroup("users", help="Manage users.")
projects_cli = AppGroup("projects", help="Manage projects and their members.")

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _users() -> SqliteUsers:
    return SqliteUsers(current_app)


def _projects() -> SqliteProjects:
    return SqliteProjects(current_app)


@users_cli.command("create")
@click.argument("name")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--admin", is_flag=True, help="Site administrator (sees every request).")
def create_user(name: str, password: str, admin: bool) -> None:
    """Create user NAME."""
    if not _ID.match(name):
        raise click.BadParameter("use 1-64 characters from A-Z, a-z, 0-9, '_' and '-'")
    if not password:
        raise click.BadParameter("the password may not be empty")
    try:
        _users().create(name, password, admin=admin)
    except sqlite3.IntegrityError:
        raise click.ClickException(f"user {name!r} already exists") from None
    click.echo(f"created user {name}{' (admin)' if admin else ''}")


@projects_cli.command("create")
@click.argument("project_id")
@click.option("--owner", required=True, help="An existing user; becomes the project's owner.")
@click.option("--auto-archive", is_flag=True, help="Imports go straight to the archive.")
def create_project(project_id: str, owner: str, auto_archive: bool) -> None:
    """Create project PROJECT_ID and its inbox folder."""
    if not _ID.match(project_id):
        raise click.BadParameter("use 1-64 characters from A-Z, a-z, 0-9, '_' and '-'")
    if _users().get_user(owner) is None:
        raise click.ClickException(f"no user {owner!r}")
    try:
        _projects().create(project_id, owner, auto_archive=auto_archive)
    except sqlite3.IntegrityError:
        raise click.ClickException(f"project {project_id!r} already exists") from None
    inbox = DicomInbox.state(current_app).config.inbox_path / project_id
    inbox.mkdir(parents=True, exist_ok=True)
    click.echo(f"created project {project_id} (inbox folder {inbox})")


@projects_cli.command("add-member")
@click.argument("project_id")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), default="member", show_default=True)
def add_member(project_id: str, name: str, role: str) -> None:
    """Give user NAME a ROLE in PROJECT_ID (collaborators can read, not edit)."""
    if _projects().get_project(project_id) is None:
        raise click.ClickException(f"no project {project_id!r}")
    if _users().get_user(name) is None:
        raise click.ClickException(f"no user {name!r}")
    _projects().add_member(project_id, name, role)
    click.echo(f"{name} is now {role} of {project_id}")
