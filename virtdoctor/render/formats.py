"""The machine formats beyond text and JSON, all rendered from the JSON
document: junit and nagios for every report command, prometheus for `check`,
sarif for `preflight`. `emit` is the one call a command makes."""
from __future__ import annotations

from typing import Any

from virtdoctor.model import ToolError

EXTRA = ("junit", "nagios", "prometheus", "sarif")
ALL = ("text", "json") + EXTRA
ONLY_FOR = {"junit": ("check", "preflight"), "nagios": ("check", "preflight"),
            "prometheus": ("check",), "sarif": ("preflight",)}


def supported(fmt: str, command: str) -> None:
    """ToolError (status 3) when FMT does not apply to COMMAND."""
    allowed = ONLY_FOR.get(fmt)
    if allowed and command and command not in allowed:
        raise ToolError(f"usage: --format {fmt} is for {' and '.join(allowed)}, not {command}")


def emit(ctx, doc: dict[str, Any], code: int, *, checks=(), domains=()) -> None:
    fmt = ctx.fmt
    supported(fmt, doc.get("command", ""))
    if fmt == "junit":
        from virtdoctor.render import junit

        junit.render(doc, ctx.out)
    elif fmt == "nagios":
        from virtdoctor.render import nagios

        nagios.render(doc, ctx.out, code)
    elif fmt == "prometheus":
        from virtdoctor.render import prometheus

        ctx.out.write(prometheus.exposition(doc, code, [(c.slug, c.severity.value) for c in checks]))
    elif fmt == "sarif":
        from virtdoctor.commands._common import knowledge_lookup
        from virtdoctor.render import sarif

        sarif.render(doc, ctx.out, list(domains), list(checks), knowledge_lookup(ctx))
    else:
        raise ToolError(f"usage: unknown format {fmt}")


def on_tool_error(args, message: str, out, started: float | None, duration: float | None) -> None:
    """A run that ends with status 3: a Nagios plugin still prints its UNKNOWN
    line on stdout, and the textfile still says the run failed."""
    if getattr(args, "format", None) == "nagios":
        from virtdoctor.render import nagios

        nagios.unknown(message, out)
    path = getattr(args, "textfile", None)
    if path:
        from virtdoctor.render import prometheus

        try:
            prometheus.write_textfile(path, prometheus.exposition(None, 3, duration=duration, started=started))
        except ToolError:
            pass
