"""Domain run-time facts: disk errors, snapshots, the managed-save image, QEMU's log.

`HostFacts.runstate` is a `RunState`. Per domain (by name), read lazily from libvirt:

- `disk_errors(name)`: virDomainGetDiskErrors, {target: "no space" | "unspecified error"};
- `snapshots(name)`: each snapshot's name and whether its disks/memory are internal or
  external (the snapshot XML's `<memory snapshot>` and `<disk snapshot>`);
- `has_managed_save(name)`: virDomainHasManagedSaveImage;
- `save_image(name)`: the header of /var/lib/libvirt/qemu/save/NAME.save
  (libvirt's virQEMUSaveHeader: magic "LibvirtQemudSave", or "LibvirtQemudPart"
  while libvirt is still writing it, then version, XML length...);
- `qemu_log_tail(name)`: the last lines of /var/log/libvirt/qemu/NAME.log.

Unit tests put a `{name: RecordedRuntime}` dict on the recorded libvirt facts as
`runtime_recorded`.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from virtdoctor.model import FactUnavailable

SAVE_DIR = "/var/lib/libvirt/qemu/save"
SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_PARTIAL = b"LibvirtQemudPart"
SAVE_HEADER = 16 + 4 * 20  # magic, version, data_len, was_running, compressed, cookieOffset, unused[15]
DISK_ERRORS = {0: "none", 1: "unspecified error", 2: "no space"}


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    memory: str  # no | internal | external
    disks: tuple[tuple[str, str], ...]  # (target, no | internal | external | manual)
    current: bool = False

    @property
    def external(self) -> bool:
        return self.memory == "external" or any(k == "external" for _t, k in self.disks)


@dataclass(frozen=True)
class SaveImage:
    path: str
    size: int
    mtime: float
    complete: bool  # magic says libvirt finished writing it
    valid: bool  # a libvirt save header at all
    xml_len: int = 0
    version: int = 0

    @property
    def truncated(self) -> bool:
        return self.valid and self.size < SAVE_HEADER + self.xml_len


@dataclass
class RecordedRuntime:
    disk_errors: dict[str, str] = field(default_factory=dict)
    snapshots: list[SnapshotInfo] = field(default_factory=list)
    managed_save: bool = False


def parse_snapshot_xml(xml: str, current: bool = False) -> SnapshotInfo:
    from virtdoctor.facts.libvirt import parse_xml

    root = parse_xml(xml)
    mem = root.find("memory")
    disks = tuple((d.get("name") or "?", d.get("snapshot") or "internal")
                  for d in root.iterfind("disks/disk"))
    return SnapshotInfo(root.findtext("name") or "?", mem.get("snapshot", "no") if mem is not None else "no",
                        disks, current)


def parse_save_header(path: str, data: bytes, size: int, mtime: float) -> SaveImage:
    magic = data[:16]
    if magic not in (SAVE_MAGIC, SAVE_PARTIAL) or len(data) < 24:
        return SaveImage(path, size, mtime, complete=False, valid=False)
    version, xml_len = struct.unpack("=II", data[16:24])
    return SaveImage(path, size, mtime, complete=magic == SAVE_MAGIC, valid=True, xml_len=xml_len,
                     version=version)


class RunState:
    def __init__(self, facts):
        self.facts = facts
        self._cache: dict[tuple[str, str], object] = {}

    def _recorded(self, name: str) -> RecordedRuntime | None:
        rec = getattr(self.facts.libvirt, "runtime_recorded", None)
        if rec is None:
            if not hasattr(self.facts.libvirt, "call"):
                return RecordedRuntime()
            return None
        return rec.get(name, RecordedRuntime())

    def _live(self, what: str, name: str, fn):
        key = (what, name)
        if key not in self._cache:
            lv = self.facts.libvirt

            def read(conn):
                import libvirt

                try:
                    dom = conn.lookupByName(name)
                except libvirt.libvirtError as exc:
                    raise FactUnavailable(f"domain {name}: {exc.get_error_message()}") from exc
                return fn(dom)

            self._cache[key] = lv.call(what, read)
        return self._cache[key]

    def disk_errors(self, name: str) -> dict[str, str]:
        rec = self._recorded(name)
        if rec is not None:
            return dict(rec.disk_errors)

        def read(dom):
            return {k: DISK_ERRORS.get(v, f"error {v}") for k, v in (dom.diskErrors(0) or {}).items() if v}

        return self._live("virDomainGetDiskErrors", name, read)

    def snapshots(self, name: str) -> list[SnapshotInfo]:
        rec = self._recorded(name)
        if rec is not None:
            return list(rec.snapshots)

        def read(dom):
            import libvirt

            out = []
            for snap in dom.listAllSnapshots(0):
                try:
                    out.append(parse_snapshot_xml(snap.getXMLDesc(0), bool(snap.isCurrent(0))))
                except libvirt.libvirtError:
                    continue
            return out

        return self._live("virDomainListAllSnapshots", name, read)

    def has_managed_save(self, name: str) -> bool:
        rec = self._recorded(name)
        if rec is not None:
            return rec.managed_save or self.save_image(name) is not None
        return bool(self._live("virDomainHasManagedSaveImage", name, lambda d: d.hasManagedSaveImage(0)))

    def save_image(self, name: str) -> SaveImage | None:
        path = f"{SAVE_DIR}/{name}.save"
        info = self.facts.stat(path)
        if info is None:
            return None
        data = self.facts.read_bytes(path, limit=64) or b""
        return parse_save_header(path, data, info.size, info.mtime)

    def qemu_log_tail(self, name: str, max_bytes: int = 64 * 1024) -> str | None:
        return self.facts.read_tail(f"/var/log/libvirt/qemu/{name}.log", max_bytes)


__all__ = ["RunState", "SnapshotInfo", "SaveImage", "RecordedRuntime", "parse_snapshot_xml",
           "parse_save_header"]
