"""`virtdoctor explain`: from an error message, stdin or a log file to catalogue entries.

    virtdoctor explain SLUG              the entry's documentation
    virtdoctor explain "ERROR TEXT"      which entries the text shows, best first
    virtdoctor explain -                 the same for standard input
    virtdoctor explain --log FILE        per entry: how often, first and last time, first line

Exit status: 0 when something matched (or the entry was printed), 1 when nothing did,
3 (via ToolError) for unusable input: empty stdin, unreadable file, unknown slug.
"""
from __future__ import annotations

import json
import os
import re
import sys
import textwrap

from virtdoctor.model import ToolError

_SLUGLIKE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")
_STDIN_AS_LOG = 1 << 20  # larger standard input is scanned like a log file
_SHOWN = 300  # characters of a matched line shown in text output
_PROGRESS_FROM = 64 << 20  # logs from this size show progress on a terminal


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explain an error message, a log file or a catalogue slug",
        description="Map a libvirt/QEMU error text (or stdin, or a log file) to catalogue "
        "entries with cause and fix; or print the documentation of one slug.",
    )
    p.add_argument("target", nargs="?", metavar="SLUG|TEXT|-",
                   help="a catalogue slug, an error text, or - to read standard input")
    p.add_argument("--log", metavar="FILE",
                   help="scan a log file (libvirtd.log, /var/log/libvirt/qemu/NAME.log, a journal export)")
    p.set_defaults(run=run)


def _knowledge(ctx):
    try:
        return ctx.knowledge
    except ImportError as exc:  # the plugin manager is not there: the built-in entries alone
        if not (getattr(exc, "name", "") or "").startswith("virtdoctor"):
            raise
        from virtdoctor.knowledge import builtin_dir, load

        return load([builtin_dir()])


def run(args, ctx) -> int:
    kb = _knowledge(ctx)
    if args.log:
        if args.target is not None:
            raise ToolError("explain: give either --log FILE or a SLUG/TEXT, not both")
        from virtdoctor.render.progress import tracker

        try:
            size = os.path.getsize(args.log) if os.path.isfile(args.log) else None
        except OSError:
            size = None
        with tracker(ctx.err, f"reading {os.path.basename(args.log)}", size, bytes_=True,
                     at_least=_PROGRESS_FROM) as advance:
            report = kb.scan_log(args.log, progress=advance)
        return _report_log(report, kb, ctx)
    if args.target is None:
        raise ToolError("explain: give a SLUG, an error TEXT, - for standard input, or --log FILE")
    if args.target == "-":
        data = _read_stdin()
        if not data.strip():
            raise ToolError("explain -: standard input is empty")
        if len(data) > _STDIN_AS_LOG:
            return _report_log(kb.scan_log(data.splitlines(keepends=True)), kb, ctx)
        text = data.decode("utf-8", "replace")
    else:
        text = args.target
        slug = text.strip()
        if _SLUGLIKE.match(slug) and slug in kb.entries:
            return _print_entry(kb.entries[slug], ctx)
    matches = kb.match(text)
    if not matches and args.target != "-" and _SLUGLIKE.match(text.strip()):
        raise ToolError(f"unknown slug {text.strip()!r} (not a catalogue slug, and no entry matches it as a message)")
    if matches:
        _print_matches(matches, ctx)
        return 0
    _print_unknown(text, ctx)
    return 1


def _read_stdin() -> bytes:
    stream = sys.stdin
    if stream is None:
        return b""
    buf = getattr(stream, "buffer", None)
    if buf is not None:
        return buf.read()
    data = stream.read()
    return data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data


def _printer(ctx):
    """print(text, style=None): through the run's rich console (bold headings on a
    terminal), or plain lines on ctx.out when rich is not available."""
    try:
        console = ctx.console
    except ImportError:
        console = None
    if console is None:
        return lambda text="", style=None: ctx.out.write(text + "\n")
    return lambda text="", style=None: console.print(text, style=style, markup=False, highlight=False,
                                                     soft_wrap=True)


def _json(ctx, body) -> None:
    """The JSON document (contract v2 envelope + `body`): printed with --format json, and
    recorded for --output FILE in any format."""
    if ctx.fmt != "json" and not ctx.run.output:
        return
    from virtdoctor.commands._common import target
    from virtdoctor.render.json import document

    doc = document("explain", target(ctx, None), None, **body)
    if ctx.fmt == "json":
        ctx.out.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def _wrap(label: str, text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent=f"  {label:<9}", subsequent_indent=" " * 11)


