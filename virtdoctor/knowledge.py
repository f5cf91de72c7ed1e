"""The knowledge base: one TOML file per catalogue slug, matched against error texts.

A knowledge file (``knowledge/<slug>.toml``, read with :mod:`tomllib`) has exactly these
keys; :func:`load` checks them and names the file and the problem when one is wrong::

    slug       str        equal to the file's stem, lower-case words joined by "-"
    title      str        one line
    scope      [str]      non-empty, from host | domain | uri | message | build
    checks     [str]      slugs of the checks that confirm it; [] when scope is only message/build
    patterns   [str]      Python regexes searched in a message (re.search, case-sensitive);
                          a message/build-only entry needs at least one
    cause      str        plain words
    fix        str        plain words
    commands   [str]      exact commands (shown even when the fix is manual)
    auto       str        safe | unsafe | manual
    exceptions str        when the entry is wrong ("" allowed)
    references [str]      http(s) links (the seed's links for this entry)

Ranking: a match scores by the specificity of the pattern that hit, i.e. the number of
literal characters it requires (anchors add a little), mapped to 0..1. Longer, more exact
patterns win; each slug appears once, with its best pattern.

Log scanning (:meth:`KnowledgeBase.scan_log`) reads bytes in large blocks, finds candidate
lines with ``bytes.find`` on a small set of literal keys (every pattern requires one of
them), and runs only the patterns behind the keys found on those lines. Binary data,
invalid UTF-8 and huge lines are fine: lines are decoded with replacement characters.
"""
from __future__ import annotations

import datetime as _dt
import errno as _errno
import os
import pathlib
import re
import tomllib
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

from virtdoctor.model import ToolError

try:  # Python 3.11+: the regex parser used to find a pattern's required literals
    import re._parser as _sre_parse  # type: ignore[import-not-found]
    import re._constants as _sre_c  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - older layout
    import sre_constants as _sre_c  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

SCOPES = ("host", "domain", "uri", "message", "build")
AUTOS = ("safe", "unsafe", "manual")
_SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")

# key -> (type, element type or None); every key is required, no others are allowed
SCHEMA: dict[str, tuple[type, type | None]] = {
    "slug": (str, None),
    "title": (str, None),
    "scope": (list, str),
    "checks": (list, str),
    "patterns": (list, str),
    "cause": (str, None),
    "fix": (str, None),
    "commands": (list, str),
    "auto": (str, None),
    "exceptions": (str, None),
    "references": (list, str),
}


@dataclass(frozen=True)
class Entry:
    slug: str
    title: str
    scope: tuple[str, ...]
    checks: tuple[str, ...]
    patterns: tuple[str, ...]
    cause: str
    fix: str
    commands: tuple[str, ...]
    auto: str
    exceptions: str
    references: tuple[str, ...]
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "title": self.title, "scope": list(self.scope),
            "checks": list(self.checks), "patterns": list(self.patterns), "cause": self.cause,
            "fix": self.fix, "commands": list(self.commands), "auto": self.auto,
            "exceptions": self.exceptions, "references": list(self.references),
        }


@dataclass(frozen=True)
class Match:
    id: str
    score: float
    title: str
    cause: str
    fix: str
    commands: tuple[str, ...]
    auto: str
    line: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "title": self.title, "cause": self.cause,
                "fix": self.fix, "commands": list(self.commands), "auto": self.auto,
                "line": self.line}


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


# --------------------------------------------------------------------------- loading

def builtin_dir():
    """The knowledge files shipped with virtdoctor (package ``virtdoctor.knowledge_data``).

    In a source checkout that is not installed, the package does not exist under that
    name; the repository's ``knowledge/`` folder is used instead."""
    from importlib import resources

    try:
        return resources.files("virtdoctor.knowledge_data")
    except ModuleNotFoundError:
        return pathlib.Path(__file__).resolve().parent.parent / "knowledge"


def _problem(name: str, message: str) -> ToolError:
    return ToolError(f"knowledge file {name}: {message}")


