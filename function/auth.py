"""Who may send events: a bearer token on every POST, checked with the API server's TokenReview.

Any pod that can reach the Service could otherwise make the function list a tenant's Quay tokens
(or, for username/password connections, sign that user out of Quay) as often as it likes. So
``main.py`` asks :func:`verifier` about each request before it reads the body:

- no ``Authorization: Bearer`` header, or a token that is not a JWT for our audience or has
  expired (read from the token itself, unverified, only to turn junk away): 401, and no request
  to the API server and no Quay call;
- otherwise a TokenReview (``authentication.k8s.io/v1``, bound to ``SENDER_AUDIENCE``): the API
  server verifies the signature, the audience, the expiry and that the ServiceAccount (and the
  pod the token was bound to) still exist. Only the usernames in ``SENDER_IDENTITIES`` are let
  through (403 for any other authenticated identity). A verdict is cached for
  ``CACHE_SECONDS`` (never past the token's own expiry), keyed by a hash of the token, so a
  steady sender costs one TokenReview a minute.

These are the tokens Knative Eventing's OIDC sender identity sends (feature flag
``authentication-oidc``, docs/deploy.md) and the resync CronJob's projected token.

Settings (environment): ``SENDER_AUTH`` = ``tokenreview`` (the default) or ``off`` (local runs
with sample events: scripts/demo, functions-framework by hand); ``SENDER_AUDIENCE`` (default
``quay-dockertoken``); ``SENDER_IDENTITIES``, comma-separated usernames such as
``system:serviceaccount:quay-system:dockertoken-resync``. With the check on and no identity
configured every event is refused, with a message that says so.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from function.errors import TemporaryError

logger = logging.getLogger(__name__)

DEFAULT_AUDIENCE = "quay-dockertoken"
# A verdict (either way) is trusted this long: a revoked ServiceAccount is refused within a minute.
CACHE_SECONDS = 60.0
CACHE_ENTRIES = 1024
# Longer than any JWT a ServiceAccount token can be; a bigger header is junk.
MAX_TOKEN_BYTES = 16 * 1024
# The resync command re-reads its projected token file this often (the kubelet rotates it).
TOKEN_RELOAD_SECONDS = 60.0

Review = Callable[[str, str], Mapping[str, Any]]  # (token, audience) -> TokenReview status


@dataclass(frozen=True)
class Verdict:
    """The answer to one request: ``status`` 0 to let it through, else 401/403/503 and why."""

    status: int
    message: str
    who: str = ""


@dataclass(frozen=True)
class Settings:
    enabled: bool
    audience: str
    identities: frozenset[str]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        mode = (env.get("SENDER_AUTH") or "tokenreview").strip().lower()
        if mode not in ("tokenreview", "off"):
            # fail closed: a typo must not turn the check off
            logger.error("SENDER_AUTH=%r is neither tokenreview nor off; checking tokens", mode)
        identities = frozenset(p.strip() for p in (env.get("SENDER_IDENTITIES") or "").split(",")
                               if p.strip())
        return cls(enabled=mode != "off", audience=(env.get("SENDER_AUDIENCE") or "").strip()
                   or DEFAULT_AUDIENCE, identities=identities)


class Verifier:
    """Checks the ``Authorization`` header of a request; thread-safe."""

    def __init__(self, settings: Settings, review: Review, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings, self._review, self._clock = settings, review, clock
        self._cache: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self._lock = threading.Lock()
        self.reviews = 0  # TokenReviews asked (tests, logs)

    def check(self, authorization: str | None) -> Verdict:
        s = self.settings
        if not s.enabled:
            return Verdict(0, "sender check off (SENDER_AUTH=off)")
        if not s.identities:
            return Verdict(401, "no sender is trusted: set SENDER_IDENTITIES to the senders' "
                                "usernames (or SENDER_AUTH=off for a local run)")
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return Verdict(401, "no bearer token; the sender must present a ServiceAccount token "
                                f"for audience {s.audience!r}")
        if len(token) > MAX_TOKEN_BYTES:
            return Verdict(401, "the bearer token is too long to be a ServiceAccount token")
        now = self._clock()
        claims = _claims(token)
        if claims is None:
            return Verdict(401, "the bearer token is not a JWT")
        if s.audience not in _audiences(claims):
            return Verdict(401, f"the bearer token is not for audience {s.audience!r}")
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or expires <= now:
            return Verdict(401, "the bearer token has expired")
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now:
                self._cache.move_to_end(key)
                return cached[1]
        verdict = self._ask(token)
        if verdict.status != 503:  # an outage is not a verdict
            with self._lock:
                self._cache[key] = (min(now + CACHE_SECONDS, float(expires)), verdict)
                while len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
        return verdict

    def _ask(self, token: str) -> Verdict:
        s = self.settings
        self.reviews += 1
        try:
            status = self._review(token, s.audience)
        # the API server is unavailable: the sender retries 503
        except TemporaryError as exc:
            return Verdict(503, f"cannot verify the sender now: {exc}")
        user = status.get("user") or {}
        who = str(user.get("username") or "")
        if not status.get("authenticated") or s.audience not in (status.get("audiences") or ()):
            reason = str(status.get("error") or "")[:200]
            return Verdict(401, "the API server did not accept the bearer token"
                           + (f" ({reason})" if reason else ""))
        if who not in s.identities:
            return Verdict(403, f"sender {who} is not one of SENDER_IDENTITIES", who)
        return Verdict(0, "", who)


def _claims(token: str) -> dict[str, Any] | None:
    """The payload of a JWT, unverified (the TokenReview verifies): None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    return payload if isinstance(payload, dict) else None


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    return [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []


_lock = threading.Lock()
_verifier: Verifier | None = None


def verifier() -> Verifier:
    """One per process, with the settings of its environment; TokenReviews through kube.py."""
    global _verifier
    with _lock:
        if _verifier is None:
            settings = Settings.from_env()

            def review(token: str, audience: str) -> Mapping[str, Any]:
                from function.kube import Kube

                return Kube().review_token(token, audience)

            _verifier = Verifier(settings, review)
            logger.info("sender check %s", f"on: audience {settings.audience!r}, "
                        f"{len(settings.identities)} trusted identities" if settings.enabled else
                        "off (SENDER_AUTH=off)")
        return _verifier


# -- the sending side: the resync command ----------------------------------------------------------
class BearerFile(httpx.Auth):
    """``Authorization: Bearer`` from a projected ServiceAccount token file, re-read every minute."""

    def __init__(self, path: Path) -> None:
        self._path, self._value, self._read_at = path, "", -TOKEN_RELOAD_SECONDS

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if time.monotonic() - self._read_at >= TOKEN_RELOAD_SECONDS:
            self._value, self._read_at = self._path.read_text().strip(), time.monotonic()
        request.headers["Authorization"] = f"Bearer {self._value}"
        yield request


def sender_auth(env: Mapping[str, str] | None = None) -> BearerFile | None:
    """The resync command's credentials: the token file ``RESYNC_TOKEN_FILE`` names (the CronJob
    mounts a projected token for the function's audience there); None when unset."""
    path = (os.environ if env is None else env).get("RESYNC_TOKEN_FILE") or ""
    return BearerFile(Path(path)) if path else None


def planner_auth(env: Mapping[str, str] | None = None) -> BearerFile | None:
    """The credentials of the resync command's plan requests: ``RESYNC_PLANNER_TOKEN_FILE`` when
    the events go elsewhere than the plans (through a Broker, whose audience is not the
    function's: overlays/broker), else the events' own (:func:`sender_auth`)."""
    env = os.environ if env is None else env
    path = env.get("RESYNC_PLANNER_TOKEN_FILE") or ""
    return BearerFile(Path(path)) if path else sender_auth(env)
