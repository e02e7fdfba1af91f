"""function.template: spec.secretTemplate merged into the return Secret's metadata. Pure."""

from __future__ import annotations

from typing import Any

import pytest

from function.errors import ConfigError
from function.model import DockerToken, Token
from function.pullsecret import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    OWNER_UID_ANNOTATION,
    build,
    is_intact,
)
from function.template import (
    ANNOTATIONS_MAX_BYTES,
    apply_template,
    validate_template,
)

OWN_LABELS = {MANAGED_BY_LABEL: MANAGED_BY}
OWN_ANNOTATIONS = {OWNER_ANNOTATION: "ns/dt", OWNER_UID_ANNOTATION: "uid-1"}


@pytest.mark.parametrize(("template", "labels", "annotations"), [
    pytest.param(None, OWN_LABELS, OWN_ANNOTATIONS, id="no-template"),
    pytest.param({}, OWN_LABELS, OWN_ANNOTATIONS, id="empty-template"),
    pytest.param({"labels": None, "annotations": None}, OWN_LABELS, OWN_ANNOTATIONS,
                 id="null-maps"),
    pytest.param({"labels": {"team": "payments", "example.com/tier": "gold", "empty": ""}},
                 {**OWN_LABELS, "team": "payments", "example.com/tier": "gold", "empty": ""},
                 OWN_ANNOTATIONS, id="labels"),
    pytest.param({"annotations": {"note": "any text: even spaces, 'quotes' and /slashes/"}},
                 OWN_LABELS, {**OWN_ANNOTATIONS, "note": "any text: even spaces, 'quotes' "
                                                         "and /slashes/"}, id="annotations"),
    pytest.param({"labels": {MANAGED_BY_LABEL: "argocd", "team": "a"},
                  "annotations": {OWNER_ANNOTATION: "other/x", OWNER_UID_ANNOTATION: "forged",
                                  "note": "kept"}},
                 {**OWN_LABELS, "team": "a"}, {**OWN_ANNOTATIONS, "note": "kept"},
                 id="marks-never-overridden"),
    pytest.param({"labels": {OWNER_ANNOTATION: "as-a-label-is-fine"}},
                 {**OWN_LABELS, OWNER_ANNOTATION: "as-a-label-is-fine"}, OWN_ANNOTATIONS,
                 id="annotation-mark-key-as-label"),
])
def test_apply_template(template: Any, labels: dict[str, str],
                        annotations: dict[str, str]) -> None:
    own_labels, own_annotations = dict(OWN_LABELS), dict(OWN_ANNOTATIONS)
    assert apply_template(own_labels, own_annotations, template) == (labels, annotations)
    assert (own_labels, own_annotations) == (OWN_LABELS, OWN_ANNOTATIONS)  # inputs untouched


def test_template_replaces_other_entries_of_the_same_key() -> None:
    labels, _ = apply_template({**OWN_LABELS, "team": "old"}, {}, {"labels": {"team": "new"}})
    assert labels == {**OWN_LABELS, "team": "new"}


def test_the_templated_secret_is_still_ours_and_intact() -> None:
    dt = DockerToken.from_object({"metadata": {"namespace": "ns", "name": "dt", "uid": "uid-1"},
                                  "spec": {"connSecretRef": {"name": "c"}, "name": "t",
                                           "retSecretRef": {"name": "pull"}}})
    token = Token("u", "t", "created", code="C" * 120)
    assert dt.ret_secret is not None
    desired = build(dt, dt.ret_secret, token, "quay.example.com")
    meta = desired["metadata"]
    meta["labels"], meta["annotations"] = apply_template(
        meta["labels"], meta["annotations"],
        {"labels": {MANAGED_BY_LABEL: "someone-else", "team": "a"},
         "annotations": {OWNER_UID_ANNOTATION: "forged"}})
    assert is_intact(desired, build(dt, dt.ret_secret, token, "quay.example.com"))


