"""`virtdoctor diagnose NAME [--start]`: why does this VM not start?

Gathers the domain's state and reason, persistent/autostart flags, the tail of
its QEMU log since the last start attempt, the daemon log records that mention
it (or, with --start, that were written during the attempt) and, with --start,
the libvirt error of one real start attempt. Every text is matched against the
knowledge base, and the domain's checks plus the host checks run too.

Causes are ranked in tiers (`rank`):

1. confirmed: a message about this domain names the slug and its check fails;
2. the error itself: the start attempt's error, the connection error or the
   QEMU log of the latest start names the slug (no check confirms it: the check
   may not exist, skip, or miss this case);
3. a failing check that a daemon record written during the start attempt agrees
   with (such records may be other domains' errors);
4. a failing error-severity check on the domain;
5. a failing error-severity check on the host (or the URI);
6. hints: a slug named only by the daemon log or by the QEMU log of an earlier
   start attempt.

Within a tier the knowledge base's match score decides. When libvirt cannot be
reached, the host checks still run (daemon-socket-missing then comes first)
and the domain's persistent XML is read from /etc/libvirt/qemu/NAME.xml when
it is there.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from rich.markup import escape

from virtdoctor import domxml
from virtdoctor.commands import _common
# the log readers live in the facts layer (one daemon-log regex for the whole program)
from virtdoctor.facts.logs import (DAEMON_CONFS, DAEMON_LINE, DAEMON_LOG_BYTES, DAEMON_LOGS,  # noqa: F401
                                   QEMU_LOG_BYTES, QEMU_LOG_DIR, START_MARK, START_SLACK, QemuLog,
                                   daemon_log_paths, daemon_records, log_time as _log_time,
                                   qemu_log_since_start)
from virtdoctor.model import FactUnavailable, Finding, Severity, Status, ToolError, exit_status
from virtdoctor.render import json as jsonr
from virtdoctor.render.text import render_findings

QEMU_CONF_DIR = "/etc/libvirt/qemu"

# ranking tiers (a cause's score is its tier plus at most 100 from the message match)
CONFIRMED, ERROR_TEXT, LOG_AND_CHECK, DOMAIN_CHECK, HOST_CHECK, HINT = 3000, 2000, 1500, 1000, 500, 0
TIER_NAMES = {CONFIRMED: "confirmed", ERROR_TEXT: "error message", LOG_AND_CHECK: "check fails, log agrees",
              DOMAIN_CHECK: "domain check fails", HOST_CHECK: "host check fails", HINT: "hint"}
# How close a text is to this domain's failure: "direct" is the failure itself (the start
# error, the connection error, QEMU's log of the latest start); "about" names the domain but
# may be older (daemon records naming it, QEMU's log of an earlier start); "window" is only
# contemporary (daemon records written during the start attempt: other domains' errors too).
SOURCE_KIND = {"start": "direct", "connection": "direct", "qemu log": "direct",
               "qemu log, earlier start": "about", "daemon log": "about",
               "daemon log, during the start": "window"}
KIND_ORDER = {"direct": 2, "about": 1, "window": 0}
KIND_WEIGHT = {"direct": 100, "about": 50, "window": 25}

DEBUG_ADVICE = [
    "Nothing known matched. To see what libvirt does, enable debug logs:",
    "  in /etc/libvirt/libvirtd.conf (virtqemud.conf with modular daemons):",
    '    log_filters="1:qemu 1:libvirt 3:object 3:json 3:event 1:util"',
    '    log_outputs="1:file:/var/log/libvirt/libvirtd.log"',
    "  then restart the daemon; for a client: LIBVIRT_DEBUG=1 virsh start NAME 2>debug.log",
    "Look for the first ' error : ' line, and for QEMU's own last lines and its command line in",
    "/var/log/libvirt/qemu/NAME.log; 'virtdoctor explain --log FILE' maps a log to known causes.",
]


def add_parser(sub) -> None:
    p = sub.add_parser("diagnose", help="why does a domain not start: logs, a start attempt, ranked causes")
    p.add_argument("name", metavar="NAME", help="the domain's name")
    p.add_argument("--start", action="store_true", help="try to start it once and capture libvirt's error "
                   "(if it starts, it is left running)")
    p.add_argument("--lines", type=int, default=20, metavar="N", help="log lines to show (default 20)")
    p.set_defaults(run=run)


# --------------------------------------------------------------------------- logs

# --------------------------------------------------------------------------- ranking

def message_matches(kb, texts: list[tuple[str, str]]) -> dict[str, dict]:
    """slug -> its best message match over (source, text) pairs: the closest source kind
    (SOURCE_KIND: direct, then about, then window) wins, then the higher score."""
    best: dict[str, dict] = {}
    for source, text in texts:
        if not text or kb is None:
            continue
        kind = SOURCE_KIND.get(source, "window")
        for m in kb.match(text):
            cur = best.get(m.id)
            if cur is None or (KIND_ORDER[kind], m.score) > (KIND_ORDER[cur["kind"]], cur["score"]):
                best[m.id] = {"score": m.score, "source": source, "line": m.line, "kind": kind,
                              "direct": kind == "direct"}
    return best


def rank(kb, matches: dict[str, dict], findings: list[Finding], name: str) -> list[dict]:
    """Causes, most likely first (see the module docstring for the tiers)."""
    failing: dict[str, list[Finding]] = {}
    passing: dict[str, list[Finding]] = {}
    for f in findings:
        if f.status is Status.FAIL:
            failing.setdefault(f.id, []).append(f)
        elif f.status is Status.PASS:
            passing.setdefault(f.id, []).append(f)
    dom_subject = f"domain:{name}"
    # a failing check alone is a cause only at error severity: a warning (say
    # disk-cache-unsafe) does not stop a domain from starting
    blocking = {slug for slug, fs in failing.items() if any(f.severity is Severity.ERROR for f in fs)}
    causes = []
    for slug in set(matches) | blocking:
        m = matches.get(slug)
        fs = failing.get(slug, [])
        errors = [f for f in fs if f.severity is Severity.ERROR]
        entry = kb.get(slug) if kb is not None else None
        evidence: dict = {}
        if m:
            evidence["message"] = {"source": m["source"], "line": m["line"]}
        if fs:
            evidence["checks"] = [{"subject": f.subject, "status": f.status.value, "message": f.message}
                                  for f in fs]
        elif m and slug in passing:
            evidence["checks_pass"] = [{"subject": f.subject, "message": f.message} for f in passing[slug]]
        if m and fs and m["kind"] != "window":
            tier = CONFIRMED
        elif m and m["direct"]:
            tier = ERROR_TEXT
        elif m and fs:
            tier = LOG_AND_CHECK
        elif errors and any(f.subject == dom_subject for f in errors):
            tier = DOMAIN_CHECK
        elif errors:
            tier = HOST_CHECK
        else:
            tier = HINT
        score = tier + (round(KIND_WEIGHT[m["kind"]] * m["score"], 1) if m else 0) + (10 if errors else 0)
        # the fix of the most telling failing finding: error severity, then the domain's own
        ordered = sorted(fs, key=lambda f: (f.severity is not Severity.ERROR, f.subject != dom_subject))
        with_fix = next((f for f in ordered if f.fix), None)
        fix = with_fix.fix.to_dict() if with_fix else None
        if fix is None and entry is not None:
            fix = {"summary": entry.fix, "commands": list(entry.commands), "auto": "manual"}
        title = (entry.title if entry is not None else None) or (fs[0].title if fs else slug)
        causes.append({"id": slug, "score": score, "title": title, "evidence": evidence, "fix": fix,
                       "confirmed": tier == CONFIRMED, "tier": TIER_NAMES[tier],
                       "_fix_subject": with_fix.subject if with_fix else None})
    causes.sort(key=lambda c: (-c["score"], c["id"]))
    return causes


def add_fix_commands(causes: list[dict], registry, name: str, domain_known: bool) -> None:
    """`virtdoctor fix --only SLUG [--domain NAME] [--unsafe]` on causes whose fix comes from a
    failing check that has a fixer virtdoctor may apply (safe or unsafe)."""
    fixable = {(c.slug, c.scope == "domain") for c in registry.values() if c.has_fixer}
    for c in causes:
        subject = c.pop("_fix_subject", None)
        fix = c["fix"]
        if subject is None or not fix or fix.get("auto") not in ("safe", "unsafe"):
            continue
        on_domain = subject == f"domain:{name}"
        if (c["id"], on_domain) not in fixable:
            continue
        cmd = f"virtdoctor fix --only {c['id']}"
        if on_domain and domain_known:
            cmd += f" --domain {name}"
        if fix["auto"] == "unsafe":
            cmd += " --unsafe"
        fix["command"] = cmd


# --------------------------------------------------------------------------- the command

def tail_records(lines: list[str], n: int) -> list[str]:
    """The last `n` lines of daemon records, widened back to the start of the first record
    cut (its header line), so that no continuation line is shown without its record."""
    if n <= 0:
        return []
    start = max(0, len(lines) - n)
    while start > 0 and not DAEMON_LINE.match(lines[start]):
        start -= 1
    return lines[start:]


def _offline_xml(facts, name: str) -> tuple[domxml.Domain | None, str | None]:
    """The persistent config libvirt keeps in /etc/libvirt/qemu/NAME.xml, for when the
    daemon cannot be asked: (Domain or None, note)."""
    path = f"{QEMU_CONF_DIR}/{name}.xml"
    try:
        text = facts.read_text(path)
    except FactUnavailable as exc:
        return None, str(exc)
    if text is None:
        return None, f"{path} does not exist: cannot tell whether {name} is defined"
    try:
        return domxml.parse_domain(text, path, subject=f"domain:{name}"), f"domain XML read from {path}"
    except ToolError as exc:
        return None, f"{path}: {exc}"


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass
class Gathered:
    """What diagnose collected before deciding anything."""

    name: str
    facts: object
    info: object = None  # the libvirt domain info, None when unknown or unreachable
    reach_error: str | None = None
    domain: dict = field(default_factory=dict)  # the "domain" object of the report
    start: dict | None = None
    logs: dict = field(default_factory=dict)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (source, text) to match
    findings: list[Finding] = field(default_factory=list)


@dataclass
class DiagnoseReport:
    """The decision: ranked causes and the exit status, with what they were decided from."""

    name: str
    target: dict
    domain: dict
    start: dict | None
    logs: dict
    causes: list[dict]
    findings: list[Finding]
    status: int

    def extra(self) -> dict:
        """The command's own keys of the JSON document (after summary and findings)."""
        out: dict = {"causes": self.causes, "domain": self.domain}
        if self.start is not None:
            out["start"] = self.start
        out["logs"] = self.logs
        if not self.causes:
            out["advice"] = [line.replace("NAME", self.name) for line in DEBUG_ADVICE]
        return out


