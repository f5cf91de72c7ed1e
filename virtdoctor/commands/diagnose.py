"""`virtdoctor diagnose NAME [--start]`: why does this VM not start?

Gathers the domain's state and reason, persistent/autostart flags, the tail of
its QEMU log since the last start attempt, the daemon log lines that mention
it and, with --start, the libvirt error of one real start attempt. Every text
is matched against the knowledge base, and the domain's checks plus the host
checks run too. Causes are ranked: a message match confirmed by a failing
check first, then failing checks, then unconfirmed message matches.
"""
from __future__ import annotations

import re

from rich.markup import escape

from virtdoctor import domxml
from virtdoctor.commands import _common
from virtdoctor.model import FactUnavailable, Severity, Status, ToolError
from virtdoctor.render import json as jsonr
from virtdoctor.render.text import render_findings

QEMU_LOG_DIR = "/var/log/libvirt/qemu"
DAEMON_LOGS = ("/var/log/libvirt/libvirtd.log", "/var/log/libvirt/virtqemud.log")
START_MARK = re.compile(r"starting up libvirt version")
CONFIRMED, CHECK_ONLY = 1000, 500

DEBUG_ADVICE = [
    "Nothing known matched. To see what libvirt does, enable debug logs:",
    "  in /etc/libvirt/libvirtd.conf (or virtqemud.conf): log_filters=\"1:qemu 1:libvirt 3:object 3:json 3:event 1:util\"",
    "  and log_outputs=\"1:file:/var/log/libvirt/libvirtd.log\", then restart the daemon;",
    "  for a client: LIBVIRT_DEBUG=1 virsh start NAME 2>debug.log",
    "Look for the first 'error :' line and the QEMU command line in /var/log/libvirt/qemu/NAME.log.",
]


def add_parser(sub) -> None:
    p = sub.add_parser("diagnose", help="why does a domain not start: logs, a start attempt, ranked causes")
    p.add_argument("name", metavar="NAME", help="the domain's name")
    p.add_argument("--start", action="store_true", help="try to start it once and capture libvirt's error "
                   "(if it starts, it is left running)")
    p.add_argument("--lines", type=int, default=20, metavar="N", help="log lines to show (default 20)")
    p.set_defaults(run=run)


def qemu_log_since_start(facts, name: str) -> tuple[list[str], str | None]:
    """Lines of /var/log/libvirt/qemu/NAME.log since its last 'starting up' mark."""
    path = f"{QEMU_LOG_DIR}/{name}.log"
    try:
        text = facts.read_tail(path, 256 * 1024)
    except FactUnavailable as exc:
        return [], f"{exc} (run as root to read QEMU's logs)"
    if text is None:
        return [], f"{path} does not exist (the domain never started here, or logs go elsewhere)"
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if START_MARK.search(line)]
    return (lines[starts[-1]:] if starts else lines), None


def daemon_lines(facts, name: str, uuid: str | None, limit: int) -> tuple[list[str], list[str]]:
    """error/warning lines of the daemon log that mention the domain."""
    found: list[str] = []
    problems: list[str] = []
    keys = [k for k in (name, uuid) if k]
    for path in DAEMON_LOGS:
        try:
            text = facts.read_tail(path, 2 * 1024 * 1024)
        except FactUnavailable as exc:
            problems.append(str(exc))
            continue
        if text is None:
            continue
        for line in text.splitlines():
            if (": error :" in line or ": warning :" in line) and any(k in line for k in keys):
                found.append(line)
    return found[-limit:], problems


def _matches(kb, texts: list[tuple[str, str]]) -> dict[str, dict]:
    """slug -> best message match over (source, text) pairs."""
    best: dict[str, dict] = {}
    for source, text in texts:
        if not text:
            continue
        for m in kb.match(text):
            cur = best.get(m.id)
            if cur is None or m.score > cur["score"]:
                best[m.id] = {"score": m.score, "source": source, "line": m.line, "match": m}
    return best


