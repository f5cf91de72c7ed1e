"""Small helpers several check modules share (exported by virtdoctor.api)."""
from __future__ import annotations

from typing import Any, Callable

from virtdoctor.facts.uri import parse_uri
from virtdoctor.model import Fail, Pass, Result, Status


def each_domain(facts, func: Callable[[Any, Any], Result], what: str) -> Result:
    """A host/uri twin of a domain check: `func` over every defined domain; one
    failure naming the failing domains, with the first one's severity and plan."""
    failing = []
    for dom in facts.domains:
        r = func(facts, dom)
        if r.status is Status.FAIL:
            failing.append((dom.name, r))
    if not failing:
        return Pass(f"no defined domain {what}")
    name, first = failing[0]
    more = f" (also: {', '.join(n for n, _ in failing[1:])})" if failing[1:] else ""
    return Fail(f"domain {name}: {first.message}{more}", {"domains": [n for n, _ in failing]},
                severity=first.severity, plan=first.plan)


def is_session(facts) -> bool:
    """True when the run's URI is a per-user session URI (qemu:///session);
    False offline or when the URI cannot be resolved."""
    if facts.offline:
        return False
    try:
        return parse_uri(facts.resolved_uri).path == "/session"
    except Exception:
        return False
