"""parse_connection: every accepted form, and every refusal naming the Secret and the key."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from function.connection import Connection, parse_connection
from function.errors import ConfigError

TOKEN = "useradmin00000000000secret00000000000001"
AUTH = {"token": TOKEN}


@pytest.mark.parametrize(
    ("data", "base_url", "registry"),
    [
        pytest.param({"host": "quay.example.com"}, "https://quay.example.com", "quay.example.com",
                     id="no-scheme-means-https"),
        pytest.param({"host": "http://127.0.0.1:8080"}, "http://127.0.0.1:8080",
                     "127.0.0.1:8080", id="http-with-port"),
        pytest.param({"host": "HTTPS://quay.example.com/"}, "https://quay.example.com",
                     "quay.example.com", id="scheme-case-and-trailing-slash"),
        pytest.param({"host": "https://quay.example.com:8443/quay//"},
                     "https://quay.example.com:8443/quay", "quay.example.com:8443",
                     id="path-prefix-kept"),
        pytest.param({"host": "quay.example.com:8443"}, "https://quay.example.com:8443",
                     "quay.example.com:8443", id="no-scheme-with-port"),
        pytest.param({"host": "https://[::1]:8443"}, "https://[::1]:8443", "[::1]:8443",
                     id="ipv6-literal"),
        pytest.param({"host": "  https://quay.example.com\n"}, "https://quay.example.com",
                     "quay.example.com", id="surrounding-whitespace"),
        pytest.param({"host": "my_quay.internal"}, "https://my_quay.internal",
                     "my_quay.internal", id="underscore-host"),
    ],
)
def test_host_forms(data: dict[str, str], base_url: str, registry: str) -> None:
    conn = parse_connection({**data, **AUTH}, secret_name="quay-credentials")
    assert (conn.base_url, conn.registry) == (base_url, registry)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({}, {"validate_certs": True, "timeout": 10.0}, id="defaults"),
        pytest.param({"validateCerts": "FALSE"}, {"validate_certs": False}, id="false-any-case"),
        pytest.param({"validateCerts": "no\n"}, {"validate_certs": False}, id="no-with-newline"),
        pytest.param({"validateCerts": "0"}, {"validate_certs": False}, id="zero"),
        pytest.param({"validateCerts": "Yes"}, {"validate_certs": True}, id="yes"),
        pytest.param({"validateCerts": "1"}, {"validate_certs": True}, id="one"),
        pytest.param({"validateCerts": "  "}, {"validate_certs": True}, id="blank-is-default"),
        pytest.param({"timeout": "2.5"}, {"timeout": 2.5}, id="fractional-timeout"),
        pytest.param({"timeout": " 30 "}, {"timeout": 30.0}, id="timeout-whitespace"),
        pytest.param({"timeout": "1e1"}, {"timeout": 10.0}, id="timeout-exponent"),
        # the tenant's value is capped: a request never lasts longer than 60 s (issue 18)
        pytest.param({"timeout": "1e9"}, {"timeout": 60.0}, id="timeout-capped"),
        pytest.param({"timeout": "60"}, {"timeout": 60.0}, id="timeout-at-cap"),
    ],
)
def test_options(data: dict[str, str], expected: dict[str, object]) -> None:
    conn = parse_connection({"host": "quay.example.com", **AUTH, **data}, secret_name="s")
    for name, value in expected.items():
        assert getattr(conn, name) == value


@pytest.mark.parametrize(
    ("data", "token", "username", "password"),
    [
        pytest.param({"token": f" {TOKEN}\n"}, TOKEN, "", "", id="token-stripped"),
        pytest.param({"username": "devtable\n", "password": "password\n"}, "", "devtable",
                     "password", id="username-password-stripped"),
        pytest.param({"token": TOKEN, "username": "devtable", "password": "pw"}, TOKEN, "", "",
                     id="token-wins"),
        pytest.param({"token": "", "username": "devtable", "password": "pw"}, "", "devtable",
                     "pw", id="empty-token-falls-back"),
    ],
)
def test_credentials(data: dict[str, str], token: str, username: str, password: str) -> None:
    conn = parse_connection({"host": "quay.example.com", **data}, secret_name="s")
    assert (conn.token, conn.username, conn.password) == (token, username, password)


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        pytest.param({"host": None}, ['"host"', "missing"], id="host-missing"),
        pytest.param({"host": "  "}, ['"host"', "missing or empty"], id="host-blank"),
        pytest.param({"host": "http://"}, ['"host"', "no valid host name"], id="scheme-only"),
        pytest.param({"host": "::::"}, ['"host"', "invalid port"], id="colons"),
        pytest.param({"host": "https://quay example.com"}, ['"host"', "whitespace"],
                     id="inner-space"),
        pytest.param({"host": "https://quay.example.com:99999"}, ['"host"', "invalid port"],
                     id="port-out-of-range"),
        pytest.param({"host": "https://quay.example.com:abc"}, ['"host"', "invalid port"],
                     id="port-not-a-number"),
        pytest.param({"host": "https://quay.example.com:0"}, ['"host"', "invalid port"],
                     id="port-zero"),
        pytest.param({"host": "ftp://quay.example.com"}, ['"host"', "http or https"],
                     id="wrong-scheme"),
        pytest.param({"host": "https://quay.example.com/?x=1"}, ['"host"', "query"],
                     id="query"),
        pytest.param({"host": "https://quay.example.com#frag"}, ['"host"', "fragment"],
                     id="fragment"),
        pytest.param({"host": "https://[zz::1]"}, ['"host"', "not a valid URL"],
                     id="bad-ipv6"),
        pytest.param({"host": "https://[::1"}, ['"host"', "not a valid URL"],
                     id="unclosed-bracket"),
        pytest.param({"host": "https://-quay-.example..com"}, ['"host"', "no valid host name"],
                     id="bad-dns-name"),
        pytest.param({"validateCerts": "maybe"},
                     ['key "validateCerts": the value is not a boolean',
                      "true/false/yes/no/1/0"], id="validate-certs-maybe"),
        pytest.param({"timeout": "0"}, ['"timeout"', "positive"], id="timeout-zero"),
        pytest.param({"timeout": "-3"}, ['"timeout"', "positive"], id="timeout-negative"),
        pytest.param({"timeout": "nan"}, ['"timeout"', "positive"], id="timeout-nan"),
        pytest.param({"timeout": "inf"}, ['"timeout"', "positive"], id="timeout-inf"),
        pytest.param({"timeout": "10s"}, ['"timeout"', "seconds"], id="timeout-with-unit"),
        pytest.param({"validate_certs": "false"}, ['"validate_certs"', '"validateCerts"'],
                     id="snake-case-key"),
        pytest.param({"Token": "x"}, ['"Token"', '"token"'], id="capitalised-key"),
    ],
)
def test_refusals_name_the_key(data: dict[str, str | None], fragments: list[str]) -> None:
    merged = {"host": "quay.example.com", **AUTH, **data}
    with pytest.raises(ConfigError) as caught:
        parse_connection({k: v for k, v in merged.items() if v is not None},
                         secret_name="quay-credentials")
    message = str(caught.value)
    assert message.startswith("connSecretRef: quay-credentials: ")
    for fragment in fragments:
        assert fragment in message


def test_missing_host_names_host() -> None:
    with pytest.raises(ConfigError, match='quay-credentials: key "host" is missing'):
        parse_connection(AUTH, secret_name="quay-credentials")


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        pytest.param({}, ['"token"', '"username"', '"password"'], id="nothing"),
        pytest.param({"token": "  "}, ['"token"', '"username"', '"password"'], id="blank-token"),
        pytest.param({"username": "devtable"}, ['"password"'], id="username-only"),
        pytest.param({"password": "password"}, ['"username"'], id="password-only"),
    ],
)
def test_credentials_required(data: dict[str, str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_connection({"host": "quay.example.com", **data}, secret_name="quay-credentials")
    for fragment in ["connSecretRef: quay-credentials", *fragments]:
        assert fragment in str(caught.value)


def test_the_validate_certs_message() -> None:
    """The brief's wording, without the value (issue 18: never a value from a Secret)."""
    with pytest.raises(ConfigError) as caught:
        parse_connection({"host": "q", **AUTH, "validateCerts": "maybe"},
                         secret_name="quay-credentials")
    assert str(caught.value) == ('connSecretRef: quay-credentials: key "validateCerts": '
                                 "the value is not a boolean; use one of true/false/yes/no/1/0")


