"""The return Secret's content and ownership rules (function.secret), without a cluster."""

from __future__ import annotations

import base64
import json

from function import pullsecret
from function.model import DockerToken, Ref, Token

DT = DockerToken.from_object({"metadata": {"namespace": "ns", "name": "dt", "uid": "uid-1"},
                              "spec": {"connSecretRef": {"name": "c"}, "name": "mytoken"}})
TOKEN = Token("u1", "mytoken", "Thu, 26 Nov 2026 17:22:15 -0000", code="CODE123")


def test_secret_holds_the_original_operators_keys_and_a_docker_config() -> None:
    body = pullsecret.build(DT, Ref("ns", "pull"), TOKEN, "quay.example.com:8443")
    data = pullsecret.decoded(body)
    auth = base64.b64encode(b"$app:CODE123").decode()
    assert body["type"] == "kubernetes.io/dockerconfigjson"
    assert data == {
        ".dockerconfigjson": json.dumps({"auths": {"quay.example.com:8443": {"auth": auth, "email": ""}}},
                                        separators=(",", ":")),
        "auth": auth, "created": TOKEN.created, "expiration": "", "lastAccessed": "", "name": "mytoken",
        "tokenCode": "CODE123", "username": "$app", "uuid": "u1",
    }
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "ownerReferences" not in pullsecret.build(DT, Ref("other", "pull"), TOKEN, "q")["metadata"]
    assert "CODE123" not in repr(TOKEN)


def test_ownership_by_our_marks_or_the_old_operators_owner_reference() -> None:
    ours = pullsecret.build(DT, Ref("ns", "pull"), TOKEN, "q")
    assert pullsecret.is_ours(ours, DT)
    old_operator = {"metadata": {"ownerReferences": [{"uid": "uid-1", "kind": "DockerToken"}]}}
    assert pullsecret.is_ours(old_operator, DT)
    assert not pullsecret.is_ours({"metadata": {"name": "pull"}}, DT)
    recreated = DockerToken.from_object({"metadata": {"namespace": "ns", "name": "dt", "uid": "uid-2"},
                                         "spec": {"connSecretRef": {"name": "c"}, "name": "x"}})
    assert not pullsecret.is_ours(ours, recreated)  # same name, another object: not ours any more


def test_an_edited_copy_of_the_code_makes_the_secret_untrusted() -> None:
    body = pullsecret.build(DT, Ref("ns", "pull"), TOKEN, "q")
    assert pullsecret.token_from(body) == TOKEN
    assert pullsecret.is_intact(body, body)
    body["data"]["tokenCode"] = base64.b64encode(b"tampered").decode()
    assert pullsecret.token_from(body) is None
    assert not pullsecret.is_intact(body, pullsecret.build(DT, Ref("ns", "pull"), TOKEN, "q"))


def test_a_planted_secret_with_an_empty_or_missing_owner_uid_is_not_ours() -> None:
    """Issue 18: the owner annotation alone, with an empty (or no) owner-uid, could be written by
    anyone who may create a Secret in that namespace; a token code must never go into it."""
    for uid in ("", None):
        annotations = {pullsecret.OWNER_ANNOTATION: "ns/dt"}
        if uid is not None:
            annotations[pullsecret.OWNER_UID_ANNOTATION] = uid
        planted = {"metadata": {"name": "pull", "annotations": annotations,
                                "labels": {pullsecret.MANAGED_BY_LABEL: pullsecret.MANAGED_BY}}}
        assert not pullsecret.is_ours(planted, DT)
