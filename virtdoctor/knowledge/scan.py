"""Log scanning: count each slug's lines in a log file, fast.

:class:`LogScanner` reads bytes in large blocks, finds candidate lines with one regex over
a small set of literal keys (every pattern requires one of them, see
:func:`virtdoctor.knowledge.patterns.required_runs`), and runs only the patterns behind the
keys found on those lines. Binary data, invalid UTF-8 and huge lines are fine: lines are
decoded with replacement characters. Large regular files are scanned by several forked
processes, each on a byte range cut at line ends.
"""
from __future__ import annotations

import datetime as _dt
import errno as _errno
import os
import re
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

from virtdoctor.knowledge.patterns import Pattern, match_with
from virtdoctor.model import ToolError


@dataclass
class LogHit:
    """One slug's occurrences in a log."""

    id: str
    score: float
    count: int = 0
    first: str | None = None  # ISO 8601 (UTC) when the lines carry a full time; syslog's
    # year-less "Nov 25 20:00:58" as written otherwise
    last: str | None = None
    line: str = ""  # the first matched line
    _first_dt: Any = field(default=None, repr=False)
    _last_dt: Any = field(default=None, repr=False)


@dataclass
class LogReport:
    source: str
    bytes: int = 0
    lines: int = 0
    hits: dict[str, LogHit] = field(default_factory=dict)

    def ranked(self) -> list[LogHit]:
        """Best first: the most specific pattern, then the most frequent."""
        return sorted(self.hits.values(), key=lambda h: (-h.score, -h.count, h.id))




# What ordinary libvirt/QEMU log lines look like (a static sample, not tuned to any one log):
# a scan key is chosen outside this text when the pattern allows it, and starts with a byte
# that is rare in it.
_ORDINARY = "\n".join([os.strerror(n) for n in sorted(_errno.errorcode)] + [
    "internal error: unsupported configuration: Requested operation is not valid: ",
    "operation failed: invalid argument: XML error: Domain not found: Network not found: ",
    "qemu unexpectedly closed the monitor: process exited while connecting to monitor: ",
    "2026-11-25 20:00:58.119+0000: 1234: info : libvirt version: 9.0.0, package: 9.0.0-4+deb12u2 (Debian)",
    "2026-11-25 20:00:58.119+0000: 1234: info : hostname: kvm-host-01.example.org",
    "2026-11-25 20:00:58.120+0000: 1240: debug : virCommandRunAsync:2613 : About to run LC_ALL=C PATH=/usr/bin",
    "2026-11-25 20:00:58.120+0000: 1240: debug : qemuProcessStart:7712 : conn=0x7f5b3c00a5d0 driver=0x7f5b3c0153a0 "
    "vm=0x55f1 name=web01 id=-1 asyncJob=start migrateFrom=<null> migrateFd=-1 migratePath=<null> flags=0x1",
    "2026-11-25 20:00:58.121+0000: 1240: warning : qemuDomainObjTaint:6075 : Domain id=1 name='web01' "
    "uuid=4dea22b3-1d52-d8f3-2516-782e98ab3fa0 is tainted: host-cpu",
    "2026-11-25 20:00:58.122+0000: 1240: debug : virFileClose:110 : Closed fd 27",
    "2026-11-25 20:00:58.122+0000: 1250: info : qemuMonitorIOWrite:366 : QEMU_MONITOR_IO_WRITE: "
    'mon=0x7f5b30012340 buf={"execute":"qmp_capabilities","id":"libvirt-1"} len=51 ret=51 errno=0',
    "2026-11-25 20:00:58.123+0000: 1250: debug : virDomainObjListLoadAllConfigs:1040 : Scanning for configs in /etc/libvirt/qemu",
    "2026-11-25 20:00:58.123+0000: 1250: debug : virNetDevTapCreate:240 : created device: 'vnet0'",
    "2026-11-25T20:00:58.119142Z qemu-system-x86_64: warning: host doesn't support requested feature: "
    "CPUID.01H:ECX.pni [bit 0]",
    "LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin HOME=/var/lib/libvirt/qemu/domain-1-web01 "
    "XDG_DATA_HOME=/var/lib/libvirt/qemu/domain-1-web01/.local/share /usr/bin/qemu-system-x86_64 -name "
    "guest=web01,debug-threads=on -S -machine pc-q35-7.2,usb=off,vmport=off,dump-guest-core=off -accel kvm "
    "-cpu host,migratable=on -m 2048 -smp 2,sockets=2,cores=1,threads=1 -device virtio-blk-pci,drive=libvirt-1-format",
    "char device redirected to /dev/pts/3 (label charserial0)",
    "Nov 25 20:00:58 kvm-host-01 systemd[1]: Started Virtualization daemon. libvirtd[1234]: "
    "Failed to open file; failed to read; Unable to open; unable to find; Cannot get; cannot set; is not supported",
]).encode()
_EN = b"etaoinshrdlcumwfgypbvkjxqz"  # English letters, most to least frequent


