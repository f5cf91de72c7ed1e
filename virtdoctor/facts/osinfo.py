"""Guest operating systems as osinfo-db describes them.

virt-install and virt-manager record the guest OS in the domain XML as libosinfo
metadata::

    <metadata>
      <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
        <libosinfo:os id="http://microsoft.com/win/10"/>
      </libosinfo:libosinfo>
    </metadata>

osinfo-db (Debian package `osinfo-db`) has one file per OS under
/usr/share/osinfo/os/<vendor>/<name>.xml (local additions in /etc/osinfo/os),
each `<os id=...>` with a `<family>` (linux, winnt, win9x, freebsd...) or a
`<derives-from id=...>` that leads to one. `os_entry(facts, id)` finds the entry
(the file named after the id first, the whole database only when that misses)
and `os_family(facts, id)` follows derives-from to the family. The index is
built through `facts` (so `--root` and fake roots work) and cached per run.
"""
from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
DB_DIRS = ("/usr/share/osinfo", "/etc/osinfo")  # system database, then local overrides



@dataclass(frozen=True)
class OsEntry:
    id: str
    short_id: str | None
    name: str | None
    family: str | None  # the entry's own <family>, None when it only derives from another
    distro: str | None
    derives_from: tuple[str, ...]
    path: str  # host path of the file that declares it


def domain_os_id(root) -> str | None:
    """The libosinfo os id recorded in a domain's <metadata>, None when absent.

    >>> from lxml import etree
    >>> x = etree.fromstring('<domain><metadata><l:libosinfo xmlns:l="http://libosinfo.org/xmlns/libvirt/domain/1.0">'
    ...                      '<l:os id="http://microsoft.com/win/10"/></l:libosinfo></metadata></domain>')
    >>> domain_os_id(x)
    'http://microsoft.com/win/10'
    """
    for el in root.iterfind(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os"):
        value = (el.get("id") or "").strip()
        if value:
            return value
    return None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_os_file(data: bytes, path: str) -> list[OsEntry]:
    """The <os> entries of one osinfo-db file (usually one).

    >>> parse_os_file(b'<libosinfo><os id="http://x.org/x/1"><short-id>x1</short-id>'
    ...               b'<derives-from id="http://x.org/x/0"/></os></libosinfo>', "/x")[0].derives_from
    ('http://x.org/x/0',)
    """
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError:
        return []
    out = []
    for os_el in root.iterfind("os"):
        os_id = os_el.get("id")
        if not os_id:
            continue
        out.append(OsEntry(
            id=os_id, short_id=_text(os_el, "short-id"), name=_text(os_el, "name"),
            family=_text(os_el, "family"), distro=_text(os_el, "distro"),
            derives_from=tuple(e.get("id") for e in os_el.iterfind("derives-from") if e.get("id")),
            path=path))
    return out


def _text(el, tag: str) -> str | None:
    found = el.find(tag)  # first, untranslated: translations carry xml:lang and come after
    if found is None or not (found.text or "").strip():
        return None
    return found.text.strip()


class _Index:
    def __init__(self, facts):
        self.facts = facts
        self.entries: dict[str, OsEntry] = {}
        self.full = False
        self.dirs = [d for d in DB_DIRS if facts.is_dir(f"{d}/os")]

    @property
    def installed(self) -> bool:
        return bool(self.dirs)

    def _load(self, host_path: str) -> None:
        try:
            data = self.facts.read_bytes(host_path)
        except Exception:  # unreadable file: the rest of the database still counts
            return
        if data:
            for entry in parse_os_file(data, host_path):
                self.entries[entry.id] = entry  # later dirs (local overrides) win

    def get(self, os_id: str) -> OsEntry | None:
        if os_id in self.entries:
            return self.entries[os_id]
        if not self.full:
            guess = _file_of_id(os_id)
            if guess:
                for d in self.dirs:
                    self._load(f"{d}/os/{guess}")
            if os_id not in self.entries:
                for d in self.dirs:
                    for path in self.facts.glob(f"{d}/os/*/*.xml"):
                        self._load(path)
                self.full = True
        return self.entries.get(os_id)


def _file_of_id(os_id: str) -> str | None:
    """osinfo-db's file naming: http://microsoft.com/win/10 -> microsoft.com/win-10.xml."""
    if "://" not in os_id:
        return None
    rest = os_id.split("://", 1)[1].strip("/")
    if "/" not in rest:
        return None
    vendor, tail = rest.split("/", 1)
    if not vendor or not tail or ".." in rest:
        return None
    return f"{vendor}/{tail.replace('/', '-')}.xml"


def _index(facts) -> _Index:
    return facts.memo("osinfo-index", lambda: _Index(facts))


def osinfo_installed(facts) -> bool:
    """Whether an osinfo-db is present below the facts' root."""
    return _index(facts).installed


def os_entry(facts, os_id: str) -> OsEntry | None:
    """The osinfo-db entry of `os_id`, None when the database lacks it or is absent."""
    return _index(facts).get(os_id)


def os_family(facts, os_id: str) -> tuple[str | None, list[str]]:
    """(family, chain): the OS family from osinfo-db following derives-from,
    and the ids visited. (None, chain) when the database does not say."""
    chain: list[str] = []
    todo = [os_id]
    while todo and len(chain) < 32:
        current = todo.pop(0)
        if current in chain:
            continue
        chain.append(current)
        entry = os_entry(facts, current)
        if entry is None:
            continue
        if entry.family:
            return entry.family, chain
        todo.extend(entry.derives_from)
    return None, chain
