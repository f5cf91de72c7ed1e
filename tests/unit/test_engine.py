"""engine.py: selection, isolation of crashing checks, skips, subjects, fix info."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from virtdoctor import domxml
from virtdoctor.checkdef import check
from virtdoctor.engine import run, run_check, select
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import RecordedLibvirt
from virtdoctor.model import (Auto, FactUnavailable, Fail, Pass, Result, Severity, Skip, Status, ToolError,
                              Warn)
from virtdoctor.remedy import RunCommand, plan


@pytest.fixture
def facts(tmp_path):
    return HostFacts(root=str(tmp_path), uri="qemu:///system", libvirt_facts=RecordedLibvirt())


def host_check(func, slug="a-check", severity="error", scope="host", needs=()):
    return check(slug, scope=scope, area="test", title=f"title of {slug}", severity=severity, needs=needs)(func)


DOM = domxml.parse_domain("<domain type='kvm'><name>vm1</name><os><type arch='x86_64'>hvm</type></os></domain>",
                          "vm1.xml", subject="domain:vm1")


def test_pass_gets_metadata_from_the_check(facts):
    [f] = run_check(host_check(lambda facts: Pass("fine", {"k": 1})), facts)
    assert (f.id, f.status, f.severity, f.subject, f.title, f.message, f.evidence, f.fix, f.area) == (
        "a-check", Status.PASS, Severity.ERROR, "host", "title of a-check", "fine", {"k": 1}, None, "test")


def test_default_messages_and_empty_results(facts):
    [f] = run_check(host_check(lambda facts: []), facts)
    assert f.status is Status.PASS and f.message == "ok"
    [f] = run_check(host_check(lambda facts: None), facts)
    assert f.status is Status.PASS
    [f] = run_check(host_check(lambda facts: Result(Status.FAIL)), facts)
    assert f.status is Status.FAIL and f.message == "title of a-check"


def test_several_results_keep_their_subjects(facts):
    def many(facts):
        return [Pass("one", key="a"), Fail("two", subject="uri:qemu:///system", key="b"), Warn("three")]

    fs = run_check(host_check(many), facts)
    assert [f.status for f in fs] == [Status.PASS, Status.FAIL, Status.FAIL]
    assert [f.subject for f in fs] == ["host", "uri:qemu:///system", "host"]
    assert [f.severity for f in fs] == [Severity.ERROR, Severity.ERROR, Severity.WARNING]


def test_crashing_check_becomes_one_error_finding_and_the_run_goes_on(facts):
    def boom(facts):
        raise ValueError("line one\nline two")

    checks = [host_check(boom, "boom"), host_check(lambda facts: Pass(), "fine")]
    fs = run(checks, facts)
    assert [(f.id, f.status) for f in fs] == [("boom", Status.ERROR), ("fine", Status.PASS)]
    assert fs[0].severity is Severity.WARNING
    assert fs[0].message == "check crashed: ValueError: line one"
    assert "\n" not in fs[0].message and "line two" not in fs[0].message


def test_crash_without_message_has_no_dangling_colon(facts):
    def boom(facts):
        raise RuntimeError()

    [f] = run_check(host_check(boom), facts)
    assert f.message == "check crashed: RuntimeError"


def test_returning_a_non_result_is_an_error(facts):
    [f] = run_check(host_check(lambda facts: ["not a result"]), facts)
    assert f.status is Status.ERROR and "returned str, not a Result" in f.message


def test_fact_unavailable_is_a_skip_with_the_reason(facts):
    def needs_daemon(facts):
        raise FactUnavailable("the daemon is away")

    [f] = run_check(host_check(needs_daemon), facts)
    assert (f.status, f.message, f.severity) == (Status.SKIP, "the daemon is away", Severity.INFO)
    [f] = run_check(host_check(lambda facts: Skip("not here")), facts)
    assert (f.status, f.message, f.severity) == (Status.SKIP, "not here", Severity.INFO)


def test_unmet_needs_skip_without_calling_the_check(tmp_path):
    called = []

    def probe(facts):
        called.append(1)
        return Pass()

    offline = HostFacts(root=str(tmp_path), uri="qemu:///system", offline=True)
    [f] = run_check(host_check(probe, needs=("libvirt",)), offline)
    assert f.status is Status.SKIP and "--offline" in f.message
    broken = HostFacts(root=str(tmp_path), uri="qemu:///system",
                       libvirt_facts=RecordedLibvirt(error="Failed to connect socket"))
    [f] = run_check(host_check(probe, needs=("libvirt",)), broken)
    assert f.status is Status.SKIP and f.message == "libvirt not reachable: Failed to connect socket"
    [f] = run_check(host_check(probe, needs=("live",)), broken)
    assert f.status is Status.SKIP and str(tmp_path) in f.message
    assert called == []


def test_need_root(facts):
    chk = host_check(lambda facts: Pass(), needs=("root",))
    assert run_check(chk, dataclasses.replace(facts, euid=1000))[0].message == "needs root"
    assert run_check(chk, dataclasses.replace(facts, euid=0))[0].status is Status.PASS


def test_subjects_by_scope(facts):
    assert run_check(host_check(lambda f: Pass(), scope="uri"), facts)[0].subject == "uri:qemu:///system"
    seen = []

    def domain_check(facts, dom):
        seen.append(dom.name)
        return Pass()

    [f] = run_check(host_check(domain_check, scope="domain"), facts, DOM)
    assert f.subject == "domain:vm1" and seen == ["vm1"]


def test_fix_from_fixer_then_knowledge(facts):
    chk = host_check(lambda facts: Fail("bad", {"n": 2}))

    @chk.fixer
    def fixer(finding, facts):
        assert finding.evidence == {"n": 2} and finding.id == "a-check"
        return plan("restart it", Auto.SAFE, RunCommand(["true"]), RunCommand(["echo", "a b"]))

    [f] = run_check(chk, facts)
    assert f.fix.summary == "restart it" and f.fix.auto is Auto.SAFE
    assert f.fix.commands == ("true", "echo 'a b'")

    entry = SimpleNamespace(fix="from the catalogue", commands=["virsh net-start default"])
    plain = host_check(lambda facts: Fail("bad"), "plain")
    [f] = run_check(plain, facts, knowledge=lambda slug: entry if slug == "plain" else None)
    assert (f.fix.summary, f.fix.commands, f.fix.auto) == ("from the catalogue", ("virsh net-start default",),
                                                           Auto.MANUAL)
    [f] = run_check(host_check(lambda facts: Fail("bad"), "unknown"), facts, knowledge=lambda slug: None)
    assert f.fix is None
    [f] = run_check(host_check(lambda facts: Pass(), "plain"), facts, knowledge=lambda slug: entry)
    assert f.fix is None  # only failures carry a fix


def test_crashing_fixer_falls_back_to_knowledge(facts):
    chk = host_check(lambda facts: Fail("bad"))
    chk.fixer(lambda finding, facts: 1 / 0)
    entry = SimpleNamespace(fix="advice", commands=[])
    [f] = run_check(chk, facts, knowledge=lambda slug: entry)
    assert f.status is Status.FAIL and f.fix.summary == "advice"


def test_domain_fixer_gets_the_domain(facts):
    chk = host_check(lambda facts, dom: Fail("bad"), scope="domain")
    chk.fixer(lambda finding, facts, dom: plan(f"fix {dom.name}", Auto.UNSAFE))
    [f] = run_check(chk, facts, DOM)
    assert f.fix.summary == "fix vm1" and f.fix.auto is Auto.UNSAFE


def test_result_fix_overrides(facts):
    from virtdoctor.model import FixInfo

    chk = host_check(lambda facts: Fail("bad", fix=FixInfo("given", ("x",), Auto.MANUAL)))
    chk.fixer(lambda finding, facts: pytest.fail("fixer must not run when the result has a fix"))
    assert run_check(chk, facts)[0].fix.summary == "given"


def test_run_order_host_then_domains(facts):
    h = host_check(lambda facts: Pass(), "h1")
    u = host_check(lambda facts: Pass(), "u1", scope="uri")
    d1 = host_check(lambda facts, dom: Pass(), "d1", scope="domain")
    d2 = host_check(lambda facts, dom: Pass(), "d2", scope="domain")
    dom2 = domxml.parse_domain("<domain><name>vm2</name></domain>", "x", subject="domain:vm2")
    fs = run([d1, h, d2, u], facts, [DOM, dom2])
    assert [(f.id, f.subject) for f in fs] == [
        ("h1", "host"), ("u1", "uri:qemu:///system"),
        ("d1", "domain:vm1"), ("d2", "domain:vm1"), ("d1", "domain:vm2"), ("d2", "domain:vm2")]
    assert [f.id for f in run([d1, h], facts, [DOM], host=False)] == ["d1"]
    assert [f.id for f in run([d1, h], facts, [])] == ["h1"]


# -- select ----------------------------------------------------------------------

@pytest.fixture
def registry():
    a = host_check(lambda f: Pass(), "aa")
    b = host_check(lambda f: Pass(), "bb")
    c_host = host_check(lambda f: Pass(), "cc")
    c_dom = host_check(lambda f, d: Pass(), "cc", scope="domain")
    return {"aa": a, "bb": b, "cc": c_host, "cc@domain": c_dom}


def test_select_all_only_skip(registry):
    assert [c.slug for c in select(registry)] == ["aa", "bb", "cc", "cc"]
    assert [c.slug for c in select(registry, only=["bb"])] == ["bb"]
    assert [(c.slug, c.scope) for c in select(registry, only=["cc"])] == [("cc", "host"), ("cc", "domain")]
    assert [c.slug for c in select(registry, only=["aa,cc"], skip=["cc"])] == ["aa"]
    assert [c.slug for c in select(registry, skip=[" aa , bb "])] == ["cc", "cc"]


def test_select_unknown_slug_is_a_usage_error(registry):
    with pytest.raises(ToolError, match="unknown check slug: nope"):
        select(registry, only=["aa", "nope"])
    with pytest.raises(ToolError, match="unknown check slug: nope, zz"):
        select(registry, skip=["nope", "zz"])


def test_select_knowledge_only_slug(registry):
    # --skip accepts a catalogue slug no check implements; --only refuses it (nothing would run)
    assert len(select(registry, skip=["build-yajl-missing"], known_slugs=["build-yajl-missing"])) == 4
    with pytest.raises(ToolError):
        select(registry, only=["build-yajl-missing"], known_slugs=["build-yajl-missing"])


def test_a_plan_attached_by_the_check_is_the_findings_fix_and_is_kept(facts):
    p = plan("Start it", Auto.SAFE, RunCommand(["virsh", "net-start", "default"]))
    chk = check("planned-check", scope="host", area="test", title="t", plans=True)(
        lambda facts: Fail("broken", {"n": 1}, plan=p))
    assert chk.has_fixer
    [f] = run_check(chk, facts)
    assert f.plan is p
    assert f.fix.summary == "Start it" and f.fix.auto is Auto.SAFE
    assert f.fix.commands == ("virsh net-start default",)
    # a passing result never carries a plan into its finding
    chk2 = check("planned-pass", scope="host", area="test", title="t", plans=True)(
        lambda facts: Pass("fine", plan=p))
    [g] = run_check(chk2, facts)
    assert g.plan is None and g.fix is None
