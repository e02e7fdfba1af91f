"""Quay's web and API behaviour: routing, OAuth and cookie auth, CSRF, the app-token endpoints.

``server.py`` parses HTTP into a :class:`Request`, asks :meth:`Api.route` for the endpoint name
(used for counters and faults), then :meth:`Api.handle` for the :class:`views.Reply`. The order
of checks follows Quay: CSRF (non-GET without a valid OAuth token), the browser/XHR check,
authentication, scope, fresh login, then the JSON body.
"""

from __future__ import annotations

import email.utils
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from tests.quaysim import registry, views
from tests.quaysim.state import SESSION_LIFETIME, OAuthToken, Session, State, User

COOKIE = "_csrf_token"
_PATHS: dict[str, dict[str, str]] = {
    "/api/v1/user/apptoken": {"GET": "list", "POST": "create"},
    "/api/v1/user/": {"GET": "whoami"},
    "/api/v1/signin": {"POST": "signin"},
    "/api/v1/signin/verify": {"POST": "verify"},
    "/api/v1/signout": {"POST": "signout"},
    "/": {"GET": "root"},
    "/csrf_token": {"GET": "csrf"},
    "/v2/": {"GET": "v2"},
    "/v2/auth": {"GET": "v2_auth"},
}
_TOKEN_PATH = re.compile(r"^/api/v1/user/apptoken/([^/]+)$")
_TAGS_PATH = re.compile(r"^/v2/(.+)/tags/list$")
_APP_TOKEN_ENDPOINTS = frozenset({"list", "create", "get", "revoke"})
# util/parsing.py truthy_bool.
_FALSY = frozenset({"false", "False", "0", "FALSE", "", "null"})
_BROWSERS = ("Mozilla/", "Chrome/", "Safari/", "Firefox/", "Edg/", "Opera")