def rank(kb, matches: dict[str, dict], findings) -> list[dict]:
    failing: dict[str, list] = {}
    for f in findings:
        if f.status is Status.FAIL:
            failing.setdefault(f.id, []).append(f)
    causes = []
    # a failing check alone is a cause only at error severity: a warning (say
    # disk-cache-unsafe) does not stop a domain from starting
    blocking = {slug for slug, fs in failing.items() if any(f.severity is Severity.ERROR for f in fs)}
    for slug in set(matches) | blocking:
        m = matches.get(slug)
        fs = failing.get(slug, [])
        entry = kb.get(slug) if kb is not None else None
        score = 0.0
        evidence: dict = {}
        if m:
            score += m["score"]
            evidence["message"] = {"source": m["source"], "line": m["line"]}
        if fs:
            sev_bonus = 50 if any(f.severity is Severity.ERROR for f in fs) else 0
            score += (CONFIRMED if m else CHECK_ONLY) + sev_bonus
            evidence["checks"] = [{"subject": f.subject, "message": f.message} for f in fs]
        fix = next((f.fix.to_dict() for f in fs if f.fix), None)
        if fix is None and entry is not None:
            fix = {"summary": entry.fix, "commands": list(entry.commands), "auto": "manual"}
        title = (entry.title if entry is not None else None) or (fs[0].title if fs else slug)
        causes.append({"id": slug, "score": round(score, 2), "title": title, "evidence": evidence, "fix": fix,
                       "confirmed": bool(m and fs)})
    causes.sort(key=lambda c: (-c["score"], c["id"]))
    return causes


def run(args, ctx) -> int:
    facts = ctx.facts()
    name = args.name
    try:
        kb = ctx.knowledge
    except ToolError:
        raise
    except Exception:
        kb = None
    checks = list(ctx.registry.values())
    host_checks = [c for c in checks if c.scope in ("host", "uri")]
    dom_checks = [c for c in checks if c.scope == "domain"]
    info = None
    reach_error = None
    try:
        info = facts.libvirt.domain(name)
    except FactUnavailable as exc:
        reach_error = str(exc)
    if info is None and reach_error is None:
        raise ToolError(f"no domain named {name!r} on {facts.resolved_uri} (see 'virsh list --all')")

    report: dict = {"domain": {"name": name}}
    texts: list[tuple[str, str]] = []
    if reach_error:
        report["domain"]["error"] = reach_error
        texts.append(("connection", reach_error))
    if info is not None:
        report["domain"].update({"state": info.state_name, "reason": info.reason_name,
                                 "persistent": info.persistent, "autostart": info.autostart,
                                 "uuid": info.uuid, "id": info.id if info.active else None})
    start = None
    if args.start and info is not None:
        if info.active:
            start = {"attempted": False, "started": True, "error": "already running"}
        else:
            from virtdoctor.facts.libvirt import start_domain

            try:
                ok, err = start_domain(facts.resolved_uri, name, timeout=max(60.0, facts.timeout))
            except FactUnavailable as exc:
                ok, err = False, str(exc)
            start = {"attempted": True, "started": ok, "error": err}
            if err and not ok:
                texts.insert(0, ("start", err))
        report["start"] = start
    qemu_lines, qemu_problem = qemu_log_since_start(facts, name)
    dmn_lines, dmn_problems = daemon_lines(facts, name, info.uuid if info else None, args.lines)
    report["logs"] = {"qemu": qemu_lines[-args.lines:], "daemon": dmn_lines,
                      "problems": [p for p in [qemu_problem, *dmn_problems] if p]}
    texts.append(("qemu log", "\n".join(qemu_lines)))
    texts.append(("daemon log", "\n".join(dmn_lines)))

    domains = []
    if info is not None:
        fresh = ctx.facts() if start and start.get("attempted") else facts
        try:
            domains = [domxml.from_info(fresh.libvirt.domain(name) or info)]
        except ToolError:
            domains = []
        facts = fresh
    findings = _common.run_checks(ctx, facts, host_checks + dom_checks, domains)
    relevant = [f for f in findings if f.subject in ("host", f"domain:{name}") or f.subject.startswith("uri:")]
    matches = _matches(kb, texts) if kb is not None else {}
    causes = rank(kb, matches, relevant)
    fixable = {c.slug for c in checks if c.fixer_func is not None}
    for c in causes:
        if c["id"] in fixable and c["fix"] and c["fix"].get("auto") in ("safe", "unsafe"):
            c["fix"]["command"] = f"virtdoctor fix --only {c['id']} --domain {name}" + \
                (" --unsafe" if c["fix"]["auto"] == "unsafe" else "")

    if ctx.fmt == "json":
        doc = jsonr.document("diagnose", {**_common.target(ctx, facts), "domain": name}, relevant,
                             causes=causes, **report)
        jsonr.dump(doc, ctx.out)
    else:
        _render(ctx, name, report, causes, relevant)
    if start and start.get("started"):
        return 0 if not any(c["confirmed"] for c in causes) else 1
    if any(c["score"] >= CHECK_ONLY and any(f.severity is Severity.ERROR for f in relevant
                                            if f.id == c["id"] and f.status is Status.FAIL) for c in causes):
        return 2
    return 1 if causes else 0


