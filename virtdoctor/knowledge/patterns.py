"""Matching and scoring: what a pattern requires, how specific it is, which slugs a text shows.

A pattern's score and its scan keys come from the literal text it requires. That is read
from the pattern's source by the small parser below (public API only: no `re._parser`).
It understands the regular-expression syntax of Python's `re` module (documented at
https://docs.python.org/3/library/re.html#regular-expression-syntax) closely enough to
say which characters every match must contain; anything it is unsure of counts as "some
character" (never as a required literal), so a key it derives is always required. When
it cannot read a pattern at all, the pattern scores 0 specificity and has no keys (the
log scan then runs that pattern's full regex over every block: slower, never wrong).

The tree it builds mirrors the shape `re` itself compiles (non-capturing groups inlined,
a branch's common leading items factored out, a branch of single characters read as a
character class), so that scores are those virtdoctor has always computed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

# nodes (tuples, so that equal items compare equal when a branch's prefix is factored):
#   ("lit", ch)                 one literal character
#   ("any",)                    one character of a set, ".", "\d", a negated literal ...
#   ("at",)                     zero-width anchor: ^ $ \A \Z \b \B
#   ("assert",)                 a look-ahead/behind (zero width, requires nothing known)
#   ("ref",)                    a back reference (requires nothing known)
#   ("group", flagged, seq)     a capturing group (flagged: scoped flags (?i:...))
#   ("branch", (seq, ...))      alternatives
#   ("repeat", lo, seq)         seq repeated at least lo times

_CLASS_ESC = set("dDsSwW")
_AT_ESC = set("bBAZ")
_CTRL = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a"}
_QUANT = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


class PatternSyntax(Exception):
    pass


class _Reader:
    def __init__(self, text: str):
        self.s = text
        self.i = 0

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def take(self) -> str:
        if self.i >= len(self.s):
            raise PatternSyntax("unexpected end")
        c = self.s[self.i]
        self.i += 1
        return c

    def eof(self) -> bool:
        return self.i >= len(self.s)


def parse(text: str) -> list:
    """The node sequence of a pattern's source (see the node list above)."""
    r = _Reader(text)
    seq = _alternation(r)
    if not r.eof():
        raise PatternSyntax(f"unbalanced ')' at {r.i}")
    return seq


def _alternation(r: _Reader) -> list:
    items = [_sequence(r)]
    while r.peek() == "|":
        r.take()
        items.append(_sequence(r))
    if len(items) == 1:
        return items[0]
    out: list = []
    # re's parser factors out leading items every alternative shares ...
    while all(items) and all(it[0] == items[0][0] for it in items):
        out.append(items[0][0])
        items = [it[1:] for it in items]
    # ... and turns alternatives of single characters into one character class
    if all(len(it) == 1 and it[0][0] in ("lit", "any") for it in items):
        out.append(("any",))
        return out
    out.append(("branch", tuple(tuple(it) for it in items)))
    return out


def _sequence(r: _Reader) -> list:
    seq: list = []
    while not r.eof() and r.peek() not in "|)":
        atom = _atom(r)
        if atom is None:
            continue
        lo = _quantifier(r)
        if lo is None:
            seq.extend(atom)
            continue
        if len(atom) == 1 and atom[0][0] in ("at", "assert"):
            continue  # a repeated zero-width item requires nothing
        seq.append(("repeat", lo, tuple(atom)))
    return seq


def _quantifier(r: _Reader) -> int | None:
    c = r.peek()
    lo: int | None = None
    if c in ("*", "?"):
        r.take()
        lo = 0
    elif c == "+":
        r.take()
        lo = 1
    elif c == "{":
        m = _QUANT.match(r.s, r.i)
        if m is None or (not m.group(1) and not m.group(2)):
            return None  # a literal "{"
        r.i = m.end()
        lo = int(m.group(1)) if m.group(1) else 0
    else:
        return None
    if r.peek() in ("?", "+"):  # lazy or possessive: the same minimum
        r.take()
    return lo


def _atom(r: _Reader) -> list | None:
    """A list of nodes (a non-capturing group is inlined), or None for nothing at all."""
    c = r.take()
    if c == "(":
        return _group(r)
    if c == "[":
        return [_class(r)]
    if c == ".":
        return [("any",)]
    if c in "^$":
        return [("at",)]
    if c == "\\":
        return [_escape(r)]
    return [("lit", c)]


def _group(r: _Reader) -> list | None:
    capturing, flagged = True, False
    if r.peek() == "?":
        r.take()
        c = r.take()
        if c == ":":
            capturing = False
        elif c == "P":
            c2 = r.take()
            if c2 == "<":
                while r.take() != ">":
                    pass
            elif c2 == "=":
                while r.take() != ")":
                    pass
                return [("ref",)]
            else:
                raise PatternSyntax("unknown (?P")
        elif c == "#":
            while r.take() != ")":
                pass
            return None
        elif c in "=!" or (c == "<" and r.peek() in ("=", "!")):
            if c == "<":
                r.take()
            _alternation(r)
            if r.take() != ")":
                raise PatternSyntax("unclosed look-around")
            return [("assert",)]
        elif c == "(":
            raise PatternSyntax("conditional groups are not read")
        elif c == ">":  # atomic group: matches what its content matches
            capturing = False
        else:  # flags: (?aiLmsux) for the whole pattern, or (?flags:...) scoped
            flags = c
            while r.peek() not in (":", ")"):
                flags += r.take()
            if r.take() == ")":
                return None  # global flags (none of our patterns changes case)
            capturing, flagged = True, True  # scoped flags: re keeps it a group of its own
    seq = _alternation(r)
    if r.take() != ")":
        raise PatternSyntax("unclosed group")
    if capturing or flagged:
        return [("group", flagged, tuple(seq))]
    return seq


