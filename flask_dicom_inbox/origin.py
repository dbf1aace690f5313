"""Refuse state-changing calls that a browser sends from another site's page (CSRF).

A browser that holds basic-auth credentials or the ``JSESSIONID`` cookie of this app sends
them with any form or ``fetch`` that another site's page makes, so that page could start
imports or change anonymization scripts in the user's name. Browsers label such requests:
current ones send ``Sec-Fetch-Site`` to secure origins (HTTPS, and ``localhost``), and a
cross-origin POST carries ``Origin`` everywhere. Over plain HTTP only ``Origin`` is there,
and it is compared with the ``Host`` the app sees: a proxy in front must pass the browser's
``Host`` on (or Werkzeug's ``ProxyFix(x_host=1)`` be used), else list the site's own origin
in ``DICOM_INBOX_TRUSTED_ORIGINS``. Clients such as curl, scripts and the ``xnat`` client
send neither header, and pass unchanged. These are the checks of Go's
``http.CrossOriginProtection``.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from flask import Request

#: Methods that change nothing; a cross-site page may call them (it cannot read the answer).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def normalized_origins(origins: Iterable[str] | str) -> frozenset[str]:
    """``scheme://host[:port]`` entries, lower case, without a trailing slash; a string is
    split at commas and white space (as the environment gives it). Anything else (a path,
    another scheme) could never match a browser's ``Origin``: :class:`ValueError`."""
    if isinstance(origins, str):
        origins = origins.replace(",", " ").split()
    out = set()
    for entry in (o.strip().rstrip("/").lower() for o in origins if o.strip()):
        parts = urlsplit(entry)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or "@" in parts.netloc
            or parts.path
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                f"DICOM_INBOX_TRUSTED_ORIGINS: {entry!r} is not an origin "
                "(http or https://host[:port], nothing after it)"
            )
        out.add(entry)
    return frozenset(out)


def cross_origin_refusal(request: Request, trusted: frozenset[str] = frozenset()) -> str | None:
    """Why ``request`` is refused as a write from another site's page; ``None`` lets it pass.

    ``Sec-Fetch-Site`` decides when present (``same-origin`` and ``none``, a typed URL or a
    bookmark, pass); else an ``Origin`` must name this host; a request with neither is not
    a browser's cross-origin one. An origin in ``trusted`` always passes.
    """
    if request.method in SAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() in trusted:
        return None
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        if site.strip().lower() in ("same-origin", "none"):
            return None
        return (
            f"refused: a browser sent this {request.method} from another site's page "
            f"(Sec-Fetch-Site: {site}); add that page's origin to DICOM_INBOX_TRUSTED_ORIGINS "
            "if it may"
        )
    if origin is None:
        return None
    if origin != "null" and urlsplit(origin).netloc.lower() == request.host.lower():
        return None
    return (
        f"refused: a browser sent this {request.method} from another origin ({origin}, this "
        f"is {request.host}); add that origin to DICOM_INBOX_TRUSTED_ORIGINS if it may"
    )
