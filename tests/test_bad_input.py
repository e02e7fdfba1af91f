"""User mistakes: each one is answered with a message naming the field and the fix, never a 500.

A wrong setting is permanent (Ready=False, reason in status, 204: redelivering cannot help); a
Quay that cannot be reached may come back (503, redelivered, and the resync repairs later).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException

from function.errors import ConfigError
from function.model import DockerToken
from tests import checks
from tests.controlplane import ControlPlane, free_port
from tests.env import Env, G, P, V
from tests.quaysim import ADMIN_TOKEN, QuaySimulator


def _base(env: Env) -> dict[str, str]:
    return {"host": env.quay.base_url, "token": ADMIN_TOKEN}


# (id, change to the connection Secret's data, key the message must name, words of the fix)
CONNECTION_MISTAKES = [
    ("no-host", {"host": None}, '"host"', "set it to the Quay URL"),
    ("empty-host", {"host": ""}, '"host"', "set it to the Quay URL"),
    ("host-bad-port", {"host": "https://quay.example.com:notaport"}, '"host"', "use a URL"),
    ("host-bad-scheme", {"host": "ftp://quay.example.com"}, '"host"', "use a URL"),
    ("host-bracket", {"host": "https://[::1"}, '"host"', "use a URL"),
    ("host-with-space", {"host": "quay example.com"}, '"host"', "use a URL"),
    ("host-with-credentials", {"host": "https://me:Hidden-pw-9x7@quay.example.com"}, '"host"',
     "put them in the token"),
    ("validateCerts", {"validateCerts": "maybe"}, '"validateCerts"', "true/false"),
    ("timeout", {"timeout": "ten"}, '"timeout"', "e.g. 10"),
    ("timeout-negative", {"timeout": "-1"}, '"timeout"', "e.g. 10"),
    ("no-credentials", {"token": None}, '"token"', 'both keys "username" and "password"'),
    ("password-missing", {"token": None, "username": "devtable"}, '"password"', "both"),
    ("near-miss-key", {"validate_certs": "false"}, '"validate_certs"', 'rename it to "validateCerts"'),
]


@pytest.mark.parametrize(("change", "key", "fix"), [m[1:] for m in CONNECTION_MISTAKES],
                         ids=[m[0] for m in CONNECTION_MISTAKES])
def test_connection_secret_mistake_names_the_key_and_the_fix(
        env: Env, change: dict[str, str | None], key: str, fix: str) -> None:
    data = {k: v for k, v in {**_base(env), **change}.items() if v is not None}
    env.conn_secret(**data)
    env.dockertoken()
    resp = env.send("add")
    assert resp.status_code == 204 and resp.content == b""
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "InvalidConfiguration", ready
    message = ready["message"]
    assert "connSecretRef: quay-credentials" in message and key in message and fix in message, message
    assert "Hidden-pw-9x7" not in message  # a password in the URL is never echoed
    assert env.get()["status"]["message"] == message  # type: ignore[index]
    assert env.quay_calls() == 0 and env.secret() is None


def test_fixing_the_connection_secret_recovers_on_resync(env: Env) -> None:
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, timeout="soon")
    env.dockertoken()
    assert env.send("add").status_code == 204
    assert env.ready()["reason"] == "InvalidConfiguration"
    env.core.patch_namespaced_secret("quay-credentials", env.ns, {"stringData": {"timeout": "5"}})
    assert env.resync().status_code == 204
    checks.assert_converged(env)


@pytest.mark.parametrize("title", ["", "x" * 256], ids=["empty", "256-chars"])
def test_the_crd_refuses_a_bad_spec_name_naming_the_field(env: Env, title: str) -> None:
    with pytest.raises(ApiException) as caught:
        env.dockertoken(title=title)
    assert caught.value.status == 422
    assert "spec.name" in str(caught.value.body)
    assert env.get() is None


def test_the_longest_title_quay_accepts_works(env: Env) -> None:
    env.conn_secret()
    env.dockertoken(title="t" * 255)
    assert env.send("add").status_code == 204
    checks.assert_converged(env, title="t" * 255)


def _spec(**spec: object) -> DockerToken:
    return DockerToken.from_object({"metadata": {"namespace": "ns", "name": "n", "uid": "u"},
                                    "spec": spec})


@pytest.mark.parametrize(("spec", "names", "fix"), [
    ({"connSecretRef": {"name": "c"}}, "spec.name", "set the title"),
    ({"connSecretRef": {"name": "c"}, "name": ""}, "spec.name", "set the title"),
    ({"connSecretRef": {"name": "c"}, "name": 7}, "spec.name", "set the title"),
    ({"connSecretRef": {"name": "c"}, "name": "x" * 256}, "spec.name: 256 characters", "shorten it"),
    ({"name": "t"}, "spec.connSecretRef.name", "name the Secret"),
    ({"connSecretRef": {"name": "c"}, "name": "t", "retSecretRef": {"namespace": "x"}},
     "spec.retSecretRef.name", "required"),
], ids=["missing-name", "empty-name", "name-not-string", "name-too-long", "no-conn-secret",
        "ret-secret-without-name"])
def test_spec_validation_names_the_field(spec: dict[str, object], names: str, fix: str) -> None:
    """What the function checks itself, for objects stored before the schema had the rule."""
    with pytest.raises(ConfigError) as caught:
        _spec(**spec).validate()
    assert names in str(caught.value) and fix in str(caught.value)


def test_valid_spec_passes_validation() -> None:
    _spec(connSecretRef={"name": "c"}, name="t" * 255).validate()


def test_return_secret_of_another_dockertoken_is_never_taken_over(env: Env) -> None:
    env.conn_secret()
    env.dockertoken("first", ret="shared")
    assert env.send("add", "first").status_code == 204
    before = env.secret("shared")
    env.dockertoken("second", ret="shared")
    assert env.send("add", "second").status_code == 204
    ready = env.ready("second")
    assert ready["status"] == "False" and ready["reason"] == "ReturnSecretConflict", ready
    assert "retSecretRef" in ready["message"] and "shared" in ready["message"]
    assert "choose another name" in ready["message"]
    assert env.secret("shared") == before
    checks.assert_converged(env, "first", ret="shared")  # and no token was made for "second"
    env.patch_spec("second", retSecretRef={"name": "second-pull"})
    assert env.send("update", "second").status_code == 204
    checks.assert_converged(env, "second", ret="second-pull", others=1)


def test_unreachable_host_is_reported_naming_the_host(env: Env) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env.conn_secret(host=closed, token=ADMIN_TOKEN, timeout="1")
    env.dockertoken()
    resp = env.send("add")
    assert resp.status_code == 204
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "QuayUnavailable", ready
    message = ready["message"]
    assert closed.removeprefix("http://") in message and "cannot connect" in message
    assert '"host"' in message, message
    env.core.patch_namespaced_secret("quay-credentials", env.ns,
                                     {"stringData": {"host": env.quay.base_url}})
    assert env.resync().status_code == 204
    checks.assert_converged(env)


@pytest.fixture
def tls_env(control_plane: ControlPlane, namespace: str, function_proc: object) -> Iterator[Env]:
    with QuaySimulator(tls=True) as sim:
        yield Env(control_plane, namespace, sim, function_proc)  # type: ignore[arg-type]


def test_untrusted_certificate_is_a_clear_permanent_error(tls_env: Env) -> None:
    env = tls_env
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, validateCerts="true")
    env.dockertoken()
    resp = env.send("add")
    assert resp.status_code == 204
    ready = env.ready()
    assert ready["status"] == "False" and ready["reason"] == "QuayTLSError", ready
    assert "did not verify" in ready["message"] and "validateCerts" in ready["message"]
    assert env.tokens() == []


def test_validate_certs_false_accepts_the_certificate(tls_env: Env) -> None:
    env = tls_env
    env.conn_secret(host=env.quay.base_url, token=ADMIN_TOKEN, validateCerts="false")
    env.dockertoken()
    assert env.send("add").status_code == 204
    checks.assert_converged(env)


def test_https_to_a_plain_http_port_names_scheme_and_port(env: Env) -> None:
    env.conn_secret(host=f"https://{env.quay.host}", token=ADMIN_TOKEN)
    env.dockertoken()
    assert env.send("add").status_code == 204
    ready = env.ready()
    assert ready["reason"] == "QuayTLSError" and "scheme and port" in ready["message"], ready


def test_missing_connection_secret_during_the_custom_resource_patch_is_not_a_500(env: Env) -> None:
    """A DockerToken whose spec was patched to reference a Secret in a namespace that is gone:
    refused like any cross-namespace reference without consent, naming the field and the fix."""
    env.conn_secret()
    env.dockertoken()
    assert env.send("add").status_code == 204
    env.custom.patch_namespaced_custom_object(G, V, env.ns, P, "dockertoken-sample", {
        "spec": {"connSecretRef": {"name": "nowhere", "namespace": f"{env.ns}-gone"}}})
    resp = env.send("update")
    assert resp.status_code == 204
    ready = env.ready()
    assert ready["reason"] == "CrossNamespaceRefDenied" and "nowhere" in ready["message"]
    assert "spec.connSecretRef.namespace" in ready["message"]
