"""Domain XML edits as data: the operations that turn one XML into another
(set/remove an attribute, set an element's text, remove an element, insert an
element's XML after a sibling), addressed by element paths, so a plan can be
printed and saved, and re-applied at fix time to the domain's XML *with
secrets* (graphics passwords the checks' read-only connection never sees).

`diff_ops(old, new)` computes them; `apply_ops(xml, ops)` re-applies them and
raises EditConflict when a path no longer resolves (the domain changed)."""
from __future__ import annotations

import difflib
from dataclasses import dataclass

OPS = ("set-attribute", "remove-attribute", "set-text", "remove-element", "insert-element")


class EditConflict(Exception):
    pass


@dataclass(frozen=True)
class EditOp:
    """One edit. `path` is a tuple of steps 'tag[n]' (n-th child of that tag,
    1-based) from the root; insert-element puts `xml` after the child at
    `path` + (`after`,) or first when `after` is None."""

    op: str
    path: tuple[str, ...]
    name: str | None = None  # attribute name
    value: str | None = None  # attribute value or text
    xml: str | None = None  # the element inserted
    after: str | None = None  # insert-element: the sibling step it follows (None: first child)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown edit operation {self.op!r}")
        object.__setattr__(self, "path", tuple(self.path))

    def to_dict(self) -> dict:
        d = {"op": self.op, "path": "/" + "/".join(self.path)}
        for k in ("name", "value", "xml", "after"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EditOp":
        path = d["path"]
        steps = tuple(_split_path(path)) if isinstance(path, str) else tuple(path)
        return cls(d["op"], steps, d.get("name"), d.get("value"), d.get("xml"), d.get("after"))

    def describe(self) -> str:
        where = "/" + "/".join(self.path)
        if self.op == "set-attribute":
            return f"set {where}/@{self.name}={self.value!r}"
        if self.op == "remove-attribute":
            return f"remove {where}/@{self.name}"
        if self.op == "set-text":
            return f"set the text of {where} to {self.value!r}"
        if self.op == "remove-element":
            return f"remove {where}"
        return f"insert {self.xml.strip()} in {where}" + (f" after {self.after}" if self.after else " first")


def _split_path(path: str) -> list[str]:
    """'/domain/devices/disk[2]' -> steps; '{uri}tag' steps keep their braces."""
    out, cur, depth = [], "", 0
    for ch in path.lstrip("/"):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "/" and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def _children(el) -> list:
    return [c for c in el if isinstance(c.tag, str)]


def _step(el) -> str:
    parent = el.getparent()
    if parent is None:
        return f"{el.tag}[1]"
    same = [c for c in parent if c.tag == el.tag]
    return f"{el.tag}[{same.index(el) + 1}]"


def _find(root, path: tuple[str, ...]):
    if not path:
        raise EditConflict("empty path")
    first = path[0].rsplit("[", 1)[0]
    if root.tag != first:
        raise EditConflict(f"the root is <{root.tag}>, not <{first}>")
    el = root
    for step in path[1:]:
        el = _child(el, step, path)
    return el


def _child(el, step: str, path):
    tag, _, n = step.rpartition("[")
    same = [c for c in el if c.tag == tag]
    idx = int(n.rstrip("]")) - 1
    if idx >= len(same):
        raise EditConflict(f"/{'/'.join(path)} no longer exists")
    return same[idx]


def _norm_text(t: str | None) -> str | None:
    return None if t is None or not t.strip() else t


def _fingerprint(el) -> bytes:
    from lxml import etree

    tail, el.tail = el.tail, None
    try:
        return etree.tostring(el)
    finally:
        el.tail = tail


def diff_ops(old_xml: str, new_xml: str) -> tuple[EditOp, ...]:
    """The operations that turn `old_xml` into `new_xml` (whitespace-only text
    and indentation ignored)."""
    from virtdoctor.domxml import parse_xml_document

    old = parse_xml_document(old_xml, "old XML").getroot()
    new = parse_xml_document(new_xml, "new XML").getroot()
    ops: list[EditOp] = []
    if old.tag != new.tag:
        raise ValueError("the edit replaced the root element")
    _diff(old, new, (_step(old),), ops)
    return tuple(ops)


def _diff(o, n, path: tuple[str, ...], ops: list[EditOp]) -> None:
    for k in o.attrib:
        if k not in n.attrib:
            ops.append(EditOp("remove-attribute", path, name=k))
    for k, v in n.attrib.items():
        if o.get(k) != v:
            ops.append(EditOp("set-attribute", path, name=k, value=v))
    if _norm_text(o.text) != _norm_text(n.text):
        ops.append(EditOp("set-text", path, value=n.text or ""))
    oc, nc = _children(o), _children(n)
    sm = difflib.SequenceMatcher(a=[_fingerprint(c) for c in oc], b=[_fingerprint(c) for c in nc],
                                 autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        olds, news = oc[i1:i2], nc[j1:j2]
        # within a changed block, pair children by tag so a changed element is edited in
        # place (keeping attributes the checks never saw), not removed and re-inserted
        sub = difflib.SequenceMatcher(a=[c.tag for c in olds], b=[c.tag for c in news], autojunk=False)
        prev = oc[i1 - 1] if i1 > 0 else None
        for t2, a1, a2, b1, b2 in sub.get_opcodes():
            if t2 == "equal":
                for oe, ne in zip(olds[a1:a2], news[b1:b2]):
                    _diff(oe, ne, path + (_step(oe),), ops)
                prev = olds[a2 - 1]
                continue
            for oe in olds[a1:a2]:
                ops.append(EditOp("remove-element", path + (_step(oe),)))
            for ne in news[b1:b2]:
                ops.append(EditOp("insert-element", path, xml=_xml_of(ne),
                                  after=_step(prev) if prev is not None else None))
            if a2 > a1:
                prev = olds[a2 - 1]


def _xml_of(el) -> str:
    from virtdoctor.domxml import serialise

    return serialise(el).rstrip("\n")


def apply_ops(xml: str, ops: tuple[EditOp, ...] | list[EditOp]) -> str:
    """`xml` with `ops` applied; EditConflict when a path no longer resolves.
    Every path is resolved on the unedited tree first, so the operations do not
    shift each other's positions."""
    from lxml import etree

    from virtdoctor.domxml import append_child, parse_xml_document, remove_element, serialise

    root = parse_xml_document(xml, "domain XML").getroot()
    resolved = []
    for op in ops:
        target = _find(root, op.path)
        anchor = _child(target, op.after, op.path + (op.after,)) if op.op == "insert-element" and op.after else None
        resolved.append((op, target, anchor))
    last_inserted: dict = {}
    for op, target, anchor in resolved:
        if op.op == "set-attribute":
            target.set(op.name, op.value)
        elif op.op == "remove-attribute":
            target.attrib.pop(op.name, None)
        elif op.op == "set-text":
            target.text = op.value
    for op, target, anchor in resolved:
        if op.op == "insert-element":
            new = etree.fromstring(op.xml.encode())
            key = (id(target), id(anchor))
            ref = last_inserted.get(key, anchor)
            if ref is None:
                kids = _children(target)
                if kids:
                    first = kids[0]
                    indent = target.text
                    first.addprevious(new)
                    new.tail = indent
                else:
                    append_child(target, new)
            else:
                tail = ref.tail
                ref.addnext(new)
                new.tail = tail
            last_inserted[key] = new
    for op, target, anchor in resolved:
        if op.op == "remove-element":
            if target.getparent() is not None:
                remove_element(target)
    return serialise(root)
