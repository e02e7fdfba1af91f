"""The Quay connection Secret, parsed once into a frozen value.

``observe.py`` reads the Secret named by ``spec.connSecretRef`` and calls
:func:`parse_connection`; ``quay.py`` only ever sees the resulting :class:`Connection`.
Every error is a :class:`ConfigError` naming the Secret, the key and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from function.errors import ConfigError

__all__ = ["Connection", "parse_connection"]

# Quay's own client default is 10 s; a reconcile makes a handful of calls, well under the
# Knative request timeout. The key is the tenant's to set, so it is capped: a request (connect,
# send and every read together: quay.py) never lasts longer than MAX_TIMEOUT, whatever it says.
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
_KEYS = ("host", "token", "username", "password", "validateCerts", "timeout")
# A DNS name or IPv4 address; IPv6 literals are checked with ``ipaddress`` instead.
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


@dataclass(frozen=True)
class Connection:
    """Where Quay is and how to authenticate; credentials stay out of ``repr``."""

    base_url: str
    registry: str
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    validate_certs: bool = True
    timeout: float = DEFAULT_TIMEOUT

    @functools.cached_property
    def account(self) -> str:
        """Which Quay account this is, as far as the settings tell (host and OAuth token, or host
        and username; never the password): a one-way hash that may be written to status.
        Creation leases of other accounts never make ours wait (decide.yields_to/waits_for)."""
        who = self.token or f"user:{self.username}"
        raw = f"quay-dockertoken/account/v1\x00{self.base_url}\x00{who}".encode()
        return hashlib.sha256(raw).hexdigest()[:24]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A stable in-memory cache key for these settings; a one-way hash, never the values.

        Fields are length-prefixed so that no two different settings hash alike.
        """
        digest = hashlib.sha256(b"quay-dockertoken/connection/v1")
        for part in (self.base_url, self.token, self.username, self.password,
                     "1" if self.validate_certs else "0"):
            raw = part.encode()
            digest.update(len(raw).to_bytes(8, "big"))
            digest.update(raw)
        return digest.hexdigest()


def parse_connection(data: Mapping[str, str], *, secret_name: str) -> Connection:
    """Validate the decoded Secret ``data``; raise ConfigError naming the bad key."""
    where = f"connSecretRef: {secret_name}"
    values = {key: str(value).strip() for key, value in data.items()}
    _reject_near_misses(values, where)

    base_url, registry = _parse_host(values.get("host", ""), where)
    token = values.get("token", "")
    username = values.get("username", "")
    password = values.get("password", "")
    if not token:
        missing = [key for key, value in (("username", username), ("password", password))
                   if not value]
        if len(missing) == 2:
            raise ConfigError(
                f'{where}: no credentials: set key "token" (an OAuth access token with the '
                'user:admin scope), or both keys "username" and "password"'
            )
        if missing:
            raise ConfigError(
                f'{where}: key "{missing[0]}" is missing or empty: without "token", both '
                '"username" and "password" are needed'
            )
    return Connection(
        base_url=base_url,
        registry=registry,
        token=token,
        username="" if token else username,
        password="" if token else password,
        validate_certs=_parse_bool(values.get("validateCerts", ""), where),
        timeout=_parse_timeout(values.get("timeout", ""), where),
    )


def _reject_near_misses(values: Mapping[str, str], where: str) -> None:
    """Catch ``validate_certs``-style spellings that would otherwise be silently ignored."""
    canonical = {key.lower(): key for key in _KEYS}
    for key in values:
        wanted = canonical.get(key.replace("_", "").replace("-", "").lower())
        if wanted is not None and wanted != key:
            raise ConfigError(f'{where}: key "{key}" is not recognized; rename it to "{wanted}"')


def _parse_host(raw: str, where: str) -> tuple[str, str]:
    """Return (base_url, registry) for the ``host`` key."""
    if not raw:
        raise ConfigError(f'{where}: key "host" is missing or empty; set it to the Quay URL, '
                          "e.g. https://quay.example.com")

    def bad(why: str) -> ConfigError:
        # never the value: it comes from a Secret (and may carry a password)
        return ConfigError(f'{where}: key "host": the value {why}; '
                           "use a URL such as https://quay.example.com[:port]")

    if any(ch.isspace() for ch in raw):
        raise bad("contains whitespace")
    url = raw if "://" in raw else f"https://{raw}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise bad("is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise bad("has a scheme other than http or https")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise bad("has a query or fragment")
    if "@" in parts.netloc:
        raise bad("carries credentials; put them in the token or username/password keys")
    try:
        port = parts.port
    except ValueError as exc:
        raise bad("has an invalid port") from exc
    if port == 0:
        raise bad("has an invalid port")
    if not _is_valid_hostname(parts.netloc, parts.hostname):
        raise bad("has no valid host name")
    path = parts.path.rstrip("/")
    return f"{scheme}://{parts.netloc}{path}", parts.netloc


def _is_valid_hostname(netloc: str, hostname: str | None) -> bool:
    if not hostname:
        return False
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(hostname)
        except ValueError:
            return False
        return True
    return bool(_HOSTNAME.match(hostname)) and ".." not in hostname


def _parse_bool(raw: str, where: str) -> bool:
    if not raw:
        return True
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f'{where}: key "validateCerts": the value is not a boolean; '
                      "use one of true/false/yes/no/1/0")


def _parse_timeout(raw: str, where: str) -> float:
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f'{where}: key "timeout": the value is not a positive number of '
                          f"seconds; use e.g. 10 or 2.5 (at most {MAX_TIMEOUT:g} is used)")
    return min(value, MAX_TIMEOUT)
