"""Domain XML over lxml with a hardened parser.

Domain XML comes from users and from files of unknown origin: no entity
expansion, no DTD loading, no network, no huge trees, and a size cap. Input
that is not a usable domain raises `DomainXMLError` (a ToolError: exit status 3
with a one-line message).
"""
from __future__ import annotations

import re
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
    if dtd is not None and next(iter(dtd.iterentities()), None) is not None:
        raise DomainXMLError(f"{source}: declares XML entities (DOCTYPE); refused "
                             "(libvirt's domain XML never needs them)")
    return tree


DISK_PREFIXES = ("xvd", "ubd", "fd", "hd", "vd", "sd")  # longest first: "xvd" before "vd"
# the target prefix each bus expects (libvirt accepts any, but derives addresses from the name)
BUS_PREFIX = {"virtio": "vd", "ide": "hd", "sata": "sd", "scsi": "sd", "usb": "sd", "fdc": "fd",
              "xen": "xvd", "uml": "ubd", "sd": "sd"}
PREFIX_BUSES = {"vd": ("virtio",), "hd": ("ide",), "sd": ("scsi", "sata", "usb", "sd"), "fd": ("fdc",),
                "xvd": ("xen",), "ubd": ("uml",)}


def disk_name_index(name: str) -> int | None:
    """libvirt's virDiskNameToIndex: 'vda' -> 0, 'sdz' -> 25, 'hdaa' -> 26; None
    for a name without a known prefix, or with a partition number ('vdb1').

    >>> disk_name_index("sdb"), disk_name_index("vdaa"), disk_name_index("vdb1")
    (1, 26, None)
    """
    prefix = disk_name_prefix(name)
    if prefix is None:
        return None
    rest = name[len(prefix):]
    if not rest or not all("a" <= c <= "z" for c in rest):
        return None
    idx = 0
    for c in rest:
        idx = idx * 26 + (ord(c) - ord("a") + 1)
    return idx - 1


def disk_index_name(prefix: str, idx: int) -> str:
    """The inverse of disk_name_index: ('sd', 27) -> 'sdab'."""
    letters = ""
    n = idx + 1
    while n > 0:
        n, r = divmod(n - 1, 26)
        letters = chr(ord("a") + r) + letters
    return prefix + letters


def disk_name_prefix(name: str) -> str | None:
    return next((p for p in DISK_PREFIXES if name.startswith(p)), None)


