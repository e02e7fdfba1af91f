"""function.events: which object an event names, for every shape the function accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function import events
from function.errors import BadEvent

SAMPLES = sorted((Path(__file__).resolve().parents[1] / "scripts" / "events").glob("*.json"))


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_every_sample_event_names_the_sample_object(path: Path) -> None:
    event = json.loads(path.read_text())
    target = events.parse_event(event, event["data"])
    assert target is not None
    assert (target.namespace, target.name) == ("default", "dockertoken-sample")
    assert target.verify_quay is (path.stem == "resync")


def test_samples_cover_both_modes_all_verbs_and_resync() -> None:
    assert {p.stem for p in SAMPLES} == {f"{m}-{v}" for m in ("ref", "resource")
                                         for v in ("add", "update", "delete")} | {"resync"}


@pytest.mark.parametrize(
    ("attrs", "data"),
    [
        pytest.param({"type": "dev.knative.apiserver.ref.add"},
                     {"kind": "Pod", "namespace": "a", "name": "b", "apiVersion": "v1"}, id="other-kind"),
        pytest.param({"type": "dev.knative.apiserver.ref.add"},
                     {"kind": "DockerToken", "namespace": "a", "name": "b", "apiVersion": "other.io/v1"},
                     id="same-kind-other-group"),
        pytest.param({"type": "com.example.unrelated"}, {"namespace": "a", "name": "b"}, id="other-type"),
        pytest.param({"type": "dev.knative.apiserver.ref.patch"}, {}, id="unknown-verb"),
    ],
)
def test_events_about_something_else_are_ignored(attrs: dict[str, str], data: dict[str, str]) -> None:
    assert events.parse_event(attrs, data) is None


def test_extensions_name_the_object_when_data_is_empty() -> None:
    attrs = {"type": "dev.knative.apiserver.ref.delete", "kind": "DockerToken", "namespace": "ns",
             "name": "tok", "apiversion": "quay.herve4m.github.io/v1alpha1"}
    target = events.parse_event(attrs, None)
    assert target == events.Target("ns", "tok", verify_quay=False)


@pytest.mark.parametrize(
    ("attrs", "data", "names"),
    [
        pytest.param({}, {}, "type", id="no-type"),
        pytest.param({"type": events.RESYNC_TYPE}, ["a"], "JSON object", id="data-not-object"),
        pytest.param({"type": events.RESYNC_TYPE}, {"name": "x"}, "namespace", id="no-namespace"),
        pytest.param({"type": events.RESYNC_TYPE}, {"namespace": "UPPER", "name": "x"}, "namespace",
                     id="bad-namespace"),
        pytest.param({"type": events.RESYNC_TYPE}, {"namespace": "ns", "name": "x" * 300}, "name",
                     id="name-too-long"),
        pytest.param({"type": events.RESYNC_TYPE}, {"namespace": "ns", "name": 7}, "name", id="name-not-str"),
    ],
)
def test_malformed_events_name_what_is_wrong(attrs: dict[str, str], data: object, names: str) -> None:
    with pytest.raises(BadEvent, match=names):
        events.parse_event(attrs, data)
