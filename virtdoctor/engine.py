"""Runs checks and turns their results into findings.

The engine adds what a check does not say itself: slug, subject, title,
severity, and the fix object (from the check's fixer when it has one, else from
the knowledge entry). A check that raises becomes one `error` finding and the
run goes on; a missing fact (`FactUnavailable`) or a missing prerequisite
(`needs`) becomes `skip` with the reason.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

from virtdoctor.checkdef import Check
from virtdoctor.model import Auto, FactUnavailable, Finding, FixInfo, Result, Severity, Status, ToolError

KnowledgeLookup = Callable[[str], Any]  # slug -> knowledge Entry | None


def select(registry: dict[str, Check], only: Iterable[str] = (), skip: Iterable[str] = (),
           known_slugs: Iterable[str] = ()) -> list[Check]:
    """The checks to run, in registry order. Unknown slugs are a usage error
    (a slug the knowledge base knows but no check implements is accepted by
    --skip, refused by --only since nothing would run)."""
    only, skip = split_slugs(only), split_slugs(skip)
    slugs = {c.slug for c in registry.values()}
    unknown = [s for s in only if s not in slugs] + [s for s in skip if s not in slugs and s not in set(known_slugs)]
    if unknown:
        raise ToolError(f"unknown check slug: {', '.join(unknown)} (see 'virtdoctor checks')")
    return [c for c in registry.values() if (not only or c.slug in only) and c.slug not in skip]


def split_slugs(values: Iterable[str]) -> list[str]:
    out = []
    for v in values or ():
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return out


def _unmet_need(chk: Check, facts) -> str | None:
    """Why the facts source cannot feed one of the check's `needs` (the
    facts object answers: `facts.unfed(need)`), None when it can."""
    for need in chk.needs:
        why = facts.unfed(need)
        if why:
            return why
    return None


def run_check(chk: Check, facts, dom=None, knowledge: KnowledgeLookup | None = None) -> list[Finding]:
    subject = dom.subject if dom is not None else ("host" if chk.scope == "host" else f"uri:{_uri(facts)}")
    unmet = _unmet_need(chk, facts)
    if unmet:
        return [_finding(chk, Result(Status.SKIP, unmet), subject, facts, dom, knowledge)]
    try:
        out = chk(facts, dom) if chk.scope == "domain" else chk(facts)
        results = [out] if isinstance(out, Result) else list(out or ())
        if not results:
            results = [Result(Status.PASS)]
        for r in results:
            if not isinstance(r, Result):
                raise TypeError(f"returned {type(r).__name__}, not a Result")
    except FactUnavailable as exc:
        results = [Result(Status.SKIP, str(exc))]
    except Exception as exc:  # isolate: one broken check never stops the run
        line = str(exc).splitlines()[0] if str(exc) else ""
        results = [Result(Status.ERROR, f"check crashed: {type(exc).__name__}: {line}".rstrip(": "))]
    return [_finding(chk, r, r.subject or subject, facts, dom, knowledge) for r in results]


def _uri(facts) -> str:
    try:
        return facts.resolved_uri
    except Exception:
        return facts.uri or "?"


def _finding(chk: Check, r: Result, subject: str, facts, dom, knowledge) -> Finding:
    severity = r.severity or (Severity.INFO if r.status is Status.SKIP else chk.severity)
    if r.status is Status.ERROR:
        severity = Severity.WARNING
    fix = r.fix
    plan = r.plan if r.status is Status.FAIL else None
    if plan is None and fix is None and r.status is Status.FAIL and chk.fixer_func is not None:
        plan = _fixer_plan(chk, r, subject, facts, dom)  # built once: `fix` applies this very plan
    if fix is None and plan is not None:
        fix = FixInfo(plan.summary, tuple(plan.commands), plan.auto)
    if fix is None and r.status is Status.FAIL:
        fix = fix_info(chk, r, subject, facts, dom, knowledge)
    return Finding(id=chk.slug, status=r.status, severity=severity, subject=subject, title=chk.title,
                   message=r.message or _default_message(r.status, chk), evidence=dict(r.evidence),
                   fix=fix, area=chk.area, plan=plan, key=r.key)


def _default_message(status: Status, chk: Check) -> str:
    return {Status.PASS: "ok", Status.FAIL: chk.title, Status.SKIP: "skipped",
            Status.ERROR: "check crashed"}[status]


def _fixer_plan(chk: Check, r: Result, subject: str, facts, dom):
    """The plan of a third-party `@fixer` (built-in checks attach theirs to the
    failure), None when it has none or cannot make one."""
    try:
        draft = Finding(chk.slug, r.status, r.severity or chk.severity, subject, chk.title,
                        r.message, dict(r.evidence), None, chk.area)
        return chk.fixer_func(draft, facts, dom) if chk.scope == "domain" else chk.fixer_func(draft, facts)
    except Exception:
        return None


def fix_info(chk: Check, r: Result, subject: str, facts, dom, knowledge) -> FixInfo | None:
    """The finding's fix when no plan exists: the knowledge entry's advice."""
    entry = knowledge(chk.slug) if knowledge else None
    if entry is not None:
        # no fixer here: whatever the catalogue says, virtdoctor cannot apply it
        return FixInfo(entry.fix, tuple(entry.commands), Auto.MANUAL)
    return None


def run(checks: list[Check], facts, domains: Iterable = (), knowledge: KnowledgeLookup | None = None,
        host: bool = True) -> list[Finding]:
    """Host and uri checks (when `host`), then every domain check on every domain."""
    findings: list[Finding] = []
    if host:
        for chk in checks:
            if chk.scope in ("host", "uri"):
                findings.extend(run_check(chk, facts, None, knowledge))
    domain_checks = [c for c in checks if c.scope == "domain"]
    if domain_checks:
        for dom in domains:
            for chk in domain_checks:
                findings.extend(run_check(chk, facts, dom, knowledge))
    return findings
