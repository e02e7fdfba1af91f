"""Malformed CloudEvents, fuzzed: the function answers 204 or 400 (with a message), never 500.

Two levels: ``function.events.parse_event`` on its own (cheap, many examples), and the running
function over HTTP (random headers and bodies, missing or mistyped attributes, huge bodies).
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from function import events
from function.errors import BadEvent
from function.model import LABEL, SUBDOMAIN
from tests import harness

# Over HTTP each example is one request to the function (a few ms); keep the run short.
HTTP_EXAMPLES = 250
UNIT_EXAMPLES = 600
MAX_BODY = 2 * 1024 * 1024

TYPES = [
    "dev.knative.apiserver.ref.add", "dev.knative.apiserver.ref.update",
    "dev.knative.apiserver.ref.delete", "dev.knative.apiserver.resource.add",
    "dev.knative.apiserver.resource.delete", "dev.knative.apiserver.ref.patch",
    events.RESYNC_TYPE, "com.example.other", "",
]
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
# names that are valid, invalid, or of the wrong type
names = (st.sampled_from(["ns", "default", "fuzz-nowhere", "UPPER", "a_b", "-x", "x" * 254, "", "a.b"])
         | st.text(max_size=70) | st.integers() | st.none() | st.lists(st.text(max_size=3), max_size=2))


@st.composite
def event_data(draw: st.DrawFn) -> Any:
    """The data an event may carry: the right shape with wrong values, or anything at all."""
    shape = draw(st.sampled_from(["ref", "resource", "resync", "any"]))
    if shape == "any":
        return draw(json_values)
    ns, name = draw(names), draw(names)
    if shape == "ref":
        body: dict[str, Any] = {"kind": draw(st.sampled_from(["DockerToken", "Pod", 3, None])),
                                "namespace": ns, "name": name,
                                "apiVersion": draw(st.sampled_from(
                                    ["quay.herve4m.github.io/v1alpha1", "v1", "", 5]))}
    elif shape == "resource":
        body = {"kind": "DockerToken", "apiVersion": "quay.herve4m.github.io/v1alpha1",
                "metadata": draw(st.sampled_from([{"namespace": ns, "name": name}, None, "meta", [ns]])),
                "spec": draw(json_values)}
    else:
        body = {"namespace": ns, "name": name}
    for key in draw(st.lists(st.sampled_from(list(body)), max_size=2)):
        body.pop(key, None)
    return body


# -- unit level --------------------------------------------------------------------------------

def test_parse_event_answers_a_target_none_or_bad_event() -> None:
    ran = 0

    @settings(max_examples=UNIT_EXAMPLES, deadline=None)
    @given(attributes=st.dictionaries(
               st.sampled_from(["type", "kind", "namespace", "name", "apiversion", "source", "id"])
               | st.text(max_size=8),
               st.sampled_from(TYPES) | st.text(max_size=30) | st.integers() | st.none(), max_size=7),
           data=event_data() | json_values)
    def one(attributes: dict[str, Any], data: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            target = events.parse_event(attributes, data)
        except BadEvent as exc:
            message = str(exc)
            assert any(word in message for word in ("type", "data", "namespace", "name")), message
            assert len(message) < 400
            return
        if target is not None:
            assert LABEL.match(target.namespace) and SUBDOMAIN.match(target.name)
            assert target.verify_quay == (attributes["type"] == events.RESYNC_TYPE)

    one()
    print(f"parse_event fuzz examples: {ran}")
    assert ran >= UNIT_EXAMPLES // 2, f"only {ran} examples ran"


# -- over HTTP -----------------------------------------------------------------------------------

_TOKEN_CHARS = string.ascii_letters + string.digits + "-_"
# what an HTTP client can send: printable ASCII, no surrounding whitespace (h11 refuses it)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E),
                        max_size=60).map(str.strip)


@st.composite
def http_events(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    """A plausible event, then mutated: attributes dropped, retyped or added, body replaced."""
    # mostly well-formed envelopes, so that most examples reach the function's own checks
    mode = draw(st.sampled_from(["binary"] * 3 + ["structured"] * 2 + ["garbage"]))
    attrs: dict[str, Any] = {
        "specversion": draw(st.sampled_from(["1.0"] * 8 + ["0.3", "2.0", "", "1"])),
        "id": draw(st.sampled_from(["1", "", "x" * 300]) | header_values),
        "source": draw(st.sampled_from(["https://10.96.0.1:443", "/resync", ""]) | header_values),
        "type": draw(st.sampled_from(TYPES) | header_values),
        "kind": "DockerToken", "namespace": "ns", "name": "fuzz-nowhere",
    }
    for key in draw(st.lists(st.sampled_from(list(attrs)), max_size=2)):
        attrs.pop(key, None)
    for key in draw(st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10),
                             max_size=2)):
        attrs[key] = draw(header_values)
    data = draw(event_data())
    if mode == "structured":
        envelope: Any = {**attrs, "data": data}
        if draw(st.integers(0, 4)) == 0:
            envelope = draw(st.sampled_from([[envelope], "text", None, {"data": data}]))
        return {"Content-Type": draw(st.sampled_from(
            ["application/cloudevents+json", "application/cloudevents-batch+json"]))}, \
            json.dumps(envelope).encode()
    headers = {f"ce-{k}": str(v) for k, v in attrs.items()}
    headers["Content-Type"] = draw(st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", "application/xml",
         "application/octet-stream", "", "application/cloudevents+json"]))
    if mode == "garbage":
        body = draw(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
    else:
        body = json.dumps(data).encode()
    extra = draw(st.dictionaries(st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12),
                                 header_values, max_size=3))
    return {**{k: v for k, v in extra.items() if k.lower() not in ("content-length", "host",
                                                                     "transfer-encoding")},
            **headers}, body


def _assert_answer(resp: httpx.Response) -> None:
    assert resp.status_code in (204, 400), (resp.status_code, resp.text)
    if resp.status_code == 204:
        assert resp.content == b""
    elif resp.text.startswith("<html>"):
        # gunicorn's own answer to a malformed HTTP request (e.g. Content-Type sent twice),
        # given before the function runs; it names the header
        assert "Invalid HTTP" in resp.text, resp.text
    else:
        text = resp.text
        assert text.startswith("bad event: ") and len(text) > 25, text
        assert len(text) < 1000


@pytest.fixture(scope="module")
def client(function_proc: harness.FunctionProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=function_proc.url, timeout=30,
                      headers={"Authorization": f"Bearer {function_proc.sender_token}"}) as c:
        yield c


def test_fuzzed_events_over_http_get_204_or_a_clear_400(client: httpx.Client) -> None:
    ran = 0

    @settings(max_examples=HTTP_EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(event=http_events())
    @example(event=({**harness.resync_event("ns", "x")[0], "CONTENT-TYPE": ""}, b"{}"))  # sent twice
    def one(event: tuple[dict[str, str], bytes]) -> None:
        nonlocal ran
        ran += 1
        headers, body = event
        resp = client.post("/", headers=headers, content=body)
        harness.record_response(resp)
        _assert_answer(resp)

    one()
    print(f"HTTP fuzz examples: {ran}")
    assert ran >= HTTP_EXAMPLES // 2, f"only {ran} examples reached the function"


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_bodies_over_two_mib_are_refused_with_400(client: httpx.Client, structured: bool,
                                                  chunked: bool) -> None:
    headers, _ = harness.resync_event("ns", "fuzz-nowhere")
    padding = "x" * (MAX_BODY + 1)
    body = json.dumps({"namespace": "ns", "name": "fuzz-nowhere", "padding": padding}).encode()
    if structured:
        headers, body = harness.structured(headers, body)
    content: Any = iter([body[i:i + 65536] for i in range(0, len(body), 65536)]) if chunked else body
    resp = client.post("/", headers=headers, content=content)
    harness.record_response(resp)
    assert resp.status_code == 400, resp.text
    assert "larger than" in resp.text


def test_a_body_just_under_the_limit_is_accepted(client: httpx.Client) -> None:
    headers, _ = harness.resync_event("ns", "fuzz-nowhere")
    body = json.dumps({"namespace": "ns", "name": "fuzz-nowhere", "pad": ""}).encode()
    body = body.replace(b'"pad": ""', b'"pad": "' + b"x" * (MAX_BODY - len(body) - 10) + b'"')
    assert len(body) <= MAX_BODY
    resp = client.post("/", headers=headers, content=body)
    harness.record_response(resp)
    assert resp.status_code == 204, resp.text
