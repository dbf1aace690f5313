"""``dicom-inbox``: a command-line client of the inbox's REST calls, for people and scripts.

It uses only the standard library (urllib, netrc, getpass), so it runs wherever Python does,
on the server or on any machine that reaches it, with nothing else installed::

    dicom-inbox import /data/inbox/P/s01 --project P --url http://host:8080 --user alice --wait
    dicom-inbox status 17 --url ... --user ...
    dicom-inbox list --active --url ... --user ...

Exit codes: 0 done (an import ``Completed``), 1 the import ``Failed``, 2 a usage,
authentication, HTTP or network error (one line, the server's ``message``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import netrc
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from http import HTTPStatus
from typing import Any, TextIO

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

FINISHED = ("Completed", "Failed")
_STATUS_URL = re.compile(r"/xapi/dicom/(\d+)\s*$")


class ClientError(Exception):
    """A fault the user must fix (usage, credentials, HTTP, network): one line, exit 2."""


@dataclass(frozen=True)
class Server:
    """Where the inbox answers and who asks. ``base`` may carry a path (``http://h/xnat``)."""

    base: str
    user: str
    password: str
    timeout: float

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def call(self, method: str, path: str, query: dict[str, str] | None = None) -> bytes:
        """One authenticated call; an HTTP error becomes a :class:`ClientError`."""
        url = self.url(path)
        if query:
            url = f"{url}?{urllib.parse.urlencode(query)}"
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode("ascii")
        # _server() admits only http(s) base URLs, so no file: or custom scheme gets here.
        request = urllib.request.Request(  # noqa: S310
            url,
            data=b"" if method == "POST" else None,
            method=method,
            headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                body: bytes = answer.read()
                return body
        except urllib.error.HTTPError as exc:
            raise ClientError(_http_message(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"cannot reach {self.base}: {reason}") from None

    def get_json(self, path: str) -> Any:
        body = self.call("GET", path)
        try:
            return json.loads(body)
        except ValueError:
            raise ClientError(f"{self.url(path)} did not answer JSON") from None


class _CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but sends the password only to the origin (scheme,
    host, port) it was given for: urllib would repeat it to wherever a redirect points."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or ""), parts.port or {"http": 80, "https": 443}.get(scheme)


_OPENER = urllib.request.build_opener(_CredentialsStayHome)


def _http_message(exc: urllib.error.HTTPError) -> str:
    """``HTTP 403 Forbidden: <the server's message>`` from a JSON error body, if any."""
    try:
        body = exc.read()
    except OSError:
        body = b""
    message = ""
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            message = str(data.get("message") or "")
    except ValueError:
        pass
    if not message:
        text = body.decode("utf-8", "replace").strip()
        message = text.splitlines()[0][:200] if text and not text.startswith("<") else ""
    try:
        phrase = HTTPStatus(exc.code).phrase
    except ValueError:
        phrase = str(exc.reason)
    line = f"HTTP {exc.code} {phrase}"
    return f"{line}: {message}" if message else line


# -- credentials -------------------------------------------------------------------------------


def _netrc_entry(host: str) -> tuple[str, str] | None:
    """``(login, password)`` for ``host`` from ``$NETRC`` or ``~/.netrc``; None if absent."""
    path = os.environ.get("NETRC") or None
    try:
        entry = netrc.netrc(path).authenticators(host)
    except FileNotFoundError:
        if path is not None:
            raise ClientError(f"NETRC names {path!r}, which does not exist") from None
        return None
    except (netrc.NetrcParseError, OSError) as exc:
        raise ClientError(f"cannot read the netrc file: {exc}") from None
    if entry is None or not entry[2]:
        return None
    return entry[0], entry[2]


def resolve_credentials(url: str, user: str | None) -> tuple[str, str]:
    """The user (option, ``DICOM_INBOX_USER``, netrc) and password.

    Password order: ``DICOM_INBOX_PASSWORD``, then netrc for the URL's host (when its login is
    the user, or no user was given), then a prompt when stdin is a terminal.
    """
    host = urllib.parse.urlsplit(url).hostname or ""
    user = user or os.environ.get("DICOM_INBOX_USER") or None
    password = os.environ.get("DICOM_INBOX_PASSWORD")
    if user and password:
        return user, password
    entry = _netrc_entry(host) if host else None
    if entry is not None and (user is None or entry[0] == user):
        login, secret = entry
        return login, password or secret
    if not user:
        raise ClientError(f"no user: pass --user, set DICOM_INBOX_USER or add {host} to netrc")
    if password:
        return user, password
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            return user, getpass.getpass(f"Password for {user} at {host}: ")
        except EOFError:
            raise ClientError("no password entered") from None
    raise ClientError(
        f"no password for {user}: set DICOM_INBOX_PASSWORD, add machine {host} to ~/.netrc "
        "(or the file NETRC names), or run in a terminal to be asked"
    )


def _server(args: argparse.Namespace) -> Server:
    url = args.url or os.environ.get("DICOM_INBOX_URL")
    if not url:
        raise ClientError("no server: pass --url or set DICOM_INBOX_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"--url must be an http(s) URL, got {url!r}")
    base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    user, password = resolve_credentials(base, args.user)
    return Server(base=base, user=user, password=password, timeout=args.timeout)


# -- output ------------------------------------------------------------------------------------


def _when(ms: Any) -> str:
    try:
        return datetime.fromtimestamp(int(ms) / 1000).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"


def _progress_text(record: dict[str, Any]) -> str:
    p = record.get("progress") or {}
    found, done = int(p.get("filesFound") or 0), int(p.get("filesDone") or 0)
    text = f"{done}/{found} files" if found else f"{done} files"
    imported, skipped = int(p.get("filesImported") or 0), int(p.get("filesSkipped") or 0)
    return f"{text} ({imported} imported, {skipped} skipped)"


def print_record(record: dict[str, Any], out: TextIO) -> None:
    """A request as a two-column table, then its sessions and skipped files."""
    rows = [
        ("id", record.get("id")),
        ("status", record.get("status")),
        ("project", record.get("project")),
        ("user", record.get("username")),
        ("path", record.get("sessionPath")),
        ("handler", record.get("handler")),
        ("cleanup", record.get("cleanupAfterImport")),
        ("created", _when(record.get("created"))),
        ("updated", _when(record.get("timestamp"))),
        ("progress", _progress_text(record)),
        ("message", record.get("message")),
        ("resolution", record.get("resolution")),
    ]
    for name, value in rows:
        if value not in (None, ""):
            print(f"{name:<11} {value}", file=out)
    _print_details(record, out)


def _print_details(record: dict[str, Any], out: TextIO) -> None:
    sessions = record.get("sessions") or []
    if sessions:
        print("sessions:", file=out)
        for s in sessions:
            print(
                f"  {s.get('label')} (subject {s.get('subject')}): {s.get('files')} file(s), "
                f"{s.get('scans')} scan(s) in the {s.get('destination')} at {s.get('url')}",
                file=out,
            )
    errors = record.get("errors") or []
    if errors:
        print("errors:", file=out)
        for e in errors:
            print(f"  {e.get('path')}: {e.get('reason')}", file=out)


def print_list(records: list[dict[str, Any]], out: TextIO) -> None:
    if not records:
        print("no import requests", file=out)
        return
    print(
        f"{'ID':>6}  {'STATUS':<9}  {'PROJECT':<16}  {'FILES':>11}  {'CREATED':<19}  PATH", file=out
    )
    for r in records:
        p = r.get("progress") or {}
        files = f"{int(p.get('filesDone') or 0)}/{int(p.get('filesFound') or 0)}"
        print(
            f"{r.get('id')!s:>6}  {r.get('status')!s:<9}  {r.get('project')!s:<16}  {files:>11}  "
            f"{_when(r.get('created')):<19}  {r.get('sessionPath')}",
            file=out,
        )


class ProgressDisplay:
    """A bar redrawn in place on a terminal; occasional plain lines anywhere else (logs)."""

    def __init__(self, stream: TextIO, request_id: int, *, every: float = 10.0) -> None:
        self.stream = stream
        self.request_id = request_id
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.every = every
        self._last_line = ""
        self._last_at = 0.0
        self._drawn = False

    def update(self, record: dict[str, Any]) -> None:
        status = str(record.get("status") or "?")
        p = record.get("progress") or {}
        found, done = int(p.get("filesFound") or 0), int(p.get("filesDone") or 0)
        if self.tty:
            width = 30
            filled = int(width * done / found) if found else 0
            bar = "#" * filled + "-" * (width - filled)
            percent = f"{100 * done // found:3d}%" if found else "  ?%"
            line = f"[{bar}] {percent} {done}/{found} files  {status}"
            self.stream.write(f"\r{line}\x1b[K")
            self.stream.flush()
            self._drawn = True
            return
        line = f"request {self.request_id}: {status}, {done}/{found} files"
        now = time.monotonic()
        changed_status = line.split(",")[0] != self._last_line.split(",")[0]
        if line != self._last_line and (changed_status or now - self._last_at >= self.every):
            print(line, file=self.stream, flush=True)
            self._last_line, self._last_at = line, now

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


# -- commands ----------------------------------------------------------------------------------


def _submit(server: Server, args: argparse.Namespace) -> int:
    params = {
        "import-handler": args.handler,
        "PROJECT_ID": args.project,
        "path": os.path.abspath(args.path),
        "cleanupAfterImport": "true" if args.cleanup else "false",
    }
    if args.subject:
        params["SUBJECT_ID"] = args.subject
    if args.label:
        params["EXPT_LABEL"] = args.label
    for item in args.param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--param wants KEY=VALUE, got {item!r}")
        params[key] = value
    body = server.call("POST", "/data/services/import", params).decode("utf-8", "replace")
    match = _STATUS_URL.search(body.strip())
    if match is None:
        raise ClientError(f"unexpected answer to the import call: {body.strip()[:200]!r}")
    return int(match.group(1))


def cmd_import(server: Server, args: argparse.Namespace) -> int:
    request_id = _submit(server, args)
    status_path = f"/xapi/dicom/{request_id}"
    if not args.wait:
        if args.json:
            print(json.dumps(server.get_json(status_path), indent=2))
        else:
            print(f"request {request_id} queued: {server.url(status_path)}")
        return EXIT_OK
    print(f"request {request_id} queued: {server.url(status_path)}", file=sys.stderr)
    record = wait_for(server, request_id, interval=args.interval)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        _print_outcome(record)
    return EXIT_OK if record.get("status") == "Completed" else EXIT_FAILED


def wait_for(server: Server, request_id: int, *, interval: float) -> dict[str, Any]:
    """Poll the status URL until the request ends; a few network hiccups are ridden out."""
    display = ProgressDisplay(sys.stderr, request_id)
    misses = 0
    try:
        while True:
            try:
                record: dict[str, Any] = server.get_json(f"/xapi/dicom/{request_id}")
                misses = 0
            except ClientError:
                misses += 1
                if misses >= 5:
                    raise
                time.sleep(interval)
                continue
            display.update(record)
            if record.get("status") in FINISHED:
                return record
            time.sleep(interval)
    finally:
        display.close()


def _print_outcome(record: dict[str, Any]) -> None:
    status = record.get("status")
    out = sys.stdout if status == "Completed" else sys.stderr
    print(f"request {record.get('id')} {status}: {record.get('message') or ''}".rstrip(), file=out)
    _print_details(record, out)


def cmd_status(server: Server, args: argparse.Namespace) -> int:
    record = server.get_json(f"/xapi/dicom/{args.id}")
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print_record(record, sys.stdout)
    return EXIT_OK


def cmd_list(server: Server, args: argparse.Namespace) -> int:
    records = server.get_json("/xapi/dicom/list/active" if args.active else "/xapi/dicom/list/all")
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print_list(list(records), sys.stdout)
    return EXIT_OK


# -- arguments ---------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url", help="the server, with any path prefix (default: $DICOM_INBOX_URL)"
    )
    common.add_argument(
        "--user", help="user name (default: $DICOM_INBOX_USER, else the netrc login)"
    )
    common.add_argument(
        "--timeout", type=_positive, default=30.0, help="seconds per HTTP call (default 30)"
    )
    common.add_argument("--json", action="store_true", help="print the server's JSON as is")

    parser = argparse.ArgumentParser(
        prog="dicom-inbox",
        description="Submit and watch DICOM inbox imports. The password comes from "
        "$DICOM_INBOX_PASSWORD, else netrc ($NETRC or ~/.netrc), else a prompt.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    imp = commands.add_parser(
        "import", parents=[common], help="import a session folder already on the server"
    )
    imp.add_argument("path", metavar="PATH", help="the folder (or archive) on the server")
    imp.add_argument("--project", required=True, help="PROJECT_ID, the destination project")
    imp.add_argument("--subject", help="SUBJECT_ID")
    imp.add_argument("--label", help="EXPT_LABEL, the session label")
    imp.add_argument(
        "--cleanup", action="store_true", help="delete the imported originals afterwards"
    )
    imp.add_argument("--handler", default="inbox", help="import-handler (default: inbox)")
    imp.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="any other parameter (overwrite=append, rename=true, ...); repeatable",
    )
    imp.add_argument(
        "--wait", action="store_true", help="show progress until the request ends; exit 1 if Failed"
    )
    imp.add_argument(
        "--interval", type=_positive, default=2.0, help="seconds between polls (default 2)"
    )
    imp.set_defaults(run=cmd_import)

    status = commands.add_parser("status", parents=[common], help="show one request")
    status.add_argument("id", type=int, metavar="ID")
    status.set_defaults(run=cmd_status)

    listing = commands.add_parser("list", parents=[common], help="list your requests")
    listing.add_argument("--active", action="store_true", help="only unfinished requests")
    listing.set_defaults(run=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``dicom-inbox`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        server = _server(args)
        code: int = args.run(server, args)
        return code
    except ClientError as exc:
        print(f"dicom-inbox: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\ndicom-inbox: interrupted (a submitted request goes on)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
