"""libvirt's own RelaxNG domain schema, compiled once per run, and validation
errors located to the element (and attribute) at fault.

The schema is the host's: `/usr/share/libvirt/schemas/domain.rng` below the
facts' root (Debian ships it in `libvirt0`), so the verdicts are the ones
`virsh define --validate` and `virt-xml-validate` give on that host. Compiled
schemas are cached per process, keyed by path, mtime and size.

libxml2's RelaxNG messages name the outermost element that failed (often
`Extra element devices in interleave` at `<devices>`). To say which element is
really wrong, `DomainSchema.validate` narrows each failure down by removing
elements and attributes from a copy of the document until it validates: the
smallest removal that makes the document valid names the culprit.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from lxml import etree

from virtdoctor.model import FactUnavailable

SCHEMA_DIRS = ("/usr/share/libvirt/schemas", "/usr/local/share/libvirt/schemas")
MAX_ERRORS = 10  # per document: every located error, up to this many
_CACHE: dict[tuple[str, float, int], "DomainSchema"] = {}


@dataclass(frozen=True)
class SchemaError:
    line: int | None
    path: str  # /domain/devices/interface/driver
    element: str  # driver
    attribute: str | None  # queues, when one attribute alone is at fault
    value: str | None
    message: str  # libxml2's own words
    located: bool  # True when narrowed down below libxml2's report

    def describe(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        if self.attribute:
            what = f"attribute {self.attribute}='{self.value}' of <{self.element}>"
        else:
            what = f"element <{self.element}>"
        return f"{where}{what} ({self.path}) does not validate against libvirt's schema (libxml2: {self.message})"


class DomainSchema:
    def __init__(self, path: str, rng: etree.RelaxNG):
        self.path = path  # host path
        self._rng = rng

    def is_valid(self, tree) -> bool:
        return bool(self._rng.validate(tree))

    def _first_message(self) -> tuple[str, int | None, str | None]:
        log = list(self._rng.error_log)
        msgs = "; ".join(dict.fromkeys(e.message for e in log if e.message))
        best = next((e for e in reversed(log) if e.path), None)
        return msgs or "does not validate", (best.line if best else None), (best.path if best else None)

    def validate(self, tree: etree._ElementTree) -> list[SchemaError]:
        """Every located schema error of the document (empty when valid)."""
        if self.is_valid(tree):
            return []
        message, line, path = self._first_message()
        work = copy.deepcopy(tree)
        # map copy elements back to the original for line numbers and paths
        originals = dict(zip(work.getroot().iter(), tree.getroot().iter()))
        errors: list[SchemaError] = []
        while len(errors) < MAX_ERRORS:
            culprit = self._locate(work, work.getroot())
            if culprit is None:
                break
            el, attr = culprit
            orig = originals.get(el, el)
            errors.append(SchemaError(orig.sourceline, _path(orig), etree.QName(orig).localname, attr,
                                      orig.get(attr) if attr else None, message, True))
            if attr:
                del el.attrib[attr]
            else:
                el.getparent().remove(el)
            if self.is_valid(work):
                return errors
            message, _, _ = self._first_message()
        if not errors or not self.is_valid(work):
            # could not narrow down (e.g. a missing required element): libxml2's report
            node = _find(tree, path)
            errors.append(SchemaError(node.sourceline if node is not None else line, path or "/domain",
                                      etree.QName(node).localname if node is not None else "domain",
                                      None, None, message, False))
        return errors

    def _error_path(self, work) -> str | None:
        """None when `work` validates, else the path libxml2 reports first."""
        if self._rng.validate(work):
            return None
        for e in self._rng.error_log:
            if e.path:
                return e.path
        return "/domain"

    def _locate(self, work: etree._ElementTree, top: etree._Element):
        """(element, attribute or None) at fault, as deep as possible, or None.
        One error: `_locate_single`. Several: `_locate_first` finds the one
        libxml2 reports, which the caller removes before looking again."""
        single = self._locate_single(work, top)
        if single is not None and single[1] is None and len(single[0]):
            # an element with children and no attribute to blame: several errors below it?
            first = self._locate_first(work, top)
            if first is not None and any(a is single[0] for a in first[0].iterancestors()):
                return first
        return single or self._locate_first(work, top)

    def _locate_single(self, work, top):
        """Descend from the root into the child whose removal alone makes the
        document valid; through elements on the paths libxml2 reports (an
        `<os>` that cannot be removed because it is required) descend without
        removing them."""
        on_path = set()
        self._rng.validate(work)
        for e in self._rng.error_log:
            el = _find(work, e.path) if e.path else None
            while el is not None:
                on_path.add(el)
                el = el.getparent()
        found = None
        node = top
        while True:
            hit = via = None
            for child in [c for c in node if isinstance(c.tag, str)]:
                pos = node.index(child)
                node.remove(child)
                ok = self.is_valid(work)
                node.insert(pos, child)
                if ok:
                    hit = child
                    break
                if via is None and child in on_path:
                    via = child
            if hit is not None:
                found = node = hit
            elif via is not None:
                node = via
            else:
                break
        if found is None:
            return None
        return found, self._culprit_attribute(found, self.is_valid, work)

    def _culprit_attribute(self, el, ok, work):
        for attr in list(el.attrib):
            value = el.attrib[attr]
            del el.attrib[attr]
            good = ok(work)
            el.set(attr, value)
            if good:
                return attr
        return None

    def _locate_first(self, work, top):
        """Several errors: start at the element libxml2 reports first, which is
        at fault when removing it moves the report somewhere unrelated (not
        the same place, an ancestor or a descendant); then descend into the
        child whose removal (alone, or after its earlier siblings) does the
        same. Everything removed is put back before returning."""
        reported = self._error_path(work)
        if reported is None:
            return None
        start = _find(work, reported)
        if start is None or start is top:
            return None

        def gone(_work=None) -> bool:
            now = self._error_path(work)
            return now is None or not (now == reported or now.startswith(reported + "/")
                                       or reported.startswith(now + "/"))

        parent = start.getparent()
        pos = parent.index(start)
        parent.remove(start)
        ok = gone()
        parent.insert(pos, start)
        if not ok:
            return None
        found = node = start
        removed: list[tuple[etree._Element, int, etree._Element]] = []
        try:
            while True:
                kids = [c for c in node if isinstance(c.tag, str)]
                hit = None
                for child in kids:
                    pos = node.index(child)
                    node.remove(child)
                    ok = gone()
                    node.insert(pos, child)
                    if ok:
                        hit = child
                        break
                if hit is None and len(kids) > 1:
                    mark = len(removed)
                    for child in kids:
                        pos = node.index(child)
                        node.remove(child)
                        if gone():
                            node.insert(pos, child)
                            hit = child
                            break
                        removed.append((node, pos, child))
                    if hit is None:
                        while len(removed) > mark:
                            parent, pos, child = removed.pop()
                            parent.insert(pos, child)
                if hit is None:
                    break
                found = node = hit
            return found, self._culprit_attribute(found, gone, work)
        finally:
            while removed:
                parent, pos, child = removed.pop()
                parent.insert(pos, child)


def _path(el: etree._Element) -> str:
    parts = []
    while el is not None and isinstance(el.tag, str):
        parts.append(etree.QName(el).localname)
        el = el.getparent()
    return "/" + "/".join(reversed(parts))


def _find(tree: etree._ElementTree, path: str | None):
    if not path:
        return tree.getroot()
    try:
        found = tree.xpath(path)
    except (etree.XPathError, ValueError):
        return tree.getroot()
    return found[0] if found and isinstance(found[0], etree._Element) else tree.getroot()


def schema_file(facts) -> str | None:
    """Host path of the installed domain.rng, None when not installed."""
    for d in SCHEMA_DIRS:
        if os.path.isfile(facts.path(f"{d}/domain.rng")):
            return f"{d}/domain.rng"
    return None


def domain_schema(facts) -> DomainSchema:
    """The host's compiled domain schema. FactUnavailable when libvirt's
    schemas are not installed or do not compile."""
    host_path = schema_file(facts)
    if host_path is None:
        raise FactUnavailable(f"libvirt's RelaxNG schemas are not installed ({SCHEMA_DIRS[0]}/domain.rng "
                              "is missing; Debian ships it in libvirt0)")
    real = facts.path(host_path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise FactUnavailable(f"cannot stat {host_path}: {exc.strerror or exc}") from exc
    key = (os.path.realpath(real), st.st_mtime, st.st_size)
    schema = _CACHE.get(key)
    if schema is None:
        try:
            doc = etree.parse(real, etree.XMLParser(no_network=True, resolve_entities=False))
            rng = etree.RelaxNG(doc)
        except (OSError, etree.XMLSyntaxError, etree.RelaxNGParseError) as exc:
            raise FactUnavailable(f"{host_path} does not compile as RelaxNG: {str(exc).splitlines()[0]}") from exc
        schema = _CACHE[key] = DomainSchema(host_path, rng)
    return schema
