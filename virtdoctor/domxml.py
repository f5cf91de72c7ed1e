"""Domain XML over lxml with a hardened parser.

Domain XML comes from users and from files of unknown origin: no entity
expansion, no DTD loading, no network, no huge trees, and a size cap. Input
that is not a usable domain raises `DomainXMLError` (a ToolError: exit status 3
with a one-line message).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from lxml import etree

from virtdoctor.model import ToolError

MAX_XML_BYTES = 10 * 1024 * 1024  # libvirt's own RPC limit for an XML document is smaller still


class DomainXMLError(ToolError):
    pass


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           huge_tree=False, remove_blank_text=False, dtd_validation=False)


def parse_xml_document(data: bytes | str, source: str) -> etree._ElementTree:
    """Parse untrusted XML; one-line DomainXMLError for anything unusable."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) > MAX_XML_BYTES:
        raise DomainXMLError(f"{source}: {len(data) / 1048576:.1f} MiB is larger than the "
                             f"{MAX_XML_BYTES // 1048576} MiB accepted for a domain XML")
    if not data.strip():
        raise DomainXMLError(f"{source}: empty input, not XML")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        msg = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise DomainXMLError(f"{source}: not well-formed XML: {msg}") from None
    except ValueError as exc:  # e.g. an encoding declaration on a str
        raise DomainXMLError(f"{source}: not XML: {exc}") from None
    tree = root.getroottree()
    dtd = tree.docinfo.internalDTD
    if dtd is not None and any(isinstance(e, etree._DTDEntityDecl) or getattr(e, "type", None) == "entity"
                               for e in dtd.iterentities()):
        raise DomainXMLError(f"{source}: declares XML entities (DOCTYPE); refused "
                             "(libvirt's domain XML never needs them)")
    return tree


@dataclass
class Domain:
    """One domain's XML plus where it came from. `subject` is the finding
    subject: `domain:NAME` for a defined domain, `xml:PATH` for preflight."""

    tree: etree._ElementTree
    source: str
    subject: str
    info: Any = None  # facts.libvirt.DomainInfo for a defined domain
    extra: dict = field(default_factory=dict)

    @property
    def root(self) -> etree._Element:
        return self.tree.getroot()

    @cached_property
    def name(self) -> str | None:
        return (self.root.findtext("name") or "").strip() or None

    @property
    def label(self) -> str:
        return self.name or self.source

    @property
    def virt_type(self) -> str:
        return self.root.get("type", "")

    @cached_property
    def arch(self) -> str:
        return self.root.find("os/type").get("arch", "") if self.root.find("os/type") is not None else ""

    @cached_property
    def machine(self) -> str:
        t = self.root.find("os/type")
        return t.get("machine", "") if t is not None else ""

    @property
    def emulator(self) -> str | None:
        e = self.root.findtext("devices/emulator")
        return e.strip() if e else None

    def xml_text(self) -> str:
        return etree.tostring(self.tree, encoding="unicode")

    def line_of(self, el: etree._Element) -> int | None:
        return el.sourceline


def parse_domain(data: bytes | str, source: str, *, subject: str | None = None, info: Any = None) -> Domain:
    tree = parse_xml_document(data, source)
    root = tree.getroot()
    tag = etree.QName(root).localname if isinstance(root.tag, str) else str(root.tag)
    if tag != "domain":
        raise DomainXMLError(f"{source}: the root element is <{tag}>, not <domain>")
    dom = Domain(tree=tree, source=source, subject=subject or f"xml:{source}", info=info)
    return dom


def from_info(info) -> Domain:
    """A defined domain (facts.libvirt.DomainInfo) as a Domain."""
    return parse_domain(info.xml, f"domain {info.name}", subject=f"domain:{info.name}", info=info)
