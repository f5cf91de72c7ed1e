"""The `@check` decorator: a check's metadata lives once, here, and is read by
`virtdoctor checks`, `--only/--skip`, the engine and the JSON output."""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from virtdoctor.model import NEEDS, Severity

SCOPES = ("host", "domain", "uri")

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclass(eq=False)
class Check:
    slug: str
    scope: str
    area: str
    severity: Severity
    title: str
    func: Callable[..., Any]
    needs: tuple[str, ...] = ()
    plans: bool = False  # the check attaches fix plans to its failures (Result.plan)
    fixer_func: Callable[..., Any] | None = None
    plugin: str = ""
    doc: str = field(default="")

    def __post_init__(self) -> None:
        if not SLUG_RE.match(self.slug):
            raise ValueError(f"check slug {self.slug!r} is not a slug (lower-case, digits, dashes)")
        if self.scope not in SCOPES:
            raise ValueError(f"check {self.slug}: scope must be one of {SCOPES}, not {self.scope!r}")
        bad = [n for n in self.needs if n not in NEEDS]
        if bad:
            raise ValueError(f"check {self.slug}: unknown needs {bad} (one of {', '.join(NEEDS)})")
        self.doc = inspect.cleandoc(self.func.__doc__ or "")

    def __call__(self, *args: Any) -> Any:
        return self.func(*args)

    def fixer(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: `func(finding, facts[, dom]) -> FixPlan | None` builds the fix plan."""
        self.fixer_func = func
        return func

    @property
    def has_fixer(self) -> bool:
        return self.fixer_func is not None or self.plans


def check(slug: str, *, scope: str, area: str, title: str, severity: str | Severity = "error",
          needs: tuple[str, ...] | list[str] = (), plans: bool = False) -> Callable[[Callable[..., Any]], Check]:
    """Declare a check. Host and uri checks are `func(facts)`, domain checks
    `func(facts, dom)`; they return one `Result` (Pass/Fail/Warn/Skip) or a list.
    `needs` names what the check cannot run without, from NEEDS ("files",
    "proc", "dev", "libvirt", "logs", "live", "root"): when the facts source
    cannot feed one the engine reports skip, with the reason, without calling it.
    `plans=True` says the check attaches its fix plan to each failure
    (`Fail(..., plan=plan(...))`), so `virtdoctor fix` can apply it."""

    def wrap(func: Callable[..., Any]) -> Check:
        return Check(slug=slug, scope=scope, area=area, severity=Severity(severity), title=title,
                     func=func, needs=tuple(needs), plans=plans, plugin=func.__module__)

    return wrap
