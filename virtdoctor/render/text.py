"""Text report with rich: grouped by area, one line per check, the cause and
the exact fix command under each failure, a summary line. It formats; it never
decides. No colour when the output is not a terminal or NO_COLOR is set."""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import TextIO

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from virtdoctor.model import Finding, Severity, Status, summarize

MARK = {
    (Status.PASS, None): ("ok", "green"),
    (Status.FAIL, Severity.ERROR): ("FAIL", "bold red"),
    (Status.FAIL, Severity.WARNING): ("WARN", "yellow"),
    (Status.FAIL, Severity.INFO): ("NOTE", "cyan"),
    (Status.SKIP, None): ("skip", "dim"),
    (Status.ERROR, None): ("ERROR", "magenta"),
}


def make_console(out: TextIO) -> Console:
    color = "NO_COLOR" not in os.environ and hasattr(out, "isatty") and out.isatty()
    return Console(file=out, no_color=not color, force_terminal=color or None, color_system="auto" if color else None,
                   highlight=False, soft_wrap=True, emoji=False, width=None if color else 100)


def mark(f: Finding) -> tuple[str, str]:
    key = (f.status, f.severity if f.status is Status.FAIL else None)
    return MARK.get(key, (f.status.value, ""))


def hanging(console: Console, prefix: str, indent: int, body: str) -> None:
    """Print `prefix` + `body` (both rich markup). On a terminal the body wraps at the
    terminal's width with a hanging indent of `indent` columns, at spaces (never mid-word);
    elsewhere the line is printed whole, as before (scripts and files see one line)."""
    if not console.is_terminal:
        console.print(prefix + body)
        return
    width = max(console.width - indent, 20)
    lines = Text.from_markup(body).wrap(console, width, overflow="fold")
    for i, line in enumerate(lines):
        line.rstrip()
        console.print(Text.from_markup(prefix) + line if i == 0 else Text(" " * indent) + line,
                      soft_wrap=True)


def render_findings(console: Console, findings: list[Finding], *, verbose: int = 0, title: str | None = None,
                    fix_hint: bool | str = True) -> None:
    if title:
        console.print(f"[bold]{escape(title)}[/bold]")
    groups: OrderedDict[str, list[Finding]] = OrderedDict()
    for f in findings:
        groups.setdefault(f.area or "other", []).append(f)
    for area, items in groups.items():
        shown = [f for f in items if verbose or f.status is not Status.PASS]
        passed = len(items) - len(shown)
        console.print()
        head = f"[bold]{escape(area)}[/bold]"
        if passed and not verbose:
            head += f" [dim]({passed} passed)[/dim]"
        console.print(head)
        for f in shown:
            word, style = mark(f)
            subject = "" if f.subject == "host" else f" [dim]{escape(f.subject)}[/dim]"
            hanging(console, f"  [{style}]{word:<5}[/{style}] ", 8,
                    f"{escape(f.id)}{subject}: {escape(f.message or f.title)}")
            if f.status is Status.FAIL and f.fix:
                hanging(console, "        fix: ", 13, escape(f.fix.summary)
                        + (f" [dim]({f.fix.auto.value})[/dim]" if f.fix.auto.value != "manual" else ""))
                for cmd in f.fix.commands:
                    console.print(f"          $ {escape(cmd)}")
            if verbose > 1 and f.evidence:
                for k, v in f.evidence.items():
                    console.print(f"        [dim]{escape(str(k))}: {escape(str(v))}[/dim]")
    counts = summarize(findings)
    console.print()
    failed = [f for f in findings if f.status is Status.FAIL]
    errors = sum(1 for f in failed if f.severity is Severity.ERROR)
    line = (f"{counts['pass']} ok, {errors} errors, {len(failed) - errors} warnings, "
            f"{counts['skip']} skipped")
    if counts["error"]:
        line += f", {counts['error']} checks crashed"
    console.print(line)
    if fix_hint and any(f.fix and f.fix.auto.value != "manual" for f in failed):
        hint = fix_hint if isinstance(fix_hint, str) else \
            "Run 'virtdoctor fix' to see the fix plans; 'virtdoctor fix --yes' applies the safe ones."
        console.print(f"[dim]{escape(hint)}[/dim]")