def run(args, ctx) -> int:
    if args.lines < 0:
        raise ToolError("usage: --lines must be 0 or more")
    kb = _knowledge_or_none(ctx)
    gathered = gather(ctx, args.name, start=args.start, lines=args.lines)
    report = decide(ctx, kb, gathered)
    doc = jsonr.document("diagnose", report.target, report.findings, **report.extra())
    if ctx.fmt == "json":
        jsonr.dump(doc, ctx.out)
    else:
        _render(ctx, report.name, {"domain": report.domain, "start": report.start, "logs": report.logs},
                report.causes, report.findings)
    return report.status


def _knowledge_or_none(ctx):
    try:
        return ctx.knowledge
    except ToolError:
        raise
    except Exception:  # the knowledge module is missing or broken: rank by checks alone
        return None


def gather(ctx, name: str, *, start: bool = False, lines: int = 20) -> Gathered:
    """The domain's state, one start attempt (with `start`), its logs and the checks."""
    facts = ctx.facts()
    g = Gathered(name=name, facts=facts, domain={"name": name})
    try:
        g.info = facts.libvirt.domain(name)
    except FactUnavailable as exc:
        g.reach_error = str(exc)
    if g.info is None and g.reach_error is None:
        raise ToolError(f"no domain named {name!r} on {facts.resolved_uri} (see 'virsh list --all')")
    notes: list[str] = []
    offline_dom = None
    if g.reach_error:
        g.domain["error"] = g.reach_error
        g.texts.append(("connection", g.reach_error))
        offline_dom, note = _offline_xml(facts, name)
        notes.append(note)
        if offline_dom is not None:
            g.domain["config"] = offline_dom.source
    info = g.info
    if info is not None:
        g.domain.update({"state": info.state_name, "reason": info.reason_name,
                         "persistent": info.persistent, "autostart": info.autostart,
                         "uuid": info.uuid, "id": info.id if info.active else None})
    window = _start_attempt(g, facts) if start else None
    _gather_logs(g, facts, window, lines, notes)
    # the checks, on what the next start will use (fresh facts after a start attempt)
    if g.start and g.start.get("attempted"):
        facts = g.facts = ctx.facts()
    domains = []
    if info is not None:
        try:
            latest = facts.libvirt.domain(name) or info
        except FactUnavailable:
            latest = info
        try:
            domains = [domxml.from_info(latest)]
        except ToolError as exc:
            g.logs["problems"].append(f"libvirt's XML of {name} does not parse: {exc}")
    elif offline_dom is not None:
        domains = [offline_dom]
    findings = _common.run_checks(ctx, facts, list(ctx.registry.values()), domains)
    g.findings = [f for f in findings if not f.subject.startswith(("domain:", "xml:"))
                  or f.subject == f"domain:{name}"]
    return g