@dataclass
class Request:
    """What the handler read: headers are lower-cased, ``query`` is parsed."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class _Ctx:
    """Per-request auth state and whether the session cookie was read or must be sent."""

    req: Request
    bearer: bool = False
    oauth: OAuthToken | None = None
    session: Session | None = None
    session_used: bool = False
    set_cookie: bool = False
    cookie: str | None = None


class Api:
    """The Quay application, minus everything the app-token flows never touch."""

    def __init__(self, state: State, *, base_url: str, host: str,
                 server_hostname: str | None = None, app_specific_tokens: bool = True) -> None:
        self.state = state
        self.base = base_url
        self.host = host
        self.server_hostname = self.registry_base = ""
        self.set_server_hostname(server_hostname or host)
        self.app_specific_tokens = app_specific_tokens

    def set_server_hostname(self, name: str) -> None:
        """The registry speaks as SERVER_HOSTNAME: the realm is ``get_app_url()`` + ``/v2/auth``
        (PREFERRED_URL_SCHEME://SERVER_HOSTNAME); the service and the JWT audience are it."""
        self.registry_base = f"{self.base.split('://', 1)[0]}://{name}"
        self.server_hostname = name

    # -- routing ----------------------------------------------------------------------------

    def route(self, method: str, path: str) -> tuple[str, str]:
        """Return (endpoint name, path argument) for counters, faults and dispatch."""
        methods, arg = _PATHS.get(path), ""
        if methods is None and (match := _TOKEN_PATH.match(path)):
            methods, arg = {"GET": "get", "DELETE": "revoke"}, match.group(1)
        if methods is None and (match := _TAGS_PATH.match(path)):
            methods, arg = {"GET": "v2_tags"}, match.group(1)
        if methods is None:
            return "notfound", ""
        endpoint = methods.get(method)
        if endpoint is None:
            return "method_not_allowed", ", ".join(sorted({*methods, "OPTIONS"}))
        if endpoint in _APP_TOKEN_ENDPOINTS and not self.app_specific_tokens:
            return "notfound", ""
        return endpoint, arg

    def auth_kind(self, req: Request) -> str:
        """``oauth``, ``session`` (signed-in cookie), ``registry`` (/v2) or ``anonymous``."""
        scheme, _, credentials = req.headers.get("authorization", "").partition(" ")
        if req.path.startswith("/v2/"):
            return "registry" if scheme else "anonymous"
        if scheme.lower() == "bearer" and self.state.valid_oauth(credentials.strip()):
            return "oauth"
        sid = _cookie(req)
        if sid and self.state.session_user(self.state.sessions.get(sid)) is not None:
            return "session"
        return "anonymous"

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, req: Request, endpoint: str, arg: str) -> views.Reply:
        ctx = _Ctx(req, cookie=_cookie(req))
        authorization = req.headers.get("authorization", "")
        base, host = self.registry_base, self.server_hostname
        if endpoint == "v2":
            return registry.base(self.state, authorization, base=base, host=host)
        if endpoint == "v2_auth":
            scope = req.query.get("scope", [None])[0]
            return registry.auth(self.state, authorization, scope, base=base, host=host)
        if endpoint == "v2_tags":
            return registry.tags(self.state, authorization, arg, base=base, host=host)
        if endpoint in ("root", "notfound"):
            reply = self._page(ctx, 200 if endpoint == "root" else 404)
        elif endpoint == "csrf":
            csrf = self.state.ensure_csrf(self._ensure_session(ctx))
            reply = views.Reply(200, views.JSON, views.dumps({"csrf_token": csrf}))
        elif endpoint == "method_not_allowed":
            reply = views.Reply(405, views.JSON, views.dumps({"message": views.NOT_ALLOWED}),
                                [("Allow", arg), *views.CORS])
        else:
            reply = self._api(ctx, endpoint, arg)
            reply.headers.extend(views.CORS)
        return self._finish(ctx, reply)

    def _api(self, ctx: _Ctx, endpoint: str, arg: str) -> views.Reply:
        req = ctx.req
        scheme, _, credentials = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            ctx.bearer = True
            ctx.oauth = self.state.valid_oauth(credentials.strip())
        if ctx.oauth is None and req.method not in ("GET", "HEAD"):
            refused = self._check_csrf(ctx)
            if refused is not None:
                return refused
        agent = req.headers.get("user-agent", "")
        if (req.method == "GET" and ctx.oauth is None and agent.startswith(_BROWSERS)
                and req.headers.get("x-requested-with") != "XMLHttpRequest"):
            self._load_session(ctx)
            return views.Reply(400, views.HTML, views.html_json({"error": views.NEED_XHR}),
                               [("Vary", "Origin, Cookie")])
        user: User | None
        if ctx.oauth is not None:
            user = self.state.users[ctx.oauth.user]
        elif ctx.bearer:
            user = None
        else:
            user = self.state.session_user(self._load_session(ctx))
        handler = getattr(self, f"_do_{endpoint}")
        reply: views.Reply = handler(ctx, user, arg)
        return reply

    # -- endpoints --------------------------------------------------------------------------

    def _do_list(self, ctx: _Ctx, user: User | None, _: str) -> views.Reply:
        owner = self._require_admin(ctx, user, fresh=False)
        if isinstance(owner, views.Reply):
            return owner
        raw = ctx.req.query.get("expiring", [None])[0]
        expiring = None if raw is None else raw not in _FALSY
        tokens = self.state.list_tokens(owner.name, expiring=bool(expiring))
        body = {"tokens": [views.token_view(t, include_code=False) for t in tokens],
                "only_expiring": expiring}
        return views.Reply(200, views.JSON, views.dumps(body))

    def _do_create(self, ctx: _Ctx, user: User | None, _: str) -> views.Reply:
        owner = self._require_admin(ctx, user, fresh=True)
        if isinstance(owner, views.Reply):
            return owner
        data, refused = self._json(ctx, views.NEW_TOKEN_SCHEMA)
        if refused is not None:
            return refused
        token = self.state.create_token(owner.name, data["title"])
        body = {"token": views.token_view(token, include_code=True)}
        return views.Reply(200, views.JSON, views.dumps(body))

    def _do_get(self, ctx: _Ctx, user: User | None, token_uuid: str) -> views.Reply:
        owner = self._require_admin(ctx, user, fresh=True)
        if isinstance(owner, views.Reply):
            return owner
        token = self.state.get_token(owner.name, token_uuid)
        if token is None:
            return self._error(404, "not_found", "Not Found")
        body = {"token": views.token_view(token, include_code=True)}
        return views.Reply(200, views.JSON, views.dumps(body))

    def _do_revoke(self, ctx: _Ctx, user: User | None, token_uuid: str) -> views.Reply:
        owner = self._require_admin(ctx, user, fresh=True)
        if isinstance(owner, views.Reply):
            return owner
        if self.state.revoke_token(owner.name, token_uuid) is None:
            return self._error(404, "not_found", "Not Found")
        return views.Reply(204, views.JSON)

    def _do_whoami(self, ctx: _Ctx, user: User | None, _: str) -> views.Reply:
        scopes = ctx.oauth.scopes if ctx.oauth else frozenset()
        session = ctx.oauth is None

        def granted(scope: str) -> bool:
            return session or scope in scopes

        if user is None or not (granted("user:read") or granted("user:admin")):
            return self._error(401, "invalid_token", "Requires authentication",
                               session_required=False)
        view = views.user_view(user, admin=granted("user:admin"), read=True,
                               org_admin=granted("org:admin"),
                               repo_create=granted("repo:create"),
                               superuser=user.superuser and granted("super:user"))
        return views.Reply(200, views.JSON, views.dumps(view))

    def _do_signin(self, ctx: _Ctx, _: User | None, __: str) -> views.Reply:
        data, refused = self._json(ctx, views.SIGNIN_SCHEMA)
        if refused is not None:
            return refused
        result = self.state.check_password(data["username"], data["password"])
        if result.retry_after is not None:
            return _throttled(result.retry_after)
        if result.user is None:
            body = {"needsEmailVerification": False, "invalidCredentials": True,
                    "message": views.BAD_LOGIN}
            return views.Reply(403, views.JSON, views.dumps(body))
        session = self.state.sign_in(ctx.session, result.user)
        ctx.session, ctx.session_used, ctx.set_cookie = session, True, True
        return views.Reply(200, views.JSON, views.dumps({"success": True}),
                           [("X-Next-CSRF-Token", session.csrf or "")])

    def _do_verify(self, ctx: _Ctx, user: User | None, _: str) -> views.Reply:
        owner = self._require_admin(ctx, user, fresh=False)
        if isinstance(owner, views.Reply):
            return owner
        data, refused = self._json(ctx, views.VERIFY_SCHEMA)
        if refused is not None:
            return refused
        result = self.state.check_password(owner.name, data["password"])
        if result.retry_after is not None:
            return _throttled(result.retry_after)
        if result.user is None:
            body = {"message": views.BAD_LOGIN, "invalidCredentials": True}
            return views.Reply(403, views.JSON, views.dumps(body))
        headers = []
        if ctx.session is not None:
            headers.append(("X-Next-CSRF-Token", self.state.reverify(ctx.session)))
        return views.Reply(200, views.JSON, views.dumps({"success": True}), headers)

    def _do_signout(self, ctx: _Ctx, user: User | None, _: str) -> views.Reply:
        self.state.sign_out(ctx.session, user)
        return views.Reply(200, views.JSON, views.dumps({"success": True}))

    # -- checks -----------------------------------------------------------------------------

    def _check_csrf(self, ctx: _Ctx) -> views.Reply | None:
        """``endpoints/csrf.py`` verify_csrf: the ``_csrf_token`` parameter, else the header."""
        session = self._load_session(ctx)
        sent = ctx.req.query.get(COOKIE, [""])[0] or ctx.req.headers.get("x-csrf-token", "")
        if session is not None and session.csrf and secrets.compare_digest(session.csrf, sent):
            return None
        message = views.CSRF_FAILED
        user = self.state.session_user(session)
        if user is not None:
            message += f" (authorized: user {user.name})"
        return views.Reply(403, views.HTML, views.html_json({"error": message}),
                           [("Vary", "Origin, Cookie")])

    def _require_admin(self, ctx: _Ctx, user: User | None, *,
                       fresh: bool) -> User | views.Reply:
        """``require_user_admin`` then ``require_fresh_login`` (cookie sessions only)."""
        if user is None:
            return self._unauthenticated()
        if ctx.oauth is not None:
            if "user:admin" not in ctx.oauth.scopes:
                return self._error(403, "insufficient_scope", "Unauthorized")
            return user
        if fresh and (ctx.session is None or not self.state.is_fresh(ctx.session)):
            return self._error(401, "fresh_login_required", "Requires fresh login")
        return user

    def _json(self, ctx: _Ctx, schema: dict[str, Any]) -> tuple[Any, views.Reply | None]:
        """Flask's ``get_json`` (415/400 ``message``) then Quay's schema check (400)."""
        mimetype = ctx.req.headers.get("content-type", "").split(";")[0].strip().lower()
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            return None, views.Reply(415, views.JSON, views.dumps({"message": views.NOT_JSON}))
        try:
            data = json.loads(ctx.req.body)
        except ValueError:
            return None, views.Reply(400, views.JSON, views.dumps({"message": views.BAD_JSON}))
        problem = views.schema_error(schema, data)
        if problem is not None:
            return None, self._error(400, "invalid_request", problem)
        return data, None

    def _unauthenticated(self) -> views.Reply:
        return self._error(401, "invalid_token", "Requires authentication")

    def _error(self, status: int, error_type: str, message: str, *,
               session_required: bool | None = None) -> views.Reply:
        body = views.api_error(status, error_type, message, base=self.base,
                               session_required=session_required)
        return views.Reply(status, views.JSON, views.dumps(body))

    # -- sessions and pages -----------------------------------------------------------------

    def _load_session(self, ctx: _Ctx) -> Session | None:
        """Read the cookie's session; an unknown cookie starts a new (empty) one, as Flask."""
        if not ctx.session_used:
            ctx.session_used = True
            if ctx.cookie is not None:
                ctx.session = self.state.sessions.get(ctx.cookie) or self.state.new_session()
                ctx.set_cookie = True
        return ctx.session

    def _ensure_session(self, ctx: _Ctx) -> Session:
        session = self._load_session(ctx)
        if session is None:
            session = ctx.session = self.state.new_session()
            ctx.set_cookie = True
        return session

    def _page(self, ctx: _Ctx, status: int) -> views.Reply:
        csrf = self.state.ensure_csrf(self._ensure_session(ctx))
        return views.Reply(status, views.HTML,
                           views.page(csrf, error_code=404 if status == 404 else None),
                           [("X-FRAME-OPTIONS", "DENY"),
                            ("Cache-Control", "no-cache, no-store, must-revalidate")])

    def _finish(self, ctx: _Ctx, reply: views.Reply) -> views.Reply:
        """Add Vary and Set-Cookie when the session was read."""
        if ctx.session_used:
            if not any(name == "Vary" for name, _ in reply.headers):
                reply.headers.append(("Vary", "Cookie"))
            if ctx.set_cookie and ctx.session is not None:
                reply.headers.append(("Set-Cookie", self._set_cookie(ctx.session)))
        return reply

    def _set_cookie(self, session: Session) -> str:
        expires = ""
        if session.permanent:
            stamp = email.utils.formatdate(self.state.now() + SESSION_LIFETIME, usegmt=True)
            expires = f"Expires={stamp}; "
        return f"{COOKIE}={session.sid}; {expires}HttpOnly; Path=/; SameSite=Lax"


def _cookie(req: Request) -> str | None:
    for part in req.headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE:
            return value
    return None


def _throttled(retry_after: float) -> views.Reply:
    """Quay's login backoff: plain text, whole seconds in Retry-After (083)."""
    return views.Reply(429, views.HTML, views.TOO_MANY_LOGINS.encode(),
                       [("Retry-After", str(int(retry_after)))])
