"""The data every part of virtdoctor exchanges: statuses, findings, fix plans.

`Finding` is the JSON contract of DESIGN.md field for field; the JSON renderer is
little more than `Finding.to_dict()`. Checks never build findings themselves: they
return `Result`s (Pass/Fail/Warn/Skip) and the engine adds slug, subject, title
and severity from the check's metadata.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


# what a check may declare it needs (`@check(needs=...)`): files below the root, processes,
# device nodes, a libvirt connection, logs, the live machine itself, root privileges. The
# engine skips, with the reason, a check whose needs the facts source cannot feed
# (`facts.unfed(need)`): a --root has no live processes, a sosreport no device nodes...
NEEDS = ("files", "proc", "dev", "libvirt", "logs", "live", "root", "libvirt-installed")


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


class Severity(str, enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Auto(str, enum.Enum):
    """Whether `virtdoctor fix` may apply a fix: safe (with --yes), unsafe (needs
    --unsafe too: guest-visible change) or manual (advice only)."""

    SAFE = "safe"
    UNSAFE = "unsafe"
    MANUAL = "manual"


class FactUnavailable(Exception):
    """Raised by a fact that cannot be had (no daemon, --offline, not root...).
    The engine turns it into a `skip` finding carrying the message as reason."""


class ToolError(Exception):
    """The tool cannot do its job (usage error, unusable input): exit status 3."""


@dataclass(frozen=True)
class FixInfo:
    """The `fix` object of a finding: what to do, as words and commands."""

    summary: str
    commands: tuple[str, ...] = ()
    auto: Auto = Auto.MANUAL

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "commands": list(self.commands), "auto": self.auto.value}


@dataclass(frozen=True)
class Result:
    """What a check returns. `subject` overrides the engine's default subject
    (e.g. a host check reporting on `uri:...`); `severity` overrides the check's
    default (a check may fail as a mere warning in some cases)."""

    status: Status
    message: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    severity: Severity | None = None
    subject: str | None = None
    fix: FixInfo | None = None
    key: str | None = None  # distinguishes several results of one check (e.g. a network name)
    # the fix plan (virtdoctor.remedy.FixPlan), built by the check itself when it fails:
    # the engine turns it into the finding's `fix` and `virtdoctor fix` applies it as is
    plan: Any = None


def Pass(message: str = "", evidence: dict | None = None, **kw: Any) -> Result:
    return Result(Status.PASS, message, evidence or {}, **kw)


def Fail(message: str, evidence: dict | None = None, **kw: Any) -> Result:
    return Result(Status.FAIL, message, evidence or {}, **kw)


def Warn(message: str, evidence: dict | None = None, **kw: Any) -> Result:
    """A failure of warning severity."""
    kw.setdefault("severity", Severity.WARNING)
    return Result(Status.FAIL, message, evidence or {}, **kw)


def Skip(reason: str, evidence: dict | None = None, **kw: Any) -> Result:
    return Result(Status.SKIP, reason, evidence or {}, **kw)


@dataclass(frozen=True)
class Finding:
    id: str
    status: Status
    severity: Severity
    subject: str
    title: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    fix: FixInfo | None = None
    area: str = ""  # not part of the JSON contract: the report's grouping
    plan: Any = field(default=None, compare=False, repr=False)  # FixPlan attached by the check
    key: str | None = field(default=None, compare=False, repr=False)  # Result.key: which of a check's results

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "severity": self.severity.value,
            "subject": self.subject,
            "title": self.title,
            "message": self.message,
            "evidence": _jsonable(self.evidence),
            "fix": self.fix.to_dict() if self.fix else None,
        }

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def summarize(findings: list[Finding]) -> dict[str, int]:
    counts = {s.value: 0 for s in (Status.PASS, Status.FAIL, Status.SKIP, Status.ERROR)}
    for f in findings:
        counts[f.status.value] += 1
    return counts


def exit_status(findings: list[Finding]) -> int:
    """0 no failure, 1 only warning/info failures, 2 an error failed (DESIGN.md).
    A check that crashed (status error) proves nothing about the host, but the
    report is incomplete: it counts like a warning."""
    failed = [f for f in findings if f.status is Status.FAIL]
    if any(f.severity is Severity.ERROR for f in failed):
        return 2
    if failed or any(f.status is Status.ERROR for f in findings):
        return 1
    return 0


def with_plan(results: list[Result], plan: Any) -> list[Result]:
    """`results` with `plan` attached to each failure (a check whose failures share one fix)."""
    import dataclasses

    return [dataclasses.replace(r, plan=plan) if r.status is Status.FAIL else r for r in results]


def planner(func):
    """Decorator for a check's plan builder: a missing fact (FactUnavailable) means no
    plan (the failure is still reported, with the knowledge entry's advice)."""
    import functools

    @functools.wraps(func)
    def build(*args: Any, **kw: Any) -> Any:
        try:
            return func(*args, **kw)
        except FactUnavailable:
            return None

    return build
