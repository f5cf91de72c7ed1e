"""model.py and checkdef.py: statuses, results, findings (the JSON contract), exit status."""
from __future__ import annotations

import dataclasses
import enum
import json

import pytest

from virtdoctor.checkdef import Check, check
from virtdoctor.model import (Auto, Fail, Finding, FixInfo, Pass, Result, Severity, Skip, Status, Warn, exit_status,
                              summarize)


def finding(status="fail", severity="error", **kw):
    base = dict(id="x-y", status=Status(status), severity=Severity(severity), subject="host", title="T",
                message="m")
    base.update(kw)
    return Finding(**base)


@pytest.mark.parametrize("enum_cls, values", [
    pytest.param(Status, {"pass", "fail", "skip", "error"}, id="status"),
    pytest.param(Severity, {"error", "warning", "info"}, id="severity"),
    pytest.param(Auto, {"safe", "unsafe", "manual"}, id="auto"),
])
def test_enum_values_are_the_json_strings(enum_cls, values):
    assert {m.value for m in enum_cls} == values
    for m in enum_cls:
        assert m.name == m.value.upper()
        assert json.dumps(m) == json.dumps(m.value)  # str enums serialise as their value


def test_result_builders():
    assert Pass() == Result(Status.PASS, "", {})
    f = Fail("broken", {"a": 1}, key="k")
    assert (f.status, f.message, f.evidence, f.severity, f.key) == (Status.FAIL, "broken", {"a": 1}, None, "k")
    w = Warn("meh")
    assert w.status is Status.FAIL and w.severity is Severity.WARNING
    assert Warn("meh", severity=Severity.INFO).severity is Severity.INFO
    s = Skip("no daemon", subject="uri:x")
    assert (s.status, s.message, s.subject) == (Status.SKIP, "no daemon", "uri:x")
    assert Pass().evidence is not Pass().evidence  # no shared mutable default


def test_finding_to_dict_has_exactly_the_contract_keys():
    fix = FixInfo("do it", ("cmd a", "cmd b"), Auto.SAFE)
    d = finding(evidence={"n": 1}, fix=fix, area="kvm").to_dict()
    assert list(d) == ["id", "status", "severity", "subject", "title", "message", "evidence", "fix"]
    assert d["fix"] == {"summary": "do it", "commands": ["cmd a", "cmd b"], "auto": "safe"}
    assert d["status"] == "fail" and d["severity"] == "error"
    assert finding(status="pass").to_dict()["fix"] is None
    json.dumps(d)


def test_finding_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding().status = Status.PASS


class Colour(enum.Enum):
    RED = "red"


def test_evidence_becomes_plain_json():
    ev = {"set": {"b", "a"}, "tuple": (1, 2), "enum": Colour.RED, 3: None, "nested": {"x": [Severity.INFO]},
          "obj": Colour, "frozen": frozenset({3, 1})}
    out = finding(evidence=ev).to_dict()["evidence"]
    assert out["set"] == ["a", "b"]
    assert out["tuple"] == [1, 2]
    assert out["enum"] == "red"
    assert out["3"] is None
    assert out["nested"] == {"x": ["info"]}
    assert out["obj"] == str(Colour)
    assert out["frozen"] == [1, 3]
    assert json.loads(json.dumps(out)) == out


def test_summarize_counts_every_status():
    fs = [finding("pass"), finding("pass"), finding("fail"), finding("skip", "info")]
    assert summarize(fs) == {"pass": 2, "fail": 1, "skip": 1, "error": 0}
    assert summarize([]) == {"pass": 0, "fail": 0, "skip": 0, "error": 0}


@pytest.mark.parametrize("statuses, expected", [
    pytest.param([], 0, id="nothing"),
    pytest.param([("pass", "error"), ("skip", "info")], 0, id="pass-and-skip"),
    pytest.param([("fail", "warning")], 1, id="warning-failed"),
    pytest.param([("fail", "info")], 1, id="info-failed"),
    pytest.param([("error", "warning")], 1, id="check-crashed"),
    pytest.param([("fail", "warning"), ("fail", "error")], 2, id="error-failed"),
    pytest.param([("pass", "error"), ("fail", "error"), ("error", "warning")], 2, id="error-wins"),
])
def test_exit_status(statuses, expected):
    assert exit_status([finding(s, sev) for s, sev in statuses]) == expected


# -- checkdef ------------------------------------------------------------------

def test_check_decorator_keeps_metadata_and_docstring():
    @check("some-thing", scope="host", area="kvm", severity="warning", title="A title", needs=["libvirt"])
    def some_thing(facts):
        """Looks at x.

        Why: y."""
        return Pass()

    assert isinstance(some_thing, Check)
    assert (some_thing.slug, some_thing.scope, some_thing.area) == ("some-thing", "host", "kvm")
    assert some_thing.severity is Severity.WARNING
    assert some_thing.needs == ("libvirt",)
    assert some_thing.plugin == __name__
    assert some_thing.doc == "Looks at x.\n\nWhy: y."
    assert some_thing(None) == Pass()
    assert not some_thing.has_fixer

    @some_thing.fixer
    def fixer(finding, facts):
        return None

    assert some_thing.has_fixer and some_thing.fixer_func is fixer
    assert fixer(None, None) is None  # the decorator returns the function itself


@pytest.mark.parametrize("slug, scope, message", [
    pytest.param("Bad_Slug", "host", "not a slug", id="upper-and-underscore"),
    pytest.param("-dash-first", "host", "not a slug", id="leading-dash"),
    pytest.param("", "host", "not a slug", id="empty"),
    pytest.param("ok-slug", "message", "scope must be", id="bad-scope"),
])
def test_check_refuses_bad_metadata(slug, scope, message):
    with pytest.raises(ValueError, match=message):
        check(slug, scope=scope, area="a", title="t")(lambda facts: None)


def test_check_refuses_unknown_severity():
    with pytest.raises(ValueError):
        check("ok-slug", scope="host", area="a", title="t", severity="fatal")(lambda facts: None)
