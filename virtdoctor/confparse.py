"""Parser and editor for libvirt's configuration-file syntax.

Covers libvirtd.conf, qemu.conf, libvirt.conf, virtqemud.conf and friends:
everything libvirt reads through ``virConfReadFile()`` in
``src/util/virconf.c`` (without the VMX/LXC dialect flags).  Standard
library only.

The grammar implemented here is libvirt's, not a guess at it; the parser is a
line-by-line port of ``virConfParse()`` and was checked against libvirt 9.0's
own parser (via ``virsh`` reading a user ``libvirt.conf``).  Points worth
knowing, because they differ from what people usually assume:

* A name is ``[A-Za-z][A-Za-z0-9_]*``: no leading ``_``, no ``.`` or ``-``.
* Values: ``"string"``, ``'string'``, ``\"\"\"triple-quoted\"\"\"`` (may span
  lines), integers with optional ``-``/``+`` sign, and lists ``[ v, v, ]``
  (nested lists allowed, trailing comma allowed, may span lines).  There are
  no booleans: libvirt writes them as ``0``/``1`` and ``virConfGetValueBool``
  only accepts an *unsigned* 0 or 1 (``-0`` is rejected).
* Strings have **no escape sequences**: a backslash is a literal backslash and
  the string ends at the next matching quote.  Single- and double-quoted
  strings cannot contain a newline.
* ``#`` starts a comment outside strings, but **comments are not allowed
  inside a list**: libvirt fails with "expecting a value" / "expecting a
  separator in list".
* The value must start on the same line as ``=``.
* Statements are separated by newlines or ``;``.
* A file that is non-empty but contains only blanks/newlines is a syntax error
  in libvirt ("expecting a name"), and so it is here.
* Duplicate keys: ``virConfGetValue()`` returns the **first** entry with that
  name, so the first assignment wins (not the last).

Error messages and line numbers are libvirt's own, so a ``ConfError`` reads
like the line libvirtd/virtqemud writes to the journal.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

__all__ = [
    "ConfError",
    "Conf",
    "Entry",
    "Comment",
    "parse",
    "set_key",
    "remove_key",
    "render_value",
    "KEY_RE",
]

Value = Union[str, int, list]

#: What virConfParseName accepts (without the VMX/LXC format flags).
KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

_BLANK = " \t"
_EOL = "\n\r"
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGIT = frozenset("0123456789")
_NAMECHAR = _ALPHA | _DIGIT | {"_"}


class ConfError(Exception):
    """A syntax error, reported the way libvirt reports it."""

    def __init__(self, path: str, line: int, msg: str):
        super().__init__(path, line, msg)
        self.path = path
        self.line = line
        self.msg = msg

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.msg}"


@dataclass
class Entry:
    """One ``key = value`` statement, with its position in the source text.

    Offsets are indexes into the parsed text: ``start`` is where the key
    begins, ``value_start``/``value_end`` delimit the value as written, and
    ``end`` is the end of the statement including a trailing ``# comment``.
    ``type`` is libvirt's value type: "llong" (written with a leading ``-``),
    "ullong", "string" or "list".
    """

    key: str
    value: Value
    type: str
    line: int
    end_line: int
    start: int
    value_start: int
    value_end: int
    end: int
    comment: str | None = None


@dataclass
class Comment:
    """A standalone ``# ...`` comment (text excludes the ``#``)."""

    text: str
    line: int
    start: int
    end: int