def _start_attempt(g: Gathered, facts):
    """One real start (libvirt's error is the best evidence there is); the time window."""
    info, window = g.info, None
    if info is None:
        g.start = {"attempted": False, "started": False,
                   "error": f"not attempted: libvirt is not reachable ({g.reach_error})"}
    elif info.active:
        g.start = {"attempted": False, "started": True, "error": "already running"}
    else:
        from virtdoctor.facts.libvirt import start_domain

        before = _now()
        try:
            ok, err = start_domain(facts.resolved_uri, g.name, timeout=max(60.0, facts.timeout))
        except FactUnavailable as exc:
            ok, err = False, str(exc)
        window = (before, _now())
        g.start = {"attempted": True, "started": ok, "error": "" if ok else err}
        if err and not ok:
            g.texts.insert(0, ("start", err))
    return window


def _gather_logs(g: Gathered, facts, window, lines: int, notes: list[str]) -> None:
    qlog = qemu_log_since_start(facts, g.name)
    fresh = qlog.fresh_since(window[0] if window else None)
    uuid = g.info.uuid if g.info else None
    named, dmn_problems = daemon_records(facts, g.name, uuid)
    dmn_lines, during = named, []
    if window is not None:
        dmn_lines, _ = daemon_records(facts, g.name, uuid, window=window)
        known = set(named)
        during = [line for line in dmn_lines if line not in known]
    g.logs = {
        "qemu": qlog.lines[-lines:] if lines else [],
        "qemu_started": qlog.started.isoformat() if qlog.started else None,
        "qemu_current": fresh and not qlog.problem,
        "qemu_command_lines": qlog.command_lines,
        "daemon": tail_records(dmn_lines, lines),
        "problems": [p for p in [qlog.problem, *dmn_problems, *notes] if p],
    }
    if qlog.lines:
        g.texts.append(("qemu log" if fresh else "qemu log, earlier start", "\n".join(qlog.lines)))
    if named:
        g.texts.append(("daemon log", "\n".join(named)))
    if during:
        g.texts.append(("daemon log, during the start", "\n".join(during)))