def _render(ctx, name, report, causes, findings) -> None:
    con = ctx.console
    d = report["domain"]
    con.print(f"[bold]Domain {escape(name)}[/bold]")
    if "state" in d:
        flags = ", ".join(x for x in ("persistent" if d["persistent"] else "transient",
                                      "autostart" if d["autostart"] else "") if x)
        con.print(f"  state: {d['state']} ({d['reason']}); {flags}")
    if d.get("error"):
        con.print(f"  [red]libvirt not reachable:[/red] {escape(d['error'])}")
    st = report.get("start")
    if st:
        if st["started"]:
            con.print("  [green]start: it started[/green]" + (" (already running)" if not st["attempted"] else
                                                              "; left running"))
        else:
            con.print(f"  [red]start failed:[/red] {escape(st['error'])}")
    logs = report["logs"]
    if logs["qemu"]:
        con.print(f"\n[bold]QEMU log since the last start[/bold] ({QEMU_LOG_DIR}/{escape(name)}.log)")
        for line in logs["qemu"]:
            con.print(f"  [dim]{escape(line)}[/dim]")
    if logs["daemon"]:
        con.print("\n[bold]Daemon log lines about it[/bold]")
        for line in logs["daemon"]:
            con.print(f"  [dim]{escape(line)}[/dim]")
    for p in logs["problems"]:
        con.print(f"  [dim]note: {escape(p)}[/dim]")
    con.print("\n[bold]Likely causes[/bold]" if causes else "\n[bold]No known cause found[/bold]")
    for i, c in enumerate(causes, 1):
        tag = "confirmed" if c["confirmed"] else ("check fails" if "checks" in c["evidence"] else "message")
        con.print(f" {i}. {escape(c['id'])}: {escape(c['title'])} [dim]({tag}, score {c['score']})[/dim]")
        msg = c["evidence"].get("message")
        if msg:
            con.print(f"    seen in {msg['source']}: {escape(msg['line'] or '')}")
        for chk in c["evidence"].get("checks", []):
            con.print(f"    check: {escape(chk['message'])}")
        if c["fix"]:
            con.print(f"    fix: {escape(c['fix']['summary'])}")
            for cmd in c["fix"].get("commands", []):
                con.print(f"      $ {escape(cmd)}")
            if c["fix"].get("command"):
                con.print(f"      or: {escape(c['fix']['command'])}")
    if not causes:
        for line in DEBUG_ADVICE:
            con.print(escape(line.replace("NAME", name)))
    failing = [f for f in findings if f.status is Status.FAIL and f.id not in {c["id"] for c in causes}]
    if failing:
        render_findings(con, failing, title="Other failing checks", fix_hint=False)