def _validate(name: str, stem: str, data: dict[str, Any]) -> Entry:
    missing = [k for k in SCHEMA if k not in data]
    if missing:
        raise _problem(name, f"missing key(s) {', '.join(missing)}")
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise _problem(name, f"unknown key(s) {', '.join(unknown)}")
    for key, (typ, elem) in SCHEMA.items():
        value = data[key]
        if not isinstance(value, typ):
            raise _problem(name, f"{key} must be a {typ.__name__}, not {type(value).__name__}")
        if elem is not None and not all(isinstance(v, elem) for v in value):
            raise _problem(name, f"every item of {key} must be a {elem.__name__}")
    slug = data["slug"]
    if slug != stem:
        raise _problem(name, f"slug {slug!r} differs from the file name {stem!r}")
    if not _SLUG_RE.match(slug):
        raise _problem(name, f"slug {slug!r} is not lower-case words joined by '-'")
    for key in ("title", "cause", "fix"):
        if not data[key].strip():
            raise _problem(name, f"{key} is empty")
    if not data["scope"]:
        raise _problem(name, "scope is empty")
    bad = [s for s in data["scope"] if s not in SCOPES]
    if bad:
        raise _problem(name, f"scope {bad[0]!r} is not one of {', '.join(SCOPES)}")
    if data["auto"] not in AUTOS:
        raise _problem(name, f"auto {data['auto']!r} is not one of {', '.join(AUTOS)}")
    for check in data["checks"]:
        if not _SLUG_RE.match(check):
            raise _problem(name, f"check {check!r} is not a slug")
    knowledge_only = set(data["scope"]) <= {"message", "build"}
    if knowledge_only and data["checks"]:
        raise _problem(name, "a message/build-only entry has no checks")
    if knowledge_only and not data["patterns"]:
        raise _problem(name, "a message/build-only entry needs at least one pattern")
    for i, pattern in enumerate(data["patterns"]):
        if not pattern:
            raise _problem(name, f"patterns[{i}] is empty")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _problem(name, f"patterns[{i}] {pattern!r} does not compile: {exc}") from None
    for ref in data["references"]:
        if not ref.startswith(("http://", "https://")):
            raise _problem(name, f"reference {ref!r} is not an http(s) link")
    return Entry(
        slug=slug, title=data["title"].strip(), scope=tuple(data["scope"]),
        checks=tuple(data["checks"]), patterns=tuple(data["patterns"]), cause=data["cause"].strip(),
        fix=data["fix"].strip(), commands=tuple(data["commands"]), auto=data["auto"],
        exceptions=data["exceptions"].strip(), references=tuple(data["references"]), path=name,
    )


