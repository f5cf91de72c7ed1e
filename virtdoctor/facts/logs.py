"""Logs, read in one place: the daemon's log files, QEMU's per-domain logs, the
systemd journal and the audit log. One regex describes a daemon log line
(src/util/virlog.c: "2026-11-25 21:02:33.018+0000: 21630: error :
qemuValidateDomainDef:1294 : ..."), one the start mark libvirt writes into a
QEMU log. Everything reads through `HostFacts` (below --root; commands on the
live host only), and is exposed to checks and commands as `facts.logs`.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from virtdoctor.model import FactUnavailable

QEMU_LOG_DIR = "/var/log/libvirt/qemu"
DAEMON_LOGS = ("/var/log/libvirt/libvirtd.log", "/var/log/libvirt/virtqemud.log")
DAEMON_CONFS = ("/etc/libvirt/libvirtd.conf", "/etc/libvirt/virtqemud.conf")
AUDIT_LOG = "/var/log/audit/audit.log"
QEMU_LOG_BYTES = 256 * 1024
DAEMON_LOG_BYTES = 2 * 1024 * 1024
START_SLACK = _dt.timedelta(seconds=2)  # clock and log-write slack around a start attempt

_TS = r"(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?[+-]\d{4})"
# one daemon log line: timestamp, thread, level, optional function:line, message
DAEMON_LINE = re.compile(_TS + r": (?P<thread>\d+): (?P<level>debug|info|warning|error) : "
                         r"(?:(?P<function>[A-Za-z_]\w*):(?P<lineno>\d+) : )?(?P<msg>.*)$")
# the mark libvirt writes into /var/log/libvirt/qemu/NAME.log at each start attempt
START_MARK = re.compile("^" + _TS + r": starting up libvirt version")
# a line QEMU itself writes with -msg timestamp=on
QEMU_LINE = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z) (?P<msg>.*)$")


def log_time(text: str) -> _dt.datetime | None:
    """A daemon/QEMU-log timestamp ("2026-11-25 21:02:22.673+0000") as an aware datetime."""
    for fmt in ("%Y-%m-%d %H:%M:%S.%f%z", "%Y-%m-%d %H:%M:%S%z"):
        try:
            return _dt.datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


@dataclass
class QemuLog:
    """The part of /var/log/libvirt/qemu/NAME.log written since the last start attempt."""

    path: str
    lines: list[str] = field(default_factory=list)  # the start mark and QEMU's output
    command_lines: int = 0  # lines of environment and command line left out of `lines`
    started: _dt.datetime | None = None  # time of the last "starting up" mark
    attempts: int = 0  # start marks in the part read
    problem: str | None = None  # why there is nothing to show

    def fresh_since(self, when: _dt.datetime | None) -> bool:
        """Whether the last start mark was written at or after `when` (None: no attempt made)."""
        if when is None:
            return True
        return self.started is not None and self.started >= when - START_SLACK


def qemu_log_since_start(facts, name: str) -> QemuLog:
    """Lines of /var/log/libvirt/qemu/NAME.log since its last 'starting up libvirt version' mark
    (libvirt appends one per start attempt; the log is never truncated by libvirt)."""
    log = QemuLog(f"{QEMU_LOG_DIR}/{name}.log")
    try:
        text = facts.read_tail(log.path, QEMU_LOG_BYTES)
    except FactUnavailable as exc:
        log.problem = f"{exc} (QEMU's logs are readable by root only)"
        return log
    if text is None:
        log.problem = f"{log.path} does not exist (the domain never reached QEMU here, or logs go elsewhere)"
        return log
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if START_MARK.match(line)]
    log.attempts = len(starts)
    if starts:
        first = starts[-1]
        log.started = log_time(START_MARK.match(lines[first]).group("ts"))
        # libvirt writes the environment and the command line, one argument per line
        # ending in " \\", the last one without: QEMU's own output follows
        end = first + 1
        while end < len(lines) and lines[end].endswith("\\"):
            end += 1
        if end > first + 1 and end < len(lines):
            end += 1
        log.command_lines = end - first - 1
        log.lines = [lines[first]] + lines[end:]
    else:
        log.lines = lines
    return log


def daemon_log_paths(facts) -> list[str]:
    """The daemon log files: the defaults plus every `N:file:PATH` of log_outputs in
    libvirtd.conf / virtqemud.conf (and the config file in effect, when the daemon runs
    with another one: facts.daemon)."""
    paths = list(DAEMON_LOGS)
    confs = list(DAEMON_CONFS)
    try:
        conf = facts.daemon.conf
        if conf not in confs:
            confs.append(conf)
    except (FactUnavailable, AttributeError):
        pass
    for conf in confs:
        outputs = facts.conf_value(conf, "log_outputs", None)
        if not isinstance(outputs, str):
            continue
        for item in outputs.split():
            parts = item.split(":", 2)
            if len(parts) == 3 and parts[1] == "file" and parts[2] not in paths:
                paths.append(parts[2])
    return paths


def _mentions(name: str, uuid: str | None):
    keys = [re.escape(k) for k in (name, uuid) if k]
    return re.compile(r"(?<![\w.-])(?:" + "|".join(keys) + r")(?![\w-])")


def daemon_records(facts, name: str, uuid: str | None, *, window: tuple | None = None,
                   paths: list[str] | None = None) -> tuple[list[str], list[str]]:
    """error/warning records of the daemon logs that name the domain (by name or UUID), or,
    with `window=(since, until)`, that were written in that time span (libvirt's errors
    rarely name the domain: `Cannot check QEMU binary ...`). A record is a daemon log line
    plus its continuation lines (the QEMU tail libvirt quotes spans several lines).
    Returns (lines, problems)."""
    found: list[str] = []
    problems: list[str] = []
    mention = _mentions(name, uuid)
    seen_any = False
    for path in paths if paths is not None else daemon_log_paths(facts):
        try:
            text = facts.read_tail(path, DAEMON_LOG_BYTES)
        except FactUnavailable as exc:
            problems.append(str(exc))
            continue
        if text is None:
            continue
        seen_any = True
        record: list[str] = []
        keep = False
        for line in text.splitlines() + [""]:
            m = DAEMON_LINE.match(line)
            if m or not line.strip():
                if record and keep:
                    found.extend(record)
                record, keep = [], False
                if not m:
                    continue
                if m.group("level") not in ("error", "warning"):
                    continue
                record = [line]
                keep = bool(mention.search(line))
                if not keep and window is not None:
                    ts = log_time(m.group("ts"))
                    keep = ts is not None and window[0] - START_SLACK <= ts <= window[1] + START_SLACK
            elif record:
                record.append(line)
                keep = keep or bool(mention.search(line))
    if not seen_any and not problems:
        problems.append("no daemon log file found (" + ", ".join(DAEMON_LOGS)
                        + "): on systemd hosts see 'journalctl -u libvirtd -u virtqemud'")
    return found, problems


def journal(facts, units: tuple[str, ...] = ("libvirtd", "virtqemud"), *, lines: int = 200) -> list[str]:
    """The last lines the journal holds for the daemon units (live host with journalctl
    only: FactUnavailable otherwise)."""
    if facts.which("journalctl") is None or not facts.is_dir("/run/systemd/journal"):
        raise FactUnavailable("no systemd journal on this host")
    argv = ["journalctl", "--no-pager", "-q", "-o", "short-iso-precise", "-n", str(lines)]
    for u in units:
        argv += ["-u", u]
    out = facts.run(argv, timeout=5.0)
    if out.returncode != 0:
        raise FactUnavailable(f"journalctl failed: {(out.stderr or '').strip().splitlines()[:1]}")
    return out.stdout.splitlines()


def audit_records(facts, *, kind: str | None = None, max_bytes: int = 1 << 20) -> list[str]:
    """Lines of the audit log (type=VIRT_* for libvirt's own records), newest last;
    [] when there is no audit log."""
    text = facts.read_tail(AUDIT_LOG, max_bytes)
    if text is None:
        return []
    return [line for line in text.splitlines() if kind is None or f"type={kind}" in line]


class Logs:
    """`facts.logs`: the log readers bound to one facts object."""

    def __init__(self, facts):
        self._facts = facts

    def daemon_log_paths(self) -> list[str]:
        return daemon_log_paths(self._facts)

    def daemon_records(self, name: str, uuid: str | None, **kw) -> tuple[list[str], list[str]]:
        return daemon_records(self._facts, name, uuid, **kw)

    def qemu_log(self, name: str) -> QemuLog:
        return qemu_log_since_start(self._facts, name)

    def journal(self, units: tuple[str, ...] = ("libvirtd", "virtqemud"), **kw) -> list[str]:
        return journal(self._facts, units, **kw)

    def audit(self, kind: str | None = None) -> list[str]:
        return audit_records(self._facts, kind=kind)