@pytest.mark.parametrize(("template", "message"), [
    pytest.param({"labels": {"a b": "x"}},
                 'spec.secretTemplate.labels["a b"]: not a valid label key: the name part must '
                 "consist of alphanumeric", id="label-key-space"),
    pytest.param({"labels": {"-a": "x"}}, 'labels["-a"]: not a valid label key', id="leading-dash"),
    pytest.param({"labels": {"a" * 64: "x"}}, "name part is longer than 63 characters",
                 id="name-too-long"),
    pytest.param({"labels": {"Example.com/a": "x"}},
                 'labels["Example.com/a"]: not a valid label key: the prefix before \'/\' must be '
                 "a DNS subdomain", id="upper-case-prefix"),
    pytest.param({"labels": {"/a": "x"}}, "the prefix before '/' is empty", id="empty-prefix"),
    pytest.param({"labels": {"a/": "x"}}, "the name part is empty", id="empty-name"),
    pytest.param({"labels": {"a/b/c": "x"}}, "a key has at most one '/'", id="two-slashes"),
    pytest.param({"labels": {("a" * 250) + ".com/x": "y"}}, "at most 253 characters",
                 id="prefix-too-long"),
    pytest.param({"labels": {"": "x"}}, 'labels[""]: not a valid label key: the name part is empty',
                 id="empty-key"),
    pytest.param({"labels": {"team": "a b"}},
                 'spec.secretTemplate.labels["team"]: the value \'a b\' is not a valid label '
                 "value", id="label-value-space"),
    pytest.param({"labels": {"team": "x" * 64}}, "at most 63 characters", id="value-too-long"),
    pytest.param({"labels": {"team": "-x"}}, "is not a valid label value", id="value-dash"),
    pytest.param({"labels": {"team": 1}}, 'labels["team"]: the value must be a string',
                 id="label-value-number"),
    pytest.param({"annotations": {"a b": "x"}},
                 'spec.secretTemplate.annotations["a b"]: not a valid annotation key',
                 id="annotation-key"),
    pytest.param({"annotations": {"note": None}}, 'annotations["note"]: the value must be a string',
                 id="annotation-value-null"),
    pytest.param({"annotations": {"big": "x" * ANNOTATIONS_MAX_BYTES}},
                 "spec.secretTemplate.annotations: 262147 bytes in all; Kubernetes allows at most "
                 "262144", id="annotations-too-big"),
    pytest.param({"labels": ["team"]}, "spec.secretTemplate.labels: must be a map",
                 id="labels-not-a-map"),
    pytest.param(["labels"], "spec.secretTemplate: must be an object", id="not-an-object"),
])
def test_invalid_templates_are_refused_naming_the_entry(template: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_template(template)
    assert message in str(caught.value)
    assert str(caught.value).startswith("spec.secretTemplate")
    with pytest.raises(ConfigError):
        apply_template(OWN_LABELS, OWN_ANNOTATIONS, template)


@pytest.mark.parametrize("key", [
    pytest.param("a", id="one-character"),
    pytest.param("a.b_c-d", id="inner-punctuation"),
    pytest.param("A9", id="upper-case-name"),
    pytest.param("example.com/a", id="prefixed"),
    pytest.param("a" * 63, id="longest-name"),
    pytest.param("kubernetes.io/whatever", id="reserved-prefixes-are-not-refused"),
])
def test_valid_keys(key: str) -> None:
    validate_template({"labels": {key: "v"}, "annotations": {key: "anything at all"}})


def test_merged_annotations_too_big() -> None:
    half = ANNOTATIONS_MAX_BYTES // 2
    with pytest.raises(ConfigError, match="would total"):
        apply_template({}, {"existing": "x" * half}, {"annotations": {"new": "y" * half}})


def test_long_keys_are_cut_in_messages() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_template({"labels": {"a" * 300: "x"}})
    assert len(str(caught.value)) < 300 and "..." in str(caught.value)
