"""The domain definitions libvirt keeps on disk (/etc/libvirt/qemu/*.xml) as the
daemon would load them at its next start, and the load errors its log recorded.

At start (and on SIGHUP) the QEMU driver reads every *.xml there
(virDomainObjListLoadAllConfigs); a file that does not parse, or whose UUID or
name is already taken by a file read earlier, is skipped with two error lines
in the daemon log and the guest is simply gone from `virsh list --all`. Seen
live with libvirt 9.0.0:

    ... error : catchXMLError:1025 : /etc/libvirt/qemu/NAME.xml:7: Opening and ending tag mismatch: os line 6 and domain
    ... error : virDomainObjListLoadAllConfigs:611 : Failed to load config for domain 'NAME'

    ... error : virDomainObjListAddLocked:289 : operation failed: domain 'OTHER' is already defined with uuid UUID
    ... error : virDomainObjListLoadAllConfigs:611 : Failed to load config for domain 'NAME'

A file whose <name> differs from its file name is loaded under the inner name (9.0.0).

>>> [ (e.domain, e.cause) for e in parse_load_errors(
...   "2026-12-03 19:43:22.624+0000: 27569: error : catchXMLError:1025 : /etc/libvirt/qemu/a.xml:7: bad\\n"
...   "</domain>\\n"
...   "2026-12-03 19:43:22.624+0000: 27569: error : virDomainObjListLoadAllConfigs:611 : "
...   "Failed to load config for domain 'a'\\n") ]
[('a', '/etc/libvirt/qemu/a.xml:7: bad')]
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

QEMU_CONFIG_DIR = "/etc/libvirt/qemu"

_HEADER = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d{4}): (\d+): (\w+) : (\S+?):(\d+) : (.*)$")
_FAILED = re.compile(r"Failed to load config for domain '([^']*)'")
_LINE_COL = re.compile(r",? line (\d+), column (\d+)$")


@dataclass(frozen=True)
class StoredDomain:
    """One /etc/libvirt/qemu/*.xml file as the daemon would read it."""

    path: str
    stem: str  # the file name without .xml: the name libvirt expects inside
    name: str | None = None
    uuid: str | None = None  # normalised: lower case, no dashes
    uuid_text: str | None = None  # as written
    error: str | None = None  # "FILE:LINE: message", libvirt's shape, when it does not parse
    line: int | None = None


@dataclass(frozen=True)
class LoadError:
    """A "Failed to load config for domain 'NAME'" record of the daemon log with the error
    line the same thread logged just before it (the cause)."""

    domain: str  # the file name without .xml
    cause: str | None
    when: str
    line: str  # the "Failed to load" line itself


def normalise_uuid(text: str | None) -> str | None:
    if not text:
        return None
    u = text.strip().replace("-", "").lower()
    return u if re.fullmatch(r"[0-9a-f]{32}", u) else None


def read_stored(facts, config_dir: str = QEMU_CONFIG_DIR) -> list[StoredDomain]:
    """Every *.xml of the QEMU driver's config directory, parsed with the hardened parser."""
    from virtdoctor.domxml import DomainXMLError, parse_xml_document

    out = []
    for entry in facts.listdir(config_dir):
        if not entry.endswith(".xml"):
            continue
        path = f"{config_dir}/{entry}"
        if facts.is_dir(path):
            continue
        stem = entry[:-4]
        data = facts.read_bytes(path)
        if data is None:
            continue
        try:
            tree = parse_xml_document(data, path)
        except DomainXMLError as exc:
            line, msg = _first_xml_error(data)
            if msg is None:  # refused for another reason (size, entities): the parser's one line
                msg = str(exc)[len(path) + 2:] if str(exc).startswith(path + ": ") else str(exc)
            out.append(StoredDomain(path, stem, error=f"{path}:{line}: {msg}" if line else f"{path}: {msg}",
                                    line=line))
            continue
        root = tree.getroot()
        tag = root.tag if isinstance(root.tag, str) else ""
        if tag != "domain":
            out.append(StoredDomain(path, stem, error=f"{path}:{root.sourceline}: the root element is <{tag}>, "
                                                      "not <domain>", line=root.sourceline))
            continue
        name_el = root.find("name")
        name = (name_el.text or "").strip() if name_el is not None else ""
        uuid_el = root.find("uuid")
        uuid_text = (uuid_el.text or "").strip() if uuid_el is not None else None
        if not name:
            out.append(StoredDomain(path, stem, error=f"{path}:{root.sourceline}: missing <name>: libvirt "
                                                      "refuses a domain without a name", line=root.sourceline))
            continue
        if uuid_text and normalise_uuid(uuid_text) is None:
            out.append(StoredDomain(path, stem, name=name, uuid_text=uuid_text,
                                    error=f"{path}:{uuid_el.sourceline}: malformed uuid element",
                                    line=uuid_el.sourceline))
            continue
        out.append(StoredDomain(path, stem, name=name, uuid=normalise_uuid(uuid_text), uuid_text=uuid_text))
    return out


def _first_xml_error(data: bytes) -> tuple[int | None, str | None]:
    """libxml2's first error (line, message): what libvirt's catchXMLError reports as FILE:LINE: MESSAGE."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        # this parser's own log (the exception's may hold other documents' errors of this thread)
        log = [e for e in parser.error_log if e.level_name in ("FATAL", "ERROR")]
        if log:
            return log[0].line, log[0].message.strip()
        return exc.lineno, _LINE_COL.sub("", exc.msg or "")
    return None, None


def parse_load_errors(text: str) -> list[LoadError]:
    """The load failures of a daemon log, oldest first."""
    out: list[LoadError] = []
    last_error: dict[str, str] = {}  # thread id -> the message of its last error record
    for raw in text.splitlines():
        m = _HEADER.match(raw)
        if not m:
            continue
        when, tid, level, _func, _line, msg = m.groups()
        if level != "error":
            continue
        f = _FAILED.search(msg)
        if f:
            out.append(LoadError(f.group(1), last_error.pop(tid, None), when, raw))
        else:
            last_error[tid] = msg
    return out


def daemon_log_files(facts) -> list[str]:
    """The daemon's log files: the file outputs of log_outputs in the config in effect,
    else the default file of a daemon started without systemd."""
    try:
        layout = facts.daemon
        conf, daemon = layout.conf, layout.daemon
    except Exception:
        conf, daemon = "/etc/libvirt/libvirtd.conf", "libvirtd"
    outputs = facts.conf_value(conf, "log_outputs")
    files = []
    for out in str(outputs or "").split():
        parts = out.split(":", 2)
        if len(parts) == 3 and parts[1] == "file":
            files.append(parts[2])
    if not files:
        files.append(f"/var/log/libvirt/{daemon}.log")
    return [f for f in dict.fromkeys(files) if posixpath.isabs(f)]


def read_load_errors(facts, max_bytes: int = 4 << 20) -> list[LoadError]:
    out: list[LoadError] = []
    for path in daemon_log_files(facts):
        try:
            text = facts.read_tail(path, max_bytes)
        except Exception:
            continue
        if text:
            out.extend(parse_load_errors(text))
    return out