@dataclass
class Conf:
    """A parsed configuration file."""

    path: str = "<string>"
    entries: list[Entry] = field(default_factory=list)
    comments: list[Comment] = field(default_factory=list)

    # --- lookup (first assignment wins, as in virConfGetValue) ---------------
    def entry(self, key: str) -> Entry | None:
        for e in self.entries:
            if e.key == key:
                return e
        return None

    def get(self, key: str, default: Any = None) -> Any:
        e = self.entry(key)
        if e is None:
            return default
        return copy.deepcopy(e.value)

    def __getitem__(self, key: str) -> Value:
        e = self.entry(key)
        if e is None:
            raise KeyError(key)
        return copy.deepcopy(e.value)

    def __contains__(self, key: object) -> bool:
        return any(e.key == key for e in self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        """Distinct keys, in order of first assignment."""
        seen: dict[str, None] = {}
        for e in self.entries:
            seen.setdefault(e.key, None)
        return list(seen)

    def items(self) -> list[tuple[str, Value]]:
        return [(k, self.get(k)) for k in self.keys()]

    def line_of(self, key: str) -> int | None:
        """Line of the assignment libvirt uses (the first one), or None."""
        e = self.entry(key)
        return None if e is None else e.line

    def type_of(self, key: str) -> str | None:
        e = self.entry(key)
        return None if e is None else e.type

    def duplicates(self) -> list[str]:
        """Keys assigned more than once, in order of first assignment.

        libvirt uses the *first* assignment; later ones are silently ignored.
        """
        counts: dict[str, int] = {}
        for e in self.entries:
            counts[e.key] = counts.get(e.key, 0) + 1
        return [k for k, n in counts.items() if n > 1]

    def lines_of(self, key: str) -> list[int]:
        """Every line where ``key`` is assigned."""
        return [e.line for e in self.entries if e.key == key]

    def commented_keys(self) -> list[str]:
        """Keys that appear as commented-out settings (``#key = ...``).

        This is how shipped qemu.conf/libvirtd.conf document their defaults.
        """
        seen: dict[str, None] = {}
        for c in self.comments:
            m = _COMMENTED_RE.match(c.text)
            if m:
                seen.setdefault(m.group(1), None)
        return list(seen)


_COMMENTED_RE = re.compile(r"[ \t]?([A-Za-z][A-Za-z0-9_]*)[ \t]*=(?=[ \t]*[\"'\[+\-0-9])")


# --- parser: a port of virConfParse() ----------------------------------------


class _Parser:
    def __init__(self, text: str, path: str):
        self.text = text
        self.path = path
        self.pos = 0
        self.end = len(text)
        self.line = 1
        self.conf = Conf(path=path)

    # CUR reads the NUL terminator at end-of-buffer in C.
    def cur(self) -> str:
        return self.text[self.pos] if self.pos < self.end else "\0"

    def error(self, msg: str) -> ConfError:
        return ConfError(self.path, self.line, msg)

    def skip_blanks(self) -> None:
        t, p, e = self.text, self.pos, self.end
        while p < e and t[p] in _BLANK:
            p += 1
        self.pos = p

    def skip_blanks_and_eol(self) -> None:
        t, p, e = self.text, self.pos, self.end
        while p < e and (t[p] in _BLANK or t[p] in _EOL):
            if t[p] == "\n":
                self.line += 1
            p += 1
        self.pos = p

    def parse(self) -> Conf:
        while self.pos < self.end:
            self.statement()
            self.separator()
        return self.conf

    def separator(self) -> None:
        self.skip_blanks()
        if self.pos >= self.end:
            return
        c = self.cur()
        if c in _EOL:
            self.skip_blanks_and_eol()
        elif c == ";":
            self.pos += 1
            self.skip_blanks_and_eol()
        else:
            raise self.error("expecting a separator")

    def statement(self) -> None:
        self.skip_blanks_and_eol()
        if self.cur() == "#":
            start, line = self.pos, self.line
            self.pos += 1
            base = self.pos
            self.to_eol()
            self.conf.comments.append(
                Comment(self.text[base:self.pos], line, start, self.pos)
            )
            return
        start, line = self.pos, self.line
        name = self.name()
        self.skip_blanks()
        if self.cur() != "=":
            raise self.error("expecting an assignment")
        self.pos += 1
        self.skip_blanks()
        value_start = self.pos
        value, vtype = self.value()
        value_end, end_line = self.pos, self.line
        self.skip_blanks()
        comment = None
        stmt_end = value_end
        if self.cur() == "#":
            self.pos += 1
            base = self.pos
            self.to_eol()
            comment = self.text[base:self.pos]
            stmt_end = self.pos
        self.conf.entries.append(
            Entry(
                key=name,
                value=value,
                type=vtype,
                line=line,
                end_line=end_line,
                start=start,
                value_start=value_start,
                value_end=value_end,
                end=stmt_end,
                comment=comment,
            )
        )

    def to_eol(self) -> None:
        t, p, e = self.text, self.pos, self.end
        while p < e and t[p] not in _EOL:
            p += 1
        self.pos = p

    def name(self) -> str:
        self.skip_blanks()
        base = self.pos
        if self.cur() not in _ALPHA:
            raise self.error("expecting a name")
        t, p, e = self.text, self.pos, self.end
        while p < e and t[p] in _NAMECHAR:
            p += 1
        self.pos = p
        return t[base:p]

    def value(self) -> tuple[Value, str]:
        self.skip_blanks()
        if self.pos >= self.end:
            raise self.error("expecting a value")
        c = self.cur()
        if c in "\"'":
            return self.string(), "string"
        if c == "[":
            self.pos += 1
            self.skip_blanks_and_eol()
            items: list[Value] = []
            if self.pos < self.end and self.cur() != "]":
                items.append(self.value()[0])
                self.skip_blanks_and_eol()
            while self.pos < self.end and self.cur() != "]":
                if self.cur() != ",":
                    raise self.error("expecting a separator in list")
                self.pos += 1
                self.skip_blanks_and_eol()
                if self.cur() == "]":
                    break
                items.append(self.value()[0])
                self.skip_blanks_and_eol()
            if self.cur() == "]":
                self.pos += 1
            else:
                raise self.error("list is not closed with ]")
            return items, "list"
        if c in _DIGIT or c in "+-":
            vtype = "llong" if c == "-" else "ullong"
            return self.number(), vtype
        raise self.error("expecting a value")

    def number(self) -> int:
        neg = False
        if self.cur() == "-":
            neg = True
            self.pos += 1
        elif self.cur() == "+":
            self.pos += 1
        if self.pos >= self.end or self.cur() not in _DIGIT:
            raise self.error("unterminated number")
        t, p, e = self.text, self.pos, self.end
        base = p
        while p < e and t[p] in _DIGIT:
            p += 1
        self.pos = p
        n = int(t[base:p])
        return -n if neg else n

    def string(self) -> str:
        t = self.text
        c = self.cur()
        if c == "'":
            return self.quoted("'")
        if self.pos + 6 < self.end and t.startswith('"""', self.pos):
            # python-style triple quotes; may span lines
            self.pos += 3
            base = self.pos
            idx = t.find('"""', base)
            if idx < 0:
                stop = max(base, self.end - 2)
                self.line += t.count("\n", base, stop)
                self.pos = stop
                raise self.error("unterminated string")
            self.line += t.count("\n", base, idx)
            self.pos = idx + 3
            return t[base:idx]
        return self.quoted('"')

    def quoted(self, q: str) -> str:
        t, e = self.text, self.end
        self.pos += 1
        base = p = self.pos
        while p < e and t[p] != q and t[p] not in _EOL:
            p += 1
        self.pos = p
        if self.cur() != q:
            raise self.error("unterminated string")
        self.pos += 1
        return t[base:p]


def parse(text: str, path: str = "<string>") -> Conf:
    """Parse libvirt config text; raise ConfError on a syntax error."""
    return _Parser(text, path).parse()


# --- rendering ----------------------------------------------------------------


def _normalize(value: Any) -> Value:
    """bool -> int, tuple -> list, recursively; reject unsupported types."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    raise TypeError(f"cannot render {type(value).__name__} as a libvirt config value")


def _same(a: Value, b: Value) -> bool:
    """Type-strict equality (so 1 != "1" and lists compare element-wise)."""
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and a == b


def _render_str(s: str) -> str:
    # Same choice of quoting as virConfSaveValue(); there are no escapes.
    if "\0" in s:
        raise ValueError("libvirt config strings cannot contain NUL")
    if "\n" not in s and "\r" not in s:
        if '"' not in s:
            return f'"{s}"'
        if "'" not in s:
            return f"'{s}'"
    if '"""' in s or s.endswith('"'):
        raise ValueError(
            f"string {s!r} cannot be written in libvirt config syntax "
            "(it has no escape sequences)"
        )
    return f'"""{s}"""'


def render_value(value: Any, indent: str | None = None) -> str:
    """Render a Python value in libvirt config syntax.

    str -> quoted string (``"..."``; ``'...'`` if it contains ``"``;
    triple-quoted if it has a newline or both quote kinds), bool -> 1/0,
    int -> digits, list/tuple -> ``["a", "b"]``.  With ``indent`` (a string
    of blanks) a non-empty list is written one element per line.
    Raises TypeError for other types and ValueError for strings that the
    syntax cannot represent (libvirt strings have no escapes).
    """
    v = _normalize(value)
    return _render(v, indent)


def _render(v: Value, indent: str | None = None, nl: str = "\n") -> str:
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _render_str(v)
    if indent is not None and v:
        body = ("," + nl).join(indent + _render(x) for x in v)
        return "[" + nl + body + nl + "]"
    return "[" + ", ".join(_render(x) for x in v) + "]"


# --- editing ------------------------------------------------------------------


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise ValueError(f"invalid libvirt config key: {key!r}")


def _newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _list_indent(text: str, e: Entry) -> str | None:
    """Indentation of the first element if ``e`` is a list spread over lines."""
    if e.type != "list" or e.end_line == e.line:
        return None
    seg = text[e.value_start + 1 : e.value_end]
    m = re.match(r"[ \t]*\r?\n([ \t]*)\S", seg)
    if m is None:
        return None
    return m.group(1) or "  "


def set_key(text: str, key: str, value: Any, path: str = "<string>") -> str:
    """Return ``text`` with ``key`` set to ``value``, everything else kept.

    * If the key is assigned, its value is replaced in place (every
      assignment, if it is duplicated), keeping trailing comments.  A list
      that was spread over several lines stays spread over several lines.
    * Else, if it appears commented out (``#key = ...``), the new line goes
      right after the last such comment (after the whole commented block when
      the comment is a multi-line list).
    * Else it is appended at the end.
    If the key already has exactly that value the text is returned unchanged.
    """
    _check_key(key)
    conf = parse(text, path)
    v = _normalize(value)
    rendered = _render(v)  # validates before touching anything
    nl = _newline_of(text)
    mine = [e for e in conf.entries if e.key == key]
    if mine:
        if all(_same(e.value, v) for e in mine):
            return text
        out = text
        for e in reversed(mine):
            indent = _list_indent(text, e)
            r = _render(v, indent, nl) if indent is not None else rendered
            out = out[: e.value_start] + r + out[e.value_end :]
        new = out
    else:
        stmt = f"{key} = {rendered}"
        pos = _after_commented(text, conf, key)
        if pos is None:
            new = text
            if new and not new.endswith("\n"):
                new += nl
            new += stmt + nl
        else:
            prefix = text[:pos]
            if pos == len(text) and prefix and not prefix.endswith("\n"):
                prefix += nl
            new = prefix + stmt + nl + text[pos:]
    if not _same(parse(new, path).get(key), v):  # pragma: no cover - safety net
        raise RuntimeError(f"set_key({key!r}) produced text that does not round-trip")
    return new


def _line_end(text: str, pos: int) -> int:
    """Offset just past the newline ending the line containing ``pos``."""
    i = text.find("\n", pos)
    return len(text) if i < 0 else i + 1


def _after_commented(text: str, conf: Conf, key: str) -> int | None:
    """Offset where a new ``key`` line goes, after its commented default."""
    last = None
    for i, c in enumerate(conf.comments):
        m = _COMMENTED_RE.match(c.text)
        if not (m and m.group(1) == key):
            continue
        # only whole-line comments (nothing but blanks before the '#')
        ls = text.rfind("\n", 0, c.start) + 1
        if text[ls : c.start].strip(_BLANK):
            continue
        stop = c
        rest = c.text[m.end() :]
        if "[" in rest and "]" not in rest:
            # commented-out multi-line list: skip to the commented ']'
            for nxt in conf.comments[i + 1 :]:
                if nxt.line != stop.line + 1:
                    break
                stop = nxt
                if "]" in nxt.text:
                    break
        last = stop
    if last is None:
        return None
    return _line_end(text, last.end)


def remove_key(text: str, key: str, path: str = "<string>") -> str:
    """Return ``text`` without any assignment of ``key``.

    Whole lines are deleted when the statement has them to itself (including
    a trailing comment on its last line); when it shares a line with other
    statements (``a = 1; b = 2``) only the statement and its ``;`` go.
    Comments elsewhere, blank lines and order are kept.
    """
    _check_key(key)
    conf = parse(text, path)
    mine = [e for e in conf.entries if e.key == key]
    out = text
    for e in reversed(mine):
        ls = out.rfind("\n", 0, e.start) + 1
        le = _line_end(out, e.end)
        before = out[ls : e.start]
        after = out[e.end : le]
        if not before.strip(_BLANK) and not after.strip(" \t\r\n"):
            out = out[:ls] + out[le:]
            continue
        # shares its line: drop the statement plus one adjacent ';'
        j = e.end
        while j < len(out) and out[j] in _BLANK:
            j += 1
        if j < len(out) and out[j] == ";":
            j += 1
            while j < len(out) and out[j] in _BLANK:
                j += 1
            out = out[: e.start] + out[j:]
        else:
            i = e.start
            while i > ls and out[i - 1] in _BLANK:
                i -= 1
            if i > ls and out[i - 1] == ";":
                i -= 1
            out = out[:i] + out[e.end :]
    if out and not out.strip(" \t\r\n"):
        # libvirt rejects a file made only of blank lines
        out = ""
    if key in parse(out, path):  # pragma: no cover - safety net
        raise RuntimeError(f"remove_key({key!r}) left the key behind")
    return out
