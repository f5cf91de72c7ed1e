"""`virtdoctor check`: every host check, then every domain check on every
defined domain (or the ones named with --domain)."""
from __future__ import annotations

from virtdoctor.commands import _common
from virtdoctor.model import exit_status
from virtdoctor.render import json as jsonr
from virtdoctor.render.text import render_findings


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="check this host and its domains")
    _common.add_selection(p)
    p.set_defaults(run=run)


def run(args, ctx) -> int:
    checks = _common.selected_checks(ctx, args)
    facts = ctx.facts()
    domains = _common.defined_domains(facts, args.domain) if any(c.scope == "domain" for c in checks) else []
    findings = _common.run_checks(ctx, facts, checks, domains)
    if ctx.fmt == "json":
        jsonr.dump(jsonr.document("check", _common.target(ctx, facts), findings), ctx.out)
    else:
        render_findings(ctx.console, findings, verbose=ctx.verbose)
    return exit_status(findings)