def _fix_lines(e_or_m, slug: str, has_checks: bool) -> list[str]:
    lines = [_wrap("fix:", e_or_m.fix)]
    for i, cmd in enumerate(e_or_m.commands):
        lines.append(f"  {'run:' if i == 0 else '':<9}{cmd}")
    auto = e_or_m.auto
    if auto == "manual" or not has_checks:
        lines.append("  auto:    manual (advice only)")
    else:
        flag = "--yes" if auto == "safe" else "--yes --unsafe"
        lines.append(f"  auto:    {auto}: virtdoctor fix --only {slug} {flag}")
    return lines


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _short(line: str) -> str:
    """A matched line fit for a terminal: control bytes of binary logs shown as U+FFFD, cut."""
    line = _CONTROL.sub("\ufffd", line)
    return line if len(line) <= _SHOWN else line[:_SHOWN] + "..."


def _print_matches(matches, ctx) -> None:
    kb = _knowledge(ctx)
    _json(ctx, {"matches": [m.to_dict() for m in matches]})
    if ctx.fmt == "json":
        return
    p = _printer(ctx)
    p(f"{len(matches)} known problem{'s' if len(matches) != 1 else ''} in this text, best first:")
    for m in matches:
        entry = kb.get(m.id)
        p()
        p(f"{m.id}  {m.title}  (score {m.score:.2f})", "bold")
        p(f"  matched: {_short(m.line)}")
        p(_wrap("cause:", m.cause))
        p("\n".join(_fix_lines(m, m.id, bool(entry and entry.checks))))


def _print_entry(entry, ctx) -> int:
    _json(ctx, {"matches": [{"id": entry.slug, "score": 1.0, "title": entry.title,
                             "cause": entry.cause, "fix": entry.fix,
                             "commands": list(entry.commands), "auto": entry.auto}],
                "entry": entry.to_dict()})
    if ctx.fmt == "json":
        return 0
    p = _printer(ctx)
    p(f"{entry.slug}: {entry.title}", "bold")
    p(f"  scope:   {', '.join(entry.scope)}")
    if entry.checks:
        p(f"  checks:  {', '.join(entry.checks)} (virtdoctor check --only {entry.checks[0]})")
    p(_wrap("cause:", entry.cause))
    p("\n".join(_fix_lines(entry, entry.slug, bool(entry.checks))))
    if entry.exceptions:
        p(_wrap("unless:", entry.exceptions))
    if entry.patterns:
        p("  recognises (regular expressions):")
        for pattern in entry.patterns:
            p(f"           {pattern}")
    if entry.references:
        p("  see:")
        for r in entry.references:
            p(f"           {r}")
    return 0


def _print_unknown(text: str, ctx) -> None:
    from virtdoctor.knowledge import parse_error
    from virtdoctor.knowledge.unwrap import innermost

    parsed = parse_error(innermost(text))
    _json(ctx, {"matches": [], "parsed": parsed})
    if ctx.fmt == "json":
        return
    p = _printer(ctx)
    p("Unknown: no catalogue entry matches this message.", "bold")
    shown = [(k, parsed[k]) for k in ("code", "prefix", "domain", "errno", "strerror", "function",
                                      "level", "timestamp", "context", "detail") if k in parsed]
    if "code" not in parsed and parsed.get("message"):
        shown.append(("message", parsed["message"]))
    if shown:
        p("What it says:")
        for k, v in shown:
            p(f"  {k + ':':<11}{_short(str(v))}")
    p("For more, turn on debug logs: log_filters=\"1:qemu 1:libvirt\" and "
      "log_outputs=\"1:file:/var/log/libvirt/libvirtd.log\" in the daemon's .conf (client: LIBVIRT_DEBUG=1).")


def _report_log(report, kb, ctx) -> int:
    hits = report.ranked()
    matches = []
    for h in hits:
        e = kb.entries[h.id]
        matches.append({"id": h.id, "score": h.score, "title": e.title, "cause": e.cause,
                        "fix": e.fix, "commands": list(e.commands), "auto": e.auto,
                        "count": h.count, "first": h.first, "last": h.last, "line": h.line[:_SHOWN * 4]})
    _json(ctx, {"matches": matches, "log": {"source": report.source, "bytes": report.bytes,
                                            "lines": report.lines}})
    if ctx.fmt == "json":
        return 0 if hits else 1
    p = _printer(ctx)
    size = f"{report.bytes / 1e6:.1f} MB" if report.bytes >= 100_000 else f"{report.bytes} bytes"
    if not hits:
        p(f"{report.source}: nothing known in {report.lines} lines ({size}).")
        return 1
    p(f"{report.source}: {len(hits)} known problem{'s' if len(hits) != 1 else ''} "
      f"in {report.lines} lines ({size}), best first:")
    for h in hits:
        e = kb.entries[h.id]
        when = ""
        if h.first:
            when = f", first {h.first}" + (f", last {h.last}" if h.last and h.last != h.first else "")
        p()
        p(f"{h.id}  {e.title}", "bold")
        p(f"  seen:    {h.count} line{'s' if h.count != 1 else ''}{when}")
        p(f"  first:   {_short(h.line)}")
        p(_wrap("cause:", e.cause))
        p("\n".join(_fix_lines(e, h.id, bool(e.checks))))
    return 0
