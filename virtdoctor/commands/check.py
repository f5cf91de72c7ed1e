"""`virtdoctor check`: every host check, then every domain check on every
defined domain (or the ones named with --domain)."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from virtdoctor.commands import _common
from virtdoctor.model import exit_status
from virtdoctor.render import formats
from virtdoctor.render import json as jsonr
from virtdoctor.render.text import render_findings


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="check this host and its domains")
    _common.add_selection(p)
    p.add_argument("--textfile", metavar="PATH",
                   help="also write the result for node_exporter's textfile collector to PATH "
                        "(e.g. /var/lib/prometheus/node-exporter/virtdoctor.prom), atomically, mode 0644")
    p.set_defaults(run=run)


def run(args, ctx) -> int:
    started = time.time()
    if ctx.fmt in formats.EXTRA:
        formats.supported(ctx.fmt, "check")
    if args.textfile or ctx.fmt == "prometheus":
        from virtdoctor.render import prometheus

        prometheus.require()  # missing prometheus_client: one line, status 3, before any work
    checks = _common.selected_checks(ctx, args)
    facts = ctx.facts()
    domains = _common.defined_domains(facts, args.domain) if any(c.scope == "domain" for c in checks) else []
    findings = _common.run_checks(ctx, facts, checks, domains)
    code = exit_status(findings)
    doc = None
    if ctx.fmt != "text" or args.textfile or ctx.run.output:
        doc = jsonr.document("check", _common.target(ctx, facts), findings)
    if doc is not None and ctx.fmt != "json":  # JSON: contract v2 adds these fields itself
        doc.setdefault("duration_s", round(time.time() - started, 3))
        doc.setdefault("started_at", datetime.fromtimestamp(started, timezone.utc).isoformat().replace("+00:00", "Z"))
    if ctx.fmt == "json":
        jsonr.dump(doc, ctx.out)
    elif ctx.fmt in formats.EXTRA:
        formats.emit(ctx, doc, code, checks=checks)
    else:
        render_findings(ctx.console, findings, verbose=ctx.verbose)
    if args.textfile:
        from virtdoctor.render import prometheus

        prometheus.write_textfile(args.textfile, prometheus.exposition(
            doc, code, [(c.slug, c.severity.value) for c in checks], duration=time.time() - started, started=started))
    return code