def _class(r: _Reader) -> tuple:
    negate = r.peek() == "^"
    if negate:
        r.take()
    chars: list[str] = []
    other = False
    first = True
    while True:
        c = r.take()
        if c == "]" and not first:
            break
        first = False
        if c == "\\":
            e = r.take()
            if e in _CLASS_ESC:
                other = True
                continue
            c = _escaped_char(r, e)
        if r.peek() == "-" and r.peek(2) != "-]" and r.s[r.i + 1:r.i + 2] not in ("]", ""):
            r.take()
            hi = r.take()
            if hi == "\\":
                _escaped_char(r, r.take())
            other = True  # a range
            continue
        chars.append(c)
    if not negate and not other and len(set(chars)) == 1:
        return ("lit", chars[0])  # [.] is the literal "."
    return ("any",)


def _escaped_char(r: _Reader, e: str) -> str:
    if e in _CTRL:
        return _CTRL[e]
    if e == "x":
        return chr(int(r.take() + r.take(), 16))
    if e == "u":
        return chr(int("".join(r.take() for _ in range(4)), 16))
    if e == "U":
        return chr(int("".join(r.take() for _ in range(8)), 16))
    if e == "0":
        digits = ""
        while len(digits) < 2 and r.peek() in "01234567" and r.peek():
            digits += r.take()
        return chr(int(digits or "0", 8))
    if e.isascii() and e.isalnum():
        raise PatternSyntax(f"escape \\{e}")
    return e


def _escape(r: _Reader) -> tuple:
    e = r.take()
    if e in _CLASS_ESC:
        return ("any",)
    if e in _AT_ESC:
        return ("at",)
    if e.isdigit() and e != "0":
        if r.peek().isdigit():
            r.take()
        return ("ref",)
    if e == "N":
        raise PatternSyntax("named characters are not read")
    return ("lit", _escaped_char(r, e))


# --------------------------------------------------------------------------- analysis

def specificity(seq) -> int:
    """Literal characters a match needs at the least; anchors count 4."""
    n = 0
    for node in seq:
        kind = node[0]
        if kind == "lit":
            n += 1
        elif kind == "at":
            n += 4
        elif kind == "group":
            n += specificity(node[2])
        elif kind == "branch":
            n += min(specificity(b) for b in node[1])
        elif kind == "repeat":
            n += node[1] * specificity(node[2]) if node[1] else 0
    return n


def required_runs(seq) -> list[list[str]]:
    """The literal runs each alternative of a pattern requires: a list (one item per
    alternative, at most 16) of lists of strings that must all occur in a match.
    Conservative: anything not understood ends the current run."""
    alts: list[list[str]] = [[]]
    cur: list[str] = []

    def flush():
        if cur:
            for a in alts:
                a.append("".join(cur))
            cur.clear()

    for node in seq:
        kind = node[0]
        if kind == "lit":
            cur.append(node[1])
        elif kind == "group" and not node[1]:
            sub = node[2]
            inner = required_runs(sub)
            if len(inner) == 1:
                if sub and all(n[0] == "lit" for n in sub):
                    cur.extend(n[1] for n in sub)  # a group of literals continues the run
                else:
                    flush()
                    for a in alts:
                        a.extend(inner[0])
            else:
                flush()
                if len(alts) * len(inner) <= 16:
                    alts = [a + b for a in alts for b in inner]
        elif kind == "branch":
            flush()
            merged = [x for b in node[1] for x in required_runs(b)]
            if len(alts) * len(merged) <= 16:
                alts = [a + b for a in alts for b in merged]
        elif kind == "repeat" and node[1] >= 1:
            flush()
            inner = required_runs(node[2])
            if len(inner) == 1:
                for a in alts:
                    a.extend(inner[0])
        elif kind == "at":
            continue  # zero-width (\b, ^): the literals on both sides stay adjacent
        else:
            flush()
    flush()
    return alts


@dataclass(eq=False)
class Pattern:
    """One compiled knowledge pattern with its score and scan keys."""

    slug: str
    text: str
    regex: re.Pattern
    score: float
    keys: list[str]  # one required literal per alternative; [] when none is long enough


MIN_KEY = 4


def analyse(slug: str, text: str) -> Pattern:
    regex = re.compile(text)
    try:
        seq = parse(text)
    except (PatternSyntax, ValueError, IndexError):
        return Pattern(slug, text, regex, 0.0, [])
    spec = specificity(seq)
    score = round(spec / (spec + 20.0), 3)
    keys: list[str] = []
    for runs in required_runs(seq):
        best = max(runs, key=len, default="")
        if len(best) < MIN_KEY:
            keys = []
            break
        keys.append(best)
    return Pattern(slug, text, regex, score, keys)


# --------------------------------------------------------------------------- matching

LINE_SHOWN = 2000  # characters of a matched line kept


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


def match_with(text: str, patterns: Iterable[Pattern]) -> dict[str, tuple[float, str]]:
    """slug -> (best score, the line of `text` its pattern matched)."""
    best: dict[str, tuple[float, str]] = {}
    for p in patterns:
        if p.slug in best and best[p.slug][0] >= p.score:
            continue
        m = p.regex.search(text)
        if m:
            start = text.rfind("\n", 0, m.start()) + 1
            end = text.find("\n", m.end())
            line = text[start:end if end >= 0 else len(text)].strip()
            best[p.slug] = (p.score, line[:LINE_SHOWN])
    return best