def test_credentials_stay_out_of_messages_and_repr() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_connection({"host": "https://devtable:s3cret@quay.example.com", **AUTH},
                         secret_name="s")
    assert "s3cret" not in str(caught.value)
    conn = parse_connection({"host": "q", "username": "u", "password": "hunter2"},
                            secret_name="s")
    assert "hunter2" not in repr(conn)
    assert TOKEN not in repr(parse_connection({"host": "q", **AUTH}, secret_name="s"))


def test_fingerprint_is_stable_distinct_and_opaque() -> None:
    one = parse_connection({"host": "q", **AUTH}, secret_name="a")
    same = parse_connection({"host": "https://q/", "token": f"{TOKEN}\n"}, secret_name="b")
    assert one.fingerprint == same.fingerprint
    assert re.fullmatch(r"[0-9a-f]{64}", one.fingerprint)  # a SHA-256 hex digest
    assert TOKEN not in one.fingerprint
    variants = [
        Connection("https://q", "q", token=TOKEN + "x"),
        Connection("https://q", "q", token=TOKEN, validate_certs=False),
        Connection("https://q2", "q2", token=TOKEN),
        Connection("https://q", "q", username="ab", password="c"),
        Connection("https://q", "q", username="a", password="bc"),
    ]
    prints = {v.fingerprint for v in variants} | {one.fingerprint}
    assert len(prints) == len(variants) + 1
    # Timeout is not a credential and does not change the cache key.
    assert Connection("https://q", "q", token=TOKEN, timeout=3).fingerprint == one.fingerprint