def _byte_weight(c: int) -> float:
    """How common a byte is in log text: its share of _ORDINARY plus a prior for prose
    (lower-case letters by English frequency), digits and separators."""
    w = _ORDINARY.count(bytes([c])) / len(_ORDINARY)
    if c in _EN:
        w += 0.13 * (1 - _EN.index(c) / 26) ** 2 + 0.001
    elif 0x30 <= c <= 0x39:
        w += 0.02
    elif c in b" :-./_=,\"\n":
        w += 0.05
    elif 0x41 <= c <= 0x5A:
        w += 0.003
    return w


_FREQ = {c: _byte_weight(c) for c in range(256)}
_KEY_LEN = 8


def _key_for(literal: str) -> bytes:
    """The bytes a scan looks for to find lines that may hold `literal`: a window of it
    (8 bytes, or 4 to 7 at its end) that ordinary log text does not contain, starting with
    a byte rare in log text. sre's search skips bytes that cannot start any key with one
    table lookup, and a window absent from ordinary text makes few ordinary lines candidates."""
    raw = literal.encode("utf-8")
    if len(raw) <= _KEY_LEN:
        return raw
    n = len(raw)
    windows = [raw[i:i + _KEY_LEN] for i in range(n - _KEY_LEN + 1)] + [raw[i:] for i in range(n - _KEY_LEN + 1, n - 3)]
    return min(windows, key=lambda w: (w in _ORDINARY, len(w) < 6, _FREQ[w[0]], -len(w)))


def _trie_regex(keys: Iterable[bytes]) -> re.Pattern:
    """One regex matching any of `keys`, factored as a trie so that sre tries few branches."""
    trie: dict = {}
    for key in keys:
        node = trie
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = True

    def build(node) -> bytes:
        if None in node:  # a shorter key ends here: enough to make the line a candidate
            return b""
        # sre tries a BRANCH's alternatives in order: the commonest first byte goes first
        order = sorted((c for c in node), key=lambda c: (-_FREQ[c], c))
        alts = [re.escape(bytes([c])) + build(node[c]) for c in order]
        return alts[0] if len(alts) == 1 else b"(?:" + b"|".join(alts) + b")"

    return re.compile(build(trie))


# --------------------------------------------------------------------------- timestamps

_TS_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?"
)
_REALTIME_RE = re.compile(rb"__REALTIME_TIMESTAMP=(\d{10,20})")


def _parse_ts(line: str):
    m = _TS_RE.search(line, 0, 200)
    if not m:
        return None
    date, time, frac, tz = m.groups()
    frac = (frac or "")[:7]
    if not tz or tz == "Z":
        tz = "+00:00"
    elif ":" not in tz:
        tz = tz[:3] + ":" + tz[3:]
    try:
        return _dt.datetime.fromisoformat(f"{date}T{time}{frac}{tz}")
    except ValueError:
        return None


_SYSLOG_RE = re.compile(r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) ([ \d]\d) (\d{2}:\d{2}:\d{2})\b")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _syslog_ts(line: str):
    """`Nov 25 20:00:58 host unit[pid]: ...` (journalctl's default, syslog): no year, so
    kept as written; ordered by month, day and time."""
    m = _SYSLOG_RE.match(line)
    if not m:
        return None
    mon, day, time = m.groups()
    return (0, (_MONTHS.index(mon), int(day), time)), f"{mon} {int(day):2d} {time}"