@dataclass
class Disk:
    """One `<disk>` element, read-only view."""

    el: etree._Element
    position: int  # index among the domain's <disk> elements

    @property
    def device(self) -> str:
        return self.el.get("device", "disk")

    @property
    def type(self) -> str:
        return self.el.get("type", "file")

    @property
    def target(self) -> str:
        t = self.el.find("target")
        return (t.get("dev") or "") if t is not None else ""

    @property
    def bus(self) -> str:
        """The target bus as libvirt decides it: explicit `bus=`, else from the
        target name (hd -> ide, sd -> scsi, vd -> virtio, fd -> fdc, xvd -> xen)."""
        t = self.el.find("target")
        if t is not None and t.get("bus"):
            return t.get("bus")
        prefix = disk_name_prefix(self.target)
        if self.device == "floppy":
            return "fdc"
        return {"hd": "ide", "sd": "scsi", "vd": "virtio", "fd": "fdc", "xvd": "xen", "ubd": "uml"}.get(prefix or "", "ide")

    @property
    def source_el(self) -> etree._Element | None:
        return self.el.find("source")

    @property
    def source_path(self) -> str | None:
        """The local path of a file or block disk (None for network, volume, empty)."""
        s = self.source_el
        if s is None:
            return None
        if self.type == "file":
            return s.get("file") or None
        if self.type == "block":
            return s.get("dev") or None
        if self.type == "dir":
            return s.get("dir") or None
        return None

    @property
    def has_source(self) -> bool:
        s = self.source_el
        return s is not None and any(s.get(a) for a in ("file", "dev", "dir", "name", "pool", "volume", "protocol"))

    @property
    def readonly(self) -> bool:
        return self.el.find("readonly") is not None or self.device == "cdrom"

    @property
    def shareable(self) -> bool:
        return self.el.find("shareable") is not None

    @property
    def driver(self) -> etree._Element | None:
        return self.el.find("driver")

    @property
    def boot_order(self) -> int | None:
        b = self.el.find("boot")
        try:
            return int(b.get("order")) if b is not None and b.get("order") is not None else None
        except ValueError:
            return None

    @property
    def address(self) -> etree._Element | None:
        return self.el.find("address")

    @property
    def startup_policy(self) -> str | None:
        s = self.source_el
        return s.get("startupPolicy") if s is not None else None

    @property
    def line(self) -> int | None:
        return self.el.sourceline

    def drive_address(self, wide_scsi: bool = True) -> tuple[int, int, int, int] | None:
        """(controller, bus, target, unit) of a disk on a drive-addressed bus
        (ide, sata, scsi, fdc): the explicit `<address type='drive'>`, else what
        libvirt's virDomainDiskDefAssignAddress derives from the target name."""
        bus = self.bus
        if bus not in ("ide", "sata", "scsi", "fdc"):
            return None
        addr = self.address
        if addr is not None:
            if addr.get("type") != "drive":
                return None
            return tuple(_int(addr.get(k)) for k in ("controller", "bus", "target", "unit"))  # type: ignore[return-value]
        idx = disk_name_index(self.target)
        if idx is None:
            return None
        if bus == "scsi":
            if wide_scsi:
                unit = idx % 15
                return (idx // 15, 0, 0, unit + 1 if unit >= 7 else unit)
            return (idx // 7, 0, 0, idx % 7)
        if bus == "ide":
            return (idx // 4, (idx % 4) // 2, 0, idx % 2)
        if bus == "sata":
            return (idx // 6, 0, 0, idx % 6)
        return (idx // 2, 0, 0, idx % 2)  # fdc


def _int(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return int(value, 0)
    except ValueError:
        return 0


def serialise(tree: etree._ElementTree | etree._Element) -> str:
    """Domain XML text of an (edited) tree in libvirt's own style (attribute
    values in single quotes), so a diff against libvirt's XML shows only the edit."""
    el = tree.getroot() if isinstance(tree, etree._ElementTree) else tree
    return single_quotes(etree.tostring(el, encoding="unicode")) + "\n"


_SKIP = re.compile(r"(<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>)", re.S)
_TAG = re.compile(r"<[A-Za-z_][^<>]*>")
_ATTR = re.compile(r'(\s[^\s=<>"\']+)="([^"]*)"')


def single_quotes(text: str) -> str:
    """Rewrite attribute quoting in start tags from lxml's "v" to libvirt's 'v'
    (values holding a ' keep double quotes); comments, CDATA and text untouched.

    >>> print(single_quotes('<a b="1" c="x">b="2"</a>'))
    <a b='1' c='x'>b="2"</a>
    """
    def tag(m: re.Match) -> str:
        return _ATTR.sub(lambda a: a.group(0) if "'" in a.group(2) else f"{a.group(1)}='{a.group(2)}'", m.group(0))

    parts = _SKIP.split(text)
    return "".join(p if i % 2 else _TAG.sub(tag, p) for i, p in enumerate(parts))


def remove_element(el: etree._Element) -> None:
    """Remove `el`, keeping the indentation of what follows (lxml drops the
    element's tail with it)."""
    parent = el.getparent()
    prev = el.getprevious()
    if prev is not None:
        prev.tail = el.tail
    else:
        parent.text = el.tail if el.tail is not None else parent.text
    parent.remove(el)


def _indent_of(el: etree._Element) -> str:
    prev = el.getprevious()
    ws = prev.tail if prev is not None else (el.getparent().text if el.getparent() is not None else None)
    if ws and "\n" in ws:
        return ws.rsplit("\n", 1)[1]
    return ""


def append_child(parent: etree._Element, child: etree._Element) -> etree._Element:
    """Append `child` as the last child, indented like its siblings (libvirt's
    two-space indentation in a parent that had none); returns `child`."""
    if len(parent):
        last = parent[-1]
        child.tail, last.tail = last.tail, parent.text
    else:
        outer = _indent_of(parent)
        parent.text = "\n" + outer + "  "
        child.tail = "\n" + outer
    parent.append(child)
    return child


def insert_before(ref: etree._Element, child: etree._Element) -> etree._Element:
    """Insert `child` just before `ref`, indented like `ref`; returns `child`."""
    prev = ref.getprevious()
    indent = prev.tail if prev is not None else ref.getparent().text
    ref.addprevious(child)
    child.tail = indent
    return child


def element(tag: str, attrs: dict[str, str] | None = None, /, **kw: str) -> etree._Element:
    """A new element `<tag k='v'...>` (for an edit), without the caller importing lxml."""
    el = etree.Element(tag)
    for k, v in {**(attrs or {}), **kw}.items():
        el.set(k, str(v))
    return el


def fragment(xml: str) -> etree._Element:
    """A new element tree from an XML fragment (`"<acpi/>"`), parsed with the
    hardened parser; DomainXMLError when it is not one well-formed element."""
    return parse_xml_document(xml, "XML fragment").getroot()


def ensure_child(parent: etree._Element, tag: str, before: tuple[str, ...] = ()) -> etree._Element:
    """`parent`'s `<tag>`, created when absent: before the first existing
    sibling named in `before` (libvirt's element order), else appended."""
    el = parent.find(tag)
    if el is not None:
        return el
    el = etree.Element(tag)
    for name in before:
        ref = parent.find(name)
        if ref is not None:
            return insert_before(ref, el)
    return append_child(parent, el)


def is_q35(machine: str) -> bool:
    """A Q35 machine type ('q35', 'pc-q35-7.2')."""
    return machine == "q35" or machine.startswith("pc-q35")


def enum_values(caps: etree._Element, xpath: str) -> list[str] | None:
    """Values of a domcapabilities enum, None when the element is absent;
    [] when the device is `supported='no'`."""
    el = caps.find(xpath.rsplit("/enum", 1)[0])
    if el is None:
        return None
    if el.get("supported") == "no":
        return []
    return [v.text.strip() for v in caps.iterfind(f"{xpath}/value") if v.text]


def element_path(el: etree._Element) -> str:
    """'/domain/devices/disk[2]/target' for messages."""
    parts = []
    while el is not None and isinstance(el.tag, str):
        parent = el.getparent()
        name = etree.QName(el).localname
        if parent is not None:
            same = [c for c in parent if c.tag == el.tag]
            if len(same) > 1:
                name += f"[{same.index(el) + 1}]"
        parts.append(name)
        el = parent
    return "/" + "/".join(reversed(parts))


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

    @cached_property
    def disks(self) -> list[Disk]:
        return [Disk(el, i) for i, el in enumerate(self.root.iterfind("devices/disk"))]

    @property
    def os_boot_devs(self) -> list[str]:
        """`<os><boot dev=...>` in order (hd, cdrom, network, fd)."""
        return [b.get("dev", "") for b in self.root.iterfind("os/boot")]

    @property
    def device_boot_elements(self) -> list[etree._Element]:
        """Every `<boot order=...>` below `<devices>` (disks, interfaces, hostdevs, redirdevs...)."""
        devices = self.root.find("devices")
        return [] if devices is None else [b for b in devices.iter("boot") if b.get("order") is not None]

    @property
    def is_efi(self) -> bool:
        """UEFI firmware: `<os firmware='efi'>`, or a pflash/OVMF/AAVMF/edk2 loader."""
        os_el = self.root.find("os")
        if os_el is None:
            return False
        if os_el.get("firmware") == "efi":
            return True
        loader = os_el.find("loader")
        if loader is None:
            return False
        path = (loader.text or "").lower()
        return loader.get("type") == "pflash" or any(k in path for k in ("ovmf", "aavmf", "edk2", "qemu_efi", "efi"))

    @property
    def machine_family(self) -> str:
        """'q35', 'i440fx' (x86 'pc' machines), or the machine name for others."""
        m = self.machine
        if "q35" in m:
            return "q35"
        if self.arch in ("x86_64", "i686") and (m == "pc" or m.startswith("pc-i440fx") or m.startswith("pc-") or not m):
            return "i440fx"
        return m

    def copy_tree(self) -> etree._ElementTree:
        """A deep copy of the tree, for a fixer to edit and serialise."""
        import copy

        return copy.deepcopy(self.tree)


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


def libvirt_disk_order(disks: list[Disk]) -> list[Disk]:
    """Disks in the order libvirt keeps them (virDomainDiskInsert): each disk
    goes after the last disk of its bus, or before the first disk of its bus
    with a higher index; a disk of a new bus goes last. libvirt's duplicate
    checks walk this order, so messages name disks as libvirt does."""
    out: list[Disk] = []
    for disk in disks:
        idx = disk_name_index(disk.target)
        idx = -1 if idx is None else idx
        insert_at = -1
        for i in range(len(out) - 1, -1, -1):
            other = out[i]
            if other.bus != disk.bus:
                continue
            oidx = disk_name_index(other.target)
            if (oidx if oidx is not None else -1) > idx:
                insert_at = i
            elif insert_at == -1:
                insert_at = i + 1
        if insert_at == -1:
            out.append(disk)
        else:
            out.insert(insert_at, disk)
    return out


def edit_copy(dom: "Domain", edit) -> tuple[etree._ElementTree, Any]:
    """Run `edit(copy)` on a Domain over a deep copy of `dom`'s tree; (the
    edited tree, what `edit` returned). `dom` itself is left alone."""
    import copy as _copy

    tree = _copy.deepcopy(dom.tree)
    result = edit(Domain(tree=tree, source=dom.source, subject=dom.subject, info=dom.info, extra=dict(dom.extra)))
    return tree, result

