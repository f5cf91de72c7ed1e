"""`virtdoctor checks`: list every check of every plugin."""
from __future__ import annotations

import json

from rich.markup import escape


def add_parser(sub) -> None:
    p = sub.add_parser("checks", help="list the available checks")
    p.set_defaults(run=run)


def run(args, ctx) -> int:
    rows = [{"id": c.slug, "scope": c.scope, "area": c.area, "severity": c.severity.value, "title": c.title,
             "fix": ("auto" if c.has_fixer else "advice"), "plugin": c.plugin}
            for c in ctx.registry.values()]
    if ctx.fmt == "json":
        json.dump({"checks": rows}, ctx.out, indent=2)
        ctx.out.write("\n")
        return 0
    area = None
    for r in rows:
        if r["area"] != area:
            area = r["area"]
            ctx.console.print(f"\n[bold]{escape(area)}[/bold]")
        ctx.console.print(f"  {escape(r['id']):<32} {r['scope']:<6} {r['severity']:<7} {escape(r['title'])}"
                          + ("  [dim](fixable)[/dim]" if r["fix"] == "auto" else ""))
    ctx.console.print(f"\n{len(rows)} checks")
    return 0