def decide(ctx, kb, g: Gathered) -> DiagnoseReport:
    """Rank the causes (see `rank`) and the exit status (`_status`)."""
    causes = rank(kb, message_matches(kb, g.texts), g.findings, g.name)
    add_fix_commands(causes, ctx.registry, g.name, domain_known=g.info is not None)
    return DiagnoseReport(name=g.name, target=_common.target(ctx, g.facts, domain=g.name), domain=g.domain,
                          start=g.start, logs=g.logs, causes=causes, findings=g.findings,
                          status=_status(g.start, causes, g.findings))


def _status(start, causes, findings) -> int:
    """0: nothing wrong (or it started and no check fails); 1: only warnings; 2: the start
    failed, the error names a known cause, or an error-severity check fails."""
    status = exit_status(findings)
    if start and start.get("attempted") and not start.get("started"):
        return 2
    if any(c["tier"] in ("confirmed", "error message") for c in causes):
        return 2
    return status


def _render(ctx, name, report, causes, findings) -> None:
    con = ctx.console
    d = report["domain"]
    con.print(f"[bold]Domain {escape(name)}[/bold]")
    if "state" in d:
        flags = ", ".join(x for x in ("persistent" if d["persistent"] else "transient",
                                      "autostart" if d["autostart"] else "no autostart") if x)
        con.print(f"  state: {d['state']} ({d['reason']}); {flags}")
    if d.get("error"):
        con.print(f"  [red]libvirt not reachable:[/red] {escape(d['error'])}")
    st = report.get("start")
    if st:
        if st["started"]:
            con.print("  [green]start: it started[/green]" + (" (it was already running)" if not st["attempted"]
                                                              else "; left running"))
        else:
            con.print(f"  [red]start failed:[/red] {escape(st['error'])}")
    logs = report["logs"]
    if logs["qemu"]:
        when = "the last start" if logs["qemu_current"] else "an earlier start (this attempt did not reach QEMU)"
        con.print(f"\n[bold]QEMU log since {when}[/bold] ({QEMU_LOG_DIR}/{escape(name)}.log"
                  + (f", {logs['qemu_command_lines']} lines of command line left out)"
                     if logs["qemu_command_lines"] else ")"))
        for line in logs["qemu"]:
            con.print(f"  [dim]{escape(line)}[/dim]")
    if logs["daemon"]:
        con.print("\n[bold]Daemon log records about it[/bold]")
        for line in logs["daemon"]:
            con.print(f"  [dim]{escape(line)}[/dim]")
    for p in logs["problems"]:
        con.print(f"  [dim]note: {escape(p)}[/dim]")
    con.print("\n[bold]Likely causes[/bold]" if causes else "\n[bold]No known cause found[/bold]")
    for i, c in enumerate(causes, 1):
        con.print(f" {i}. {escape(c['id'])}: {escape(c['title'])} [dim]({c['tier']}, score {c['score']:g})[/dim]")
        msg = c["evidence"].get("message")
        if msg:
            con.print(f"    seen in {msg['source']}: {escape(msg['line'] or '')}")
        for chk in c["evidence"].get("checks", []):
            con.print(f"    check fails: {escape(chk['message'])}")
        for chk in c["evidence"].get("checks_pass", []):
            con.print(f"    [dim]its check passes now: {escape(chk['message'])}[/dim]")
        if c["fix"]:
            con.print(f"    fix: {escape(c['fix']['summary'])}")
            for cmd in c["fix"].get("commands", []):
                con.print(f"      $ {escape(cmd)}")
            if c["fix"].get("command"):
                con.print(f"      or let virtdoctor do it: {escape(c['fix']['command'])}")
    if not causes:
        for line in DEBUG_ADVICE:
            con.print(escape(line.replace("NAME", name)))
    shown = {c["id"] for c in causes}
    failing = [f for f in findings if f.status is Status.FAIL and f.id not in shown]
    if failing:
        con.print()
        render_findings(con, failing, title="Other failing checks", fix_hint=False)