@given(st.dictionaries(st.sampled_from(["host", "token", "username", "password",
                                        "validateCerts", "timeout", "other"]),
                       st.text(max_size=40)))
def test_any_secret_data_gives_a_connection_or_config_error(data: dict[str, str]) -> None:
    try:
        conn = parse_connection(data, secret_name="s")
    except ConfigError as error:
        assert str(error).startswith("connSecretRef: s: ")
        return
    assert conn.base_url.startswith(("http://", "https://"))
    assert not conn.base_url.endswith("/")
    assert conn.registry and conn.registry in conn.base_url
    assert conn.timeout > 0
    assert conn.token or (conn.username and conn.password)


@pytest.mark.parametrize("data", [
    {"host": "https://admin:hunter2-password@quay.example.com"},
    {"host": "https://quay.example.com/?secret-query-value"},
    {"host": "ftp://secret-host-value"},
    {"validateCerts": "secret-looking-value"},
    {"timeout": "secret-looking-value"},
], ids=["userinfo", "query", "scheme", "validate-certs", "timeout"])
def test_refusals_never_quote_a_value_of_the_secret(data: dict[str, str]) -> None:
    """Status messages and Events are read by whoever can read the DockerToken: a value from the
    connection Secret (a host with user:password@, a pasted token) never appears in them."""
    with pytest.raises(ConfigError) as caught:
        parse_connection({"host": "quay.example.com", **AUTH, **data}, secret_name="quay-credentials")
    message = str(caught.value)
    for value in data.values():
        assert value not in message
    for fragment in ("hunter2", "secret-query-value", "secret-host-value", "secret-looking-value"):
        assert fragment not in message
