"""``spec.secretTemplate``: labels and annotations for the return Secret. Pure functions.

As cert-manager's ``secretTemplate``: the template's entries are added to the Secret's own
labels and annotations, but never replace the marks that say whose Secret it is
(:data:`MARKS`): a template entry with such a key is ignored. Keys and values follow the
rules the API server applies
(``k8s.io/apimachinery`` ``IsQualifiedName``, ``IsValidLabelValue``, the 256 KiB limit on
all annotations together), so a bad entry is reported as a ConfigError naming it, e.g.
``spec.secretTemplate.labels["x y"]``, instead of a refused Secret write.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from function.errors import ConfigError
from function.model import (
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    OWNER_UID_ANNOTATION,
    OWNER_UID_LABEL,
    SUBDOMAIN,
)

__all__ = ["FIELD", "MARKS", "apply_template", "validate_template"]

FIELD = "spec.secretTemplate"
# The ownership marks, per kind of metadata map: a template never changes these.
MARKS: Mapping[str, frozenset[str]] = {
    "labels": frozenset({MANAGED_BY_LABEL, OWNER_UID_LABEL}),
    "annotations": frozenset({OWNER_ANNOTATION, OWNER_UID_ANNOTATION}),
}
# apimachinery/pkg/util/validation: qualified names, DNS-1123 subdomains, label values.
_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
NAME_MAX = 63
PREFIX_MAX = 253
LABEL_VALUE_MAX = 63
# apimachinery/pkg/api/validation TotalAnnotationSizeLimitB: keys and values of all annotations.
ANNOTATIONS_MAX_BYTES = 256 * 1024
_NAME_RULE = ("consist of alphanumeric characters, '-', '_' or '.', and start and end with an "
              "alphanumeric character")


def validate_template(template: object) -> None:
    """Raise ConfigError naming the first entry of ``spec.secretTemplate`` the API server would
    refuse; None and ``{}`` are fine."""
    _validated(template)


def _validated(template: object) -> tuple[dict[str, str], dict[str, str]]:
    """The template's (labels, annotations) once every entry is checked."""
    labels, annotations = _maps(template)
    out_labels: dict[str, str] = {}
    out_annotations: dict[str, str] = {}
    for key, value in labels.items():
        where = f'{FIELD}.labels["{_shown(key)}"]'
        _check_key(key, where, "label")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: the value must be a string; quote it")
        if value and (len(value) > LABEL_VALUE_MAX or not _NAME.match(value)):
            raise ConfigError(
                f"{where}: the value {_shown(value)!r} is not a valid label value: it must be at "
                f"most {LABEL_VALUE_MAX} characters, empty or {_NAME_RULE}; change it, or make it "
                "an annotation"
            )
        out_labels[key] = value
    for key, value in annotations.items():
        where = f'{FIELD}.annotations["{_shown(key)}"]'
        _check_key(key, where, "annotation")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: the value must be a string; quote it")
        out_annotations[key] = value
    size = _size(out_annotations)
    if size > ANNOTATIONS_MAX_BYTES:
        raise ConfigError(f"{FIELD}.annotations: {size} bytes in all; Kubernetes allows at most "
                          f"{ANNOTATIONS_MAX_BYTES} bytes of annotations on an object, shorten them")
    return out_labels, out_annotations


def _size(annotations: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def apply_template(labels: Mapping[str, str], annotations: Mapping[str, str],
                   template: object) -> tuple[dict[str, str], dict[str, str]]:
    """The Secret's labels and annotations with the template's entries added.

    ``labels``/``annotations`` are the Secret's own (those of ``pullsecret.build``, with the
    ownership marks). Template entries replace other entries of the same key, never a mark.
    The template is validated first (ConfigError), and so is the size of all annotations.
    """
    extra_labels, extra_annotations = _validated(template)
    out_labels, out_annotations = dict(labels), dict(annotations)
    for out, extra, marks in ((out_labels, extra_labels, MARKS["labels"]),
                              (out_annotations, extra_annotations, MARKS["annotations"])):
        out.update({k: v for k, v in extra.items() if k not in marks})
    size = _size(out_annotations)
    if size > ANNOTATIONS_MAX_BYTES:
        raise ConfigError(f"{FIELD}.annotations: the Secret's annotations would total {size} "
                          f"bytes; Kubernetes allows at most {ANNOTATIONS_MAX_BYTES}, shorten them")
    return out_labels, out_annotations


def _maps(template: object) -> tuple[Mapping[str, object], Mapping[str, object]]:
    """(labels, annotations) of the template; ConfigError when it is not shaped as the schema."""
    if template is None:
        return {}, {}
    if not isinstance(template, Mapping):
        raise ConfigError(f"{FIELD}: must be an object with labels and annotations maps")
    out: list[Mapping[str, object]] = []
    for kind in ("labels", "annotations"):
        entries = template.get(kind)
        if entries is None:
            entries = {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{FIELD}.{kind}: must be a map of strings to strings")
        out.append(entries)
    return out[0], out[1]


def _check_key(key: object, where: str, kind: str) -> None:
    """``IsQualifiedName``: ``[prefix/]name``, prefix a DNS-1123 subdomain, name as _NAME."""
    if not isinstance(key, str):
        raise ConfigError(f"{where}: the key must be a string")
    prefix, slash, name = key.rpartition("/")
    problem = ""
    if not name:
        problem = "the name part is empty"
    elif len(name) > NAME_MAX:
        problem = f"the name part is longer than {NAME_MAX} characters"
    elif not _NAME.match(name):
        problem = f"the name part must {_NAME_RULE}"
    elif slash and not prefix:
        problem = "the prefix before '/' is empty"
    elif slash and "/" in prefix:
        problem = "a key has at most one '/'"
    elif slash and (len(prefix) > PREFIX_MAX or not SUBDOMAIN.match(prefix)):
        problem = ("the prefix before '/' must be a DNS subdomain (lower-case alphanumeric, "
                   f"'-' and '.', at most {PREFIX_MAX} characters)")
    if problem:
        raise ConfigError(f"{where}: not a valid {kind} key: {problem}; rename or remove it")


def _shown(text: object) -> str:
    """A key or value as a message may quote it: at most 80 characters."""
    value = str(text)
    return value if len(value) <= 80 else value[:80] + "..."
