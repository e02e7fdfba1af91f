"""The secret-hygiene check itself (tests/hygiene.py), and the paths most likely to leak.

The session-wide scan runs after every test; these tests prove it catches a leak, and drive
the function through the places where a credential could slip into a log, a status or an
answer: a rejected password, a failed sign-in, an error body echoing a credential.
"""

from __future__ import annotations

import base64

import pytest

from tests import harness, hygiene
from tests.env import Env
from tests.quaysim import ADMIN_TOKEN

CODE = "Q" * 60 + "7" * 60


@pytest.mark.parametrize("line", [
    f'{{"msg": "created token", "code": "{CODE}"}}',
    f"Authorization: Bearer {ADMIN_TOKEN}",
    "auth=" + base64.b64encode(f"$app:{CODE}".encode()).decode(),
    "tokenCode: " + base64.b64encode(CODE.encode()).decode(),
], ids=["raw-code", "oauth-header", "registry-auth", "base64-code"])
def test_a_leaking_line_is_found(line: str) -> None:
    hits = hygiene.find_leaks([("function log", f"ok\n{line}\nok")], [CODE, ADMIN_TOKEN])
    assert len(hits) == 1 and hits[0].startswith("function log: contains a credential")
    assert CODE not in hits[0] and ADMIN_TOKEN not in hits[0]


def test_clean_text_and_common_words_are_not_leaks() -> None:
    text = 'key "password" is missing; set "token" or both "username" and "password"'
    assert hygiene.find_leaks([("status", text)], [CODE, ADMIN_TOKEN, "password", "short"]) == []


def test_the_session_scan_fails_on_a_leak() -> None:
    scanner = hygiene.Scanner(responses_seen=len(harness.RESPONSES))
    scanner.offsets = {str(fn.log_path): fn.log_path.stat().st_size for fn in harness.STARTED}
    harness.RESPONSES.append(f"503 temporary failure: {ADMIN_TOKEN}")
    try:
        hits = scanner.scan(extra=[ADMIN_TOKEN])
    finally:
        harness.RESPONSES.pop()
    assert hits and "function answer" in hits[0]
    assert scanner.leaks == hits


def test_rejected_password_and_sign_in_never_show_the_password(env: Env) -> None:
    env.quay.add_user("builder", "Pw-3xq9-unique-builder")
    env.conn_secret(host=env.quay.base_url, username="builder", password="Wrong-7fz2-unique-guess")
    hygiene_extra = "Wrong-7fz2-unique-guess"
    env.dockertoken()
    assert env.send("add").status_code == 204
    assert env.ready()["reason"] == "QuayAuthenticationFailed"
    assert hygiene_extra not in str(env.get())
    env.core.patch_namespaced_secret("quay-credentials", env.ns,
                                     {"stringData": {"password": "Pw-3xq9-unique-builder"}})
    # the Secret changed: retried at once; Quay's login backoff may still answer 429 for a moment
    # after the failed sign-in, which is recorded and retried when due
    resp = env.resync()
    if resp.headers.get("Quay-Dockertoken-Reason") == "QuayUnavailable":
        assert "429" in env.ready()["message"], env.ready()
        env.quay.advance(60)  # Quay's login backoff is over, and so is ours:
        env.expire_backoff()
        resp = env.resync()
    assert resp.status_code == 204, resp.text
    assert env.ready()["status"] == "True"
    assert hygiene_extra not in env.fn.logs()


def test_an_error_body_echoing_a_code_is_not_repeated(env: Env) -> None:
    """A proxy error page that quotes a token code must not carry it into status or logs."""
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    code = env.tokens()[0]["token_code"]
    env.core.delete_namespaced_secret("dockertoken-sample-ret-secret", env.ns)
    env.quay.inject("get", statuses=[502])
    resp = env.resync()  # the temporary failure is recorded, with Quay's answer in its message
    assert resp.status_code == 204 and resp.headers["Quay-Dockertoken-Reason"] == "QuayUnavailable"
    assert "502" in env.ready()["message"], env.ready()
    assert code not in resp.text and code not in str(env.get()) and code not in env.fn.logs()