def load_file(path) -> Entry:
    """Read and validate one knowledge file (a Path or an importlib.resources Traversable)."""
    name = str(path)
    stem = path.name[:-5] if path.name.endswith(".toml") else path.name
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _problem(name, f"cannot read: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _problem(name, "not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise _problem(name, f"not valid TOML: {exc}") from None
    return _validate(name, stem, data)


def load(dirs: Iterable) -> "KnowledgeBase":
    """Load every ``*.toml`` of each directory, in order. A later directory's entry replaces
    an earlier one with the same slug (a plugin may refine a built-in entry)."""
    entries: dict[str, Entry] = {}
    for d in dirs:
        try:
            files = sorted((p for p in d.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name)
        except OSError as exc:
            raise ToolError(f"knowledge directory {d}: {exc.strerror or exc}") from None
        for path in files:
            entry = load_file(path)
            entries[entry.slug] = entry
    return KnowledgeBase(entries)


# --------------------------------------------------------------------------- pattern analysis

_LIT = _sre_c.LITERAL
_SUBPATTERN = _sre_c.SUBPATTERN
_BRANCH = _sre_c.BRANCH
_AT = _sre_c.AT
_REPEATS = (_sre_c.MAX_REPEAT, _sre_c.MIN_REPEAT) + ((_sre_c.POSSESSIVE_REPEAT,) if hasattr(_sre_c, "POSSESSIVE_REPEAT") else ())


def _alternatives(seq) -> list[list[str]]:
    """The literal runs each alternative of a parsed pattern requires: a list (one item per
    top-level alternative) of lists of strings that must all occur. Conservative: anything
    not understood ends the current run."""
    alts: list[list[str]] = [[]]
    cur: list[str] = []

    def flush():
        if cur:
            for a in alts:
                a.append("".join(cur))
            cur.clear()

    for op, av in seq:
        if op is _LIT:
            cur.append(chr(av))
        elif op is _SUBPATTERN and av[1] == 0 and av[2] == 0:  # group without flag changes
            inner = _alternatives(av[3])
            if len(inner) == 1:
                runs = inner[0]
                # a one-alternative group continues the current run only when it is one literal
                sub = list(av[3])
                if sub and all(o is _LIT for o, _ in sub):
                    cur.extend(chr(v) for _, v in sub)
                else:
                    flush()
                    for a in alts:
                        a.extend(runs)
            else:
                flush()
                if len(alts) * len(inner) <= 16:
                    alts = [a + b for a in alts for b in inner]
        elif op is _BRANCH:
            flush()
            branches = [_alternatives(b) for b in av[1]]
            merged = [x for b in branches for x in b]
            if len(alts) * len(merged) <= 16:
                alts = [a + b for a in alts for b in merged]
        elif op in _REPEATS and av[0] >= 1:
            flush()
            inner = _alternatives(av[2])
            if len(inner) == 1:
                for a in alts:
                    a.extend(inner[0])
        elif op is _AT:
            continue  # zero-width (\b, ^): the literals on both sides stay adjacent
        else:
            flush()
    flush()
    return alts


def _specificity(seq) -> int:
    """Literal characters a match needs at the least; anchors count 4."""
    n = 0
    for op, av in seq:
        if op is _LIT:
            n += 1
        elif op is _AT:
            n += 4
        elif op is _SUBPATTERN:
            n += _specificity(av[3])
        elif op is _BRANCH:
            n += min(_specificity(b) for b in av[1])
        elif op in _REPEATS:
            n += av[0] * _specificity(av[2]) if av[0] else 0
    return n


@dataclass(eq=False)
class _Pattern:
    slug: str
    text: str
    regex: re.Pattern
    score: float
    keys: list[str]  # one required literal per alternative; [] when none is long enough


_MIN_KEY = 4


def _analyse(slug: str, text: str) -> _Pattern:
    regex = re.compile(text)
    parsed = _sre_parse.parse(text)
    spec = _specificity(parsed)
    score = round(spec / (spec + 20.0), 3)
    keys: list[str] = []
    for runs in _alternatives(parsed):
        best = max(runs, key=len, default="")
        if len(best) < _MIN_KEY:
            keys = []
            break
        keys.append(best)
    return _Pattern(slug, text, regex, score, keys)


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


# --------------------------------------------------------------------------- the base

_BLOCK = 8 << 20  # bytes read at once
_MAX_CARRY = 4 << 20  # a "line" longer than this is cut (a match across the cut is lost)
_LINE_SHOWN = 2000


class KnowledgeBase:
    def __init__(self, entries: dict[str, Entry]):
        self.entries: dict[str, Entry] = dict(sorted(entries.items()))
        self._compiled: list[_Pattern] | None = None
        self._scan_rx: re.Pattern | None = None
        self._by_key: dict[bytes, list[_Pattern]] = {}
        self._unkeyed: list[tuple[_Pattern, re.Pattern]] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, slug: object) -> bool:
        return slug in self.entries

    def get(self, slug: str) -> Entry | None:
        return self.entries.get(slug)

    # -- matching a message
    @property
    def patterns(self) -> list[_Pattern]:
        if self._compiled is None:
            self._compiled = [_analyse(e.slug, p) for e in self.entries.values() for p in e.patterns]
        return self._compiled

    def _match_with(self, text: str, patterns: Iterable[_Pattern]) -> dict[str, tuple[float, str]]:
        best: dict[str, tuple[float, str]] = {}
        for p in patterns:
            if p.slug in best and best[p.slug][0] >= p.score:
                continue
            m = p.regex.search(text)
            if m:
                start = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.end())
                line = text[start:end if end >= 0 else len(text)].strip()
                best[p.slug] = (p.score, line[:_LINE_SHOWN])
        return best

    def match(self, text: str) -> list[Match]:
        """Catalogue entries whose patterns occur in `text`, best first, each slug once."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        found = self._match_with(text, self.patterns)
        out = []
        for slug, (score, line) in found.items():
            e = self.entries[slug]
            out.append(Match(slug, score, e.title, e.cause, e.fix, e.commands, e.auto, line))
        out.sort(key=lambda m: (-m.score, m.id))
        return out

    # -- scanning a log
    def _prepare_scan(self) -> None:
        if self._scan_rx is not None:
            return
        by_key: dict[bytes, list[_Pattern]] = {}
        self._unkeyed = []
        for p in self.patterns:
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

    def scan_log(self, source) -> LogReport:
        """Count each slug's lines in a log: a path, a binary file object or an iterable of
        byte lines. Understands libvirtd (`2026-11-25 20:00:58.119+0000: ...`), QEMU
        (`2026-11-25T20:00:58.119142Z ...`), `journalctl -o short-iso[-precise]`,
        `journalctl -o export` (timestamps from `__REALTIME_TIMESTAMP`) and journalctl's
        default / syslog lines (`Nov 25 20:00:58 host libvirtd[1]: ...`, no year)."""
        self._prepare_scan()
        if isinstance(source, (str, os.PathLike)):
            name = os.fspath(source)
            try:
                size = os.stat(name).st_size if os.path.isfile(name) else 0
                if size >= _PARALLEL_MIN and (os.cpu_count() or 1) > 1:
                    report = self._scan_parallel(name, size)
                    if report is not None:
                        return report
                with open(name, "rb") as fh:
                    return self._scan_blocks(name, _file_blocks(fh))
            except OSError as exc:
                raise ToolError(f"cannot read {name}: {exc.strerror or exc}") from None
        if hasattr(source, "read"):
            return self._scan_blocks(getattr(source, "name", "<stream>"), _file_blocks(source))
        return self._scan_blocks("<lines>", _line_blocks(source))

    def _scan_parallel(self, name: str, size: int) -> LogReport | None:
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
        global _FORK_KB
        _FORK_KB = self
        try:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                parts = list(pool.map(_scan_range, [name] * workers, cuts[:-1], cuts[1:]))
        except (OSError, concurrent.futures.process.BrokenProcessPool, PermissionError):
            return None
        finally:
            _FORK_KB = None
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

    def _scan_blocks(self, name: str, blocks: Iterator[bytes]) -> LogReport:
        report = LogReport(str(name))
        unkeyed = self._unkeyed or []
        search = self._scan_rx.search if self._scan_rx is not None else None
        by_key = self._by_key
        for buf in blocks:
            report.bytes += len(buf)
            report.lines += buf.count(b"\n")
            cands: dict[int, list[_Pattern]] = {}
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
                found = self._match_with(line, cands[start])
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


_PARALLEL_MIN = 32 << 20  # files at least this large are scanned by several processes
_PARALLEL_MAX = 4
_FORK_KB: "KnowledgeBase | None" = None


def _scan_range(name: str, start: int, end: int) -> LogReport:
    """Worker: scan bytes [start, end) of a file with the knowledge base inherited by fork."""
    kb = _FORK_KB
    assert kb is not None

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

    return kb._scan_blocks(name, blocks())


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


# --------------------------------------------------------------------------- unknown messages

# libvirt 9.0.0 src/util/virerror.c, virErrorMsgStrings (the prefixes that matter here)
PREFIXES: tuple[tuple[str, str], ...] = (
    ("internal error: ", "VIR_ERR_INTERNAL_ERROR"),
    ("unsupported configuration: ", "VIR_ERR_CONFIG_UNSUPPORTED"),
    ("XML error: ", "VIR_ERR_XML_ERROR"),
    ("Requested operation is not valid: ", "VIR_ERR_OPERATION_INVALID"),
    ("operation failed: ", "VIR_ERR_OPERATION_FAILED"),
    ("invalid argument: ", "VIR_ERR_INVALID_ARG"),
    ("Domain not found: ", "VIR_ERR_NO_DOMAIN"),
    ("Network not found: ", "VIR_ERR_NO_NETWORK"),
    ("this function is not supported by the connection driver: ", "VIR_ERR_NO_SUPPORT"),
    ("no connection driver available for ", "VIR_ERR_NO_CONNECT"),
    ("authentication failed: ", "VIR_ERR_AUTH_FAILED"),
    ("authentication unavailable: ", "VIR_ERR_AUTH_UNAVAILABLE"),
    ("authentication cancelled: ", "VIR_ERR_AUTH_CANCELLED"),
    ("Operation not supported: ", "VIR_ERR_OPERATION_UNSUPPORTED"),
    ("access denied: ", "VIR_ERR_ACCESS_DENIED"),
    ("Unsafe migration: ", "VIR_ERR_MIGRATE_UNSAFE"),
)
_PREFIX_RE = re.compile("|".join(re.escape(p) for p, _ in PREFIXES))
_CODE = dict(PREFIXES)
_DAEMON_RE = re.compile(
    r"^(?P<ts>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d+)?[+-]\d{4}): (?P<thread>\d+): "
    r"(?P<level>debug|info|warning|error) : (?:(?P<function>[A-Za-z_]\w*):(?P<lineno>\d+) : )?(?P<msg>.*)$"
)
_HANDLER_RE = re.compile(r"libvirt: (?P<domain>[^:]*?) ?error : (?P<msg>.*)$")
_QEMU_RE = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z) (?P<msg>.*)$")
_STRERROR = {os.strerror(n): name for n, name in _errno.errorcode.items()}
_ERRNO_RE = re.compile(": (" + "|".join(sorted((re.escape(s) for s in _STRERROR), key=len, reverse=True)) + r")\.?\s*$")


def parse_error(text: str) -> dict[str, Any]:
    """What can be read from an unknown libvirt message: virsh's `error: ` lines, a daemon
    log line's time/thread/level/function, the default handler's error domain
    (`libvirt: <domain> error : `), the libvirt prefix and its VIR_ERR_* code, and a
    trailing strerror text with its errno name. Keys are present only when found."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    out: dict[str, Any] = {}
    if not lines:
        return out
    virsh = [ln[len("error: "):] for ln in lines if ln.startswith("error: ")]
    if virsh:
        out["virsh"] = virsh
    # the line that carries the libvirt message: the last virsh error line, else the
    # first line with a known prefix, else the first line
    msg = None
    if virsh:
        msg = virsh[-1]
    else:
        for ln in lines:
            if _PREFIX_RE.search(ln):
                msg = ln
                break
        if msg is None:
            msg = lines[0]
    m = _DAEMON_RE.match(msg)
    if m:
        out.update({"timestamp": m["ts"], "thread": int(m["thread"]), "level": m["level"]})
        if m["function"]:
            out["function"] = m["function"]
            out["function_line"] = int(m["lineno"])
        msg = m["msg"]
    else:
        m = _QEMU_RE.match(msg)
        if m:
            out["timestamp"] = m["ts"]
            msg = m["msg"]
    m = _HANDLER_RE.search(msg)
    if m:
        out["domain"] = m["domain"].strip()
        msg = m["msg"]
    p = _PREFIX_RE.search(msg)
    if p:
        out["prefix"] = p.group(0).strip()
        out["code"] = _CODE[p.group(0)]
        if p.start() > 0:
            out["context"] = msg[:p.start()].rstrip(": ")
        out["detail"] = msg[p.end():]
    e = _ERRNO_RE.search(msg)
    if e:
        out["strerror"] = e.group(1)
        out["errno"] = _STRERROR[e.group(1)]
    out["message"] = msg
    return out