def _realtime(us: bytes):
    try:
        return _dt.datetime.fromtimestamp(int(us) / 1e6, tz=_dt.timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None


def _iso(ts) -> str:
    return ts.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the scanner

_BLOCK = 8 << 20  # bytes read at once
_MAX_CARRY = 4 << 20  # a "line" longer than this is cut (a match across the cut is lost)
_PARALLEL_MIN = 32 << 20  # files at least this large are scanned by several processes
_PARALLEL_MAX = 4
_FORK_SCANNER: "LogScanner | None" = None


class LogScanner:
    """The scan keys of a set of patterns, prepared once."""

    def __init__(self, patterns: list[Pattern]):
        by_key: dict[bytes, list[Pattern]] = {}
        self._unkeyed: list[tuple[Pattern, re.Pattern | None]] = []
        for p in patterns:
            if not p.keys:
                try:
                    self._unkeyed.append((p, re.compile(p.text.encode("utf-8"))))
                except re.error:  # a str-only construct: searched line by line (slow, rare)
                    self._unkeyed.append((p, None))
                continue
            for lit in p.keys:
                got = by_key.setdefault(_key_for(lit), [])
                if p not in got:
                    got.append(p)
        # a key that is a prefix of another is what the trie regex reports for both
        keys = sorted(by_key)
        self._by_key = {k: [p for k2 in keys if k2.startswith(k) for p in by_key[k2]] for k in keys}
        self._scan_rx = _trie_regex(keys) if keys else None

    def scan(self, source, progress=None) -> LogReport:
        """Count each slug's lines in a log: a path, a binary file object or an iterable of
        byte lines. Understands libvirtd (`2026-11-25 20:00:58.119+0000: ...`), QEMU
        (`2026-11-25T20:00:58.119142Z ...`), `journalctl -o short-iso[-precise]`,
        `journalctl -o export` (timestamps from `__REALTIME_TIMESTAMP`) and journalctl's
        default / syslog lines (`Nov 25 20:00:58 host libvirtd[1]: ...`, no year)."""
        if isinstance(source, (str, os.PathLike)):
            name = os.fspath(source)
            try:
                size = os.stat(name).st_size if os.path.isfile(name) else 0
                if size >= _PARALLEL_MIN and (os.cpu_count() or 1) > 1:
                    report = self._scan_parallel(name, size, progress)
                    if report is not None:
                        return report
                with open(name, "rb") as fh:
                    return self._scan_blocks(name, _file_blocks(fh), progress)
            except OSError as exc:
                raise ToolError(f"cannot read {name}: {exc.strerror or exc}") from None
        if hasattr(source, "read"):
            return self._scan_blocks(getattr(source, "name", "<stream>"), _file_blocks(source), progress)
        return self._scan_blocks("<lines>", _line_blocks(source), progress)

    def _scan_parallel(self, name: str, size: int, progress=None) -> LogReport | None:
        """Scan a large regular file on every core: byte ranges cut at line ends, one forked
        worker per range, reports merged in file order. None when workers cannot be had."""
        import concurrent.futures
        import multiprocessing

        try:
            ctx = multiprocessing.get_context("fork")
        except ValueError:
            return None
        workers = min(os.cpu_count() or 1, _PARALLEL_MAX)
        cuts = [0]
        with open(name, "rb") as fh:
            for i in range(1, workers):
                fh.seek(size * i // workers)
                head = fh.read(_MAX_CARRY)
                nl = head.find(b"\n")
                cut = size * i // workers + (nl + 1 if nl >= 0 else 0)
                cuts.append(max(cut, cuts[-1]))
        cuts.append(size)
        global _FORK_SCANNER
        _FORK_SCANNER = self
        try:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                parts = []
                for part in pool.map(_scan_range, [name] * workers, cuts[:-1], cuts[1:]):
                    parts.append(part)
                    if progress is not None:
                        progress(part.bytes)
        except (OSError, concurrent.futures.process.BrokenProcessPool, PermissionError):
            return None
        finally:
            _FORK_SCANNER = None
        report = LogReport(name)
        for part in parts:
            report.bytes += part.bytes
            report.lines += part.lines
            for slug, hit in part.hits.items():
                mine = report.hits.get(slug)
                if mine is None:
                    report.hits[slug] = hit
                    continue
                mine.count += hit.count
                mine.score = max(mine.score, hit.score)
                if hit._first_dt is not None and (mine._first_dt is None or hit._first_dt < mine._first_dt):
                    mine._first_dt, mine.first = hit._first_dt, hit.first
                if hit._last_dt is not None and (mine._last_dt is None or hit._last_dt >= mine._last_dt):
                    mine._last_dt, mine.last = hit._last_dt, hit.last
        return report

    def _scan_blocks(self, name: str, blocks: Iterator[bytes], progress=None) -> LogReport:
        report = LogReport(str(name))
        unkeyed = self._unkeyed or []
        search = self._scan_rx.search if self._scan_rx is not None else None
        by_key = self._by_key
        for buf in blocks:
            report.bytes += len(buf)
            if progress is not None:
                progress(len(buf))
            report.lines += buf.count(b"\n")
            cands: dict[int, list[Pattern]] = {}
            m = search(buf) if search else None
            while m is not None:
                pos = m.start()
                start = buf.rfind(b"\n", 0, pos) + 1
                got = cands.get(start)
                pats = by_key[m.group()]
                if got is None:
                    cands[start] = list(pats)
                else:
                    got.extend(p for p in pats if p not in got)
                m = search(buf, m.end())
            for p, rx in unkeyed:
                if rx is not None:
                    starts = (buf.rfind(b"\n", 0, m.start()) + 1 for m in rx.finditer(buf))
                else:
                    starts = _slow_starts(buf, p.regex)
                for start in starts:
                    got = cands.setdefault(start, [])
                    if p not in got:
                        got.append(p)
            for start in sorted(cands):
                end = buf.find(b"\n", start)
                raw = buf[start:end if end >= 0 else len(buf)]
                line = raw.decode("utf-8", "replace").rstrip("\r")
                found = match_with(line, cands[start])
                if not found:
                    continue
                ts = _parse_ts(line)
                if ts is None and raw.startswith(b"MESSAGE="):  # journal export record
                    rec = buf.rfind(b"\n\n", 0, start)
                    m = None
                    for m in _REALTIME_RE.finditer(buf, rec + 1 if rec >= 0 else 0, start):
                        pass
                    ts = _realtime(m.group(1)) if m else None
                # (sort key, shown text): ISO times sort after year-less syslog ones
                stamp = ((1, ts), _iso(ts)) if ts is not None else _syslog_ts(line)
                for slug, (score, shown) in found.items():
                    hit = report.hits.get(slug)
                    if hit is None:
                        hit = report.hits[slug] = LogHit(slug, score, line=shown)
                    hit.count += 1
                    hit.score = max(hit.score, score)
                    if stamp is not None:
                        key, shown_ts = stamp
                        if hit._first_dt is None or key < hit._first_dt:
                            hit._first_dt, hit.first = key, shown_ts
                        if hit._last_dt is None or key >= hit._last_dt:
                            hit._last_dt, hit.last = key, shown_ts
        return report



def _scan_range(name: str, start: int, end: int) -> LogReport:
    """Worker: scan bytes [start, end) of a file with the scanner inherited by fork."""
    scanner = _FORK_SCANNER
    assert scanner is not None

    def blocks() -> Iterator[bytes]:
        with open(name, "rb") as fh:
            fh.seek(start)
            left = end - start
            carry = b""
            while left > 0:
                chunk = fh.read(min(_BLOCK, left))
                if not chunk:
                    break
                left -= len(chunk)
                buf = carry + chunk if carry else chunk
                cut = buf.rfind(b"\n")
                if cut < 0 and len(buf) <= _MAX_CARRY and left > 0:
                    carry = buf
                    continue
                if cut < 0 or left <= 0:
                    carry = b""
                    yield buf
                else:
                    carry = buf[cut + 1:]
                    yield buf[:cut + 1]
            if carry:
                yield carry

    return scanner._scan_blocks(name, blocks())


def _slow_starts(buf: bytes, regex: re.Pattern) -> Iterator[int]:
    pos = 0
    for raw in buf.split(b"\n"):
        if regex.search(raw.decode("utf-8", "replace")):
            yield pos
        pos += len(raw) + 1


def _file_blocks(fh: IO[bytes]) -> Iterator[bytes]:
    """Blocks of whole lines (a line longer than _MAX_CARRY is cut)."""
    carry = b""
    while True:
        chunk = fh.read(_BLOCK)
        if not chunk:
            break
        if isinstance(chunk, str):  # a text stream: take its bytes
            chunk = chunk.encode("utf-8", "surrogateescape")
        buf = carry + chunk if carry else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            if len(buf) > _MAX_CARRY:
                yield buf
                carry = b""
            else:
                carry = buf
            continue
        carry = buf[cut + 1:]
        yield buf[:cut + 1]
    if carry:
        yield carry


def _line_blocks(lines: Iterable[bytes]) -> Iterator[bytes]:
    parts: list[bytes] = []
    size = 0
    for line in lines:
        if isinstance(line, str):
            line = line.encode("utf-8", "surrogateescape")
        if not line.endswith(b"\n"):
            line += b"\n"
        parts.append(line)
        size += len(line)
        if size >= _BLOCK:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)

