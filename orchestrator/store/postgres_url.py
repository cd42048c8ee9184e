"""PostgreSQL database URLs: whether one can be used, and how to show one without its password.

The URL goes to asyncpg unchanged, so everything libpq-style URLs allow works
(`?sslmode=require`, several hosts, `?host=/run/postgresql` for a unix socket, server
settings such as `?application_name=orchestrator`). Only what would fail later, with a
worse message, is checked here.
"""

from __future__ import annotations

import importlib.util
import re
from urllib.parse import parse_qsl, unquote, urlsplit

SCHEMES = ("postgresql", "postgres")
EXAMPLE = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
EXTRA = "pip install 'orchestrator[postgres]'"
HIDDEN = "***"
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#]*")


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].lower() in SCHEMES


def redact(url: str) -> str:
    """The URL with its password, in the user part or the query, shown as ***."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    user, at, hosts = authority.rpartition("@")
    if at and ":" in user:
        authority = f"{user.split(':', 1)[0]}:{HIDDEN}@{hosts}"
    return _QUERY_PASSWORD.sub(rf"\g<1>{HIDDEN}", f"{scheme}://{authority}{slash}{tail}")


def password(url: str) -> str | None:
    """The URL's password (decoded), to be kept out of any message."""
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
    except ValueError:
        return None
    found = parts.password if parts.password is not None else query.get("password")
    return unquote(found) if found else None


def scrub(message: str, url: str) -> str:
    """`message` with the URL's password, should it appear, shown as ***."""
    secret = password(url)
    return message.replace(secret, HIDDEN) if secret else message


def postgres_problem(url: str) -> str | None:
    """What is wrong with a postgresql:// URL, or None if it can be tried."""
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
    except ValueError as error:
        return f"not a valid URL ({error}); expected {EXAMPLE}"
    entries = [entry for entry in parts.netloc.rpartition("@")[2].split(",") if entry]
    names = [entry.partition("]")[0] if entry.startswith("[") else entry.partition(":")[0]
             for entry in entries]  # fmt: skip
    if not any(names) and not query.get("host"):
        return (
            f"{redact(url)} names no server: expected {EXAMPLE}, "
            "or ?host=/path/to/socket-directory for a unix socket"
        )
    for entry in entries:
        port = entry.rpartition("]")[2].rpartition(":")[2] if ":" in entry else ""
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            return f"{redact(url)}: port {port!r} is not a number from 1 to 65535"
    return None


def driver_problem(url: str) -> str | None:
    """Why the URL's driver cannot be loaded, or None."""
    if is_postgres(url) and importlib.util.find_spec("asyncpg") is None:
        return f"a postgresql:// database needs the asyncpg driver: {EXTRA}"
    return None
