"""Storage facts: pools, image headers and backing chains, locks, free space, mounts.

`HostFacts.storage` is a `StorageFacts`. Everything is read lazily and once per run:

- pools from libvirt (`virConnectListAllStoragePools`, each pool's XML, active and
  autostart flags); unit tests put `PoolInfo`s on the recorded libvirt facts as
  `pools_recorded`;
- image headers read directly (the first bytes of the file: qcow2's header and its
  backing-format extension, the magic of other formats), so no `qemu-img` process
  is needed; backing chains walk those headers, resolving a relative backing name
  against the overlay's directory as QEMU does (block.c `bdrv_get_full_backing_filename`);
- byte-range locks from /proc/locks, mapped to the process that holds them: POSIX
  locks name their pid, QEMU's OFD locks show pid -1, so their holders come from the
  `lock:` lines of /proc/PID/fdinfo/FD (read only when an image is locked at all);
- statvfs of a path (free space of its filesystem), the mount a path lives on
  (/proc/mounts) and /etc/fstab.

Paths are host paths; files are read below `--root` through HostFacts.
"""
from __future__ import annotations

import os
import posixpath
import struct
from dataclasses import dataclass
from functools import cached_property

from virtdoctor.model import FactUnavailable

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_EXT_BACKING_FORMAT = 0xE2792ACA
HEADER_BYTES = 64 * 1024  # qcow2 header, its extensions and the backing name fit in the first cluster
# other formats QEMU probes (block/*.c probe functions), by magic at offset 0 unless noted
MAGICS = ((b"QED\x00", "qed"), (b"KDMV", "vmdk"), (b"vhdxfile", "vhdx"), (b"LUKS\xba\xbe", "luks"),
          (b"conectix", "vpc"), (b"# Disk Descriptor", "vmdk"))
VDI_MAGIC = b"\x7f\x10\xda\xbe"  # at offset 64


@dataclass(frozen=True)
class PoolInfo:
    name: str
    type: str
    active: bool
    autostart: bool
    target: str | None  # <target><path>
    source_device: str | None = None
    source_host: str | None = None
    source_dir: str | None = None
    persistent: bool = True


@dataclass(frozen=True)
class ImageHeader:
    path: str
    format: str  # qcow2, raw (no known magic), qed, vmdk, vdi, vhdx, luks, vpc
    virtual_size: int | None = None
    backing: str | None = None  # the backing name as recorded in the image
    backing_format: str | None = None  # the recorded backing format (qcow2 extension)


@dataclass(frozen=True)
class ChainLink:
    """One backing image of a chain: `recorded` is the name the overlay `parent`
    records, `path` where QEMU looks for it (None for a non-file backing: json:,
    nbd://...), `header` None when the file does not exist."""
    parent: str
    recorded: str
    path: str | None
    recorded_format: str | None
    header: ImageHeader | None

    @property
    def exists(self) -> bool:
        return self.header is not None


@dataclass(frozen=True)
class Lock:
    kind: str  # POSIX, OFDLCK, FLOCK, LEASE
    mode: str  # ADVISORY, MANDATORY
    type: str  # READ, WRITE
    pid: int  # -1 for OFD locks
    dev: str  # "fe:00" as /proc/locks prints it
    ino: int
    start: int
    end: int | None  # None: EOF


@dataclass(frozen=True)
class Holder:
    pid: int
    name: str
    cmdline: str
    locks: tuple[Lock, ...]

    @property
    def write(self) -> bool:
        """QEMU's image locking (block/file-posix.c): byte 100+N means "I hold
        permission N", 200+N "I do not share permission N"; N=1 is write."""
        return any(lk.start <= 101 <= (lk.end if lk.end is not None else 1 << 62) or
                   lk.start <= 201 <= (lk.end if lk.end is not None else 1 << 62) or lk.type == "WRITE"
                   for lk in self.locks)


@dataclass(frozen=True)
class Space:
    path: str
    total: int  # bytes
    avail: int  # bytes available to unprivileged users (what QEMU, not root, gets)
    free: int  # bytes free for root
    dev: int | None = None

    @property
    def used_pct(self) -> float:
        return 100.0 * (self.total - self.avail) / self.total if self.total else 100.0


@dataclass(frozen=True)
class FileAlloc:
    path: str
    size: int  # apparent size
    allocated: int  # st_blocks * 512
    dev: int
    ino: int


@dataclass(frozen=True)
class DiskUse:
    """One disk of one defined domain (from its live XML when running)."""
    domain: str
    active: bool
    target: str
    type: str  # file, block, volume, network...
    path: str | None  # file/dev source
    pool: str | None
    volume: str | None
    format: str | None  # <driver type>
    readonly: bool
    shareable: bool
    device: str


@dataclass(frozen=True)
class Mount:
    device: str
    point: str
    fstype: str
    options: str


def parse_header(path: str, data: bytes) -> ImageHeader:
    """The format and backing information of an image from its first bytes."""
    if data[:4] == QCOW2_MAGIC and len(data) >= 72:
        version, boff, bsize, _cbits, size = struct.unpack(">IQIIQ", data[4:32])
        backing = None
        if boff and bsize and boff + bsize <= len(data):
            backing = data[boff:boff + bsize].decode("utf-8", "replace")
        fmt = None
        hlen = 72
        if version >= 3 and len(data) >= 104:
            hlen = struct.unpack(">I", data[100:104])[0]
        off = hlen
        while off + 8 <= len(data):
            magic, length = struct.unpack(">II", data[off:off + 8])
            if magic == 0:
                break
            if magic == QCOW2_EXT_BACKING_FORMAT:
                fmt = data[off + 8:off + 8 + length].decode("utf-8", "replace").rstrip("\0") or None
            off += 8 + ((length + 7) & ~7)
        return ImageHeader(path, "qcow2", size, backing, fmt if backing else None)
    for magic, name in MAGICS:
        if data.startswith(magic):
            return ImageHeader(path, name)
    if data[64:68] == VDI_MAGIC:
        return ImageHeader(path, "vdi")
    return ImageHeader(path, "raw", len(data) if len(data) < HEADER_BYTES else None)


def resolve_backing(overlay: str, name: str) -> str | None:
    """Where QEMU looks for a backing file named `name` in `overlay`: absolute names
    as they are, relative ones against the overlay's directory (path_combine);
    None for protocol names (nbd://, json:{...}, rbd:...)."""
    if name.startswith("json:") or "://" in name:
        return None
    head = name.split("/", 1)[0]
    if ":" in head and not name.startswith("/"):  # "rbd:pool/img", "nbd:host:port"
        return None
    if name.startswith("/"):
        return posixpath.normpath(name)
    return posixpath.normpath(posixpath.join(posixpath.dirname(overlay), name))


def parse_proc_locks(text: str) -> list[Lock]:
    """/proc/locks lines: `1: OFDLCK ADVISORY  READ -1 fe:00:1444081 100 101`
    (a blocked waiter's line starts with `1: -> `)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8 or "->" in parts[:2]:
            continue
        try:
            kind, mode, typ, pid = parts[1], parts[2], parts[3], int(parts[4])
            maj, mnr, ino = parts[5].rsplit(":", 2)
            start = int(parts[6])
            end = None if parts[7] == "EOF" else int(parts[7])
            out.append(Lock(kind, mode, typ, pid, f"{maj}:{mnr}", int(ino), start, end))
        except ValueError:
            continue
    return out


def dev_text(dev: int) -> str:
    """A device number as /proc/locks prints it (`%02x:%02x`)."""
    return f"{os.major(dev):02x}:{os.minor(dev):02x}"


def parse_mounts(text: str) -> list[Mount]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            point = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            out.append(Mount(parts[0], point, parts[2], parts[3]))
    return out


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a path lives on: the longest mount point that is a prefix (the
    last one listed wins for the same point: it is mounted on top)."""
    best = None
    for m in mounts:
        p = m.point.rstrip("/") or "/"
        if path == p or path.startswith(p.rstrip("/") + "/") or p == "/":
            if best is None or len(p) >= len(best.point.rstrip("/") or "/"):
                best = m
    return best


class StorageFacts:
    def __init__(self, facts):
        self.facts = facts
        self._headers: dict[str, ImageHeader | None] = {}
        self.space_override: dict[str, Space] | None = None  # unit tests: host path -> Space

    # -- pools ------------------------------------------------------------------
    @cached_property
    def pools(self) -> list[PoolInfo]:
        lv = self.facts.libvirt
        recorded = getattr(lv, "pools_recorded", None)
        if recorded is not None:
            return list(recorded)
        if not hasattr(lv, "call"):
            raise FactUnavailable("no storage pools recorded")

        def read(conn):
            import libvirt

            out = []
            for pool in conn.listAllStoragePools(0):
                try:
                    out.append(pool_from_xml(pool.XMLDesc(0), active=bool(pool.isActive()),
                                             autostart=bool(pool.autostart()),
                                             persistent=bool(pool.isPersistent())))
                except libvirt.libvirtError:
                    continue  # undefined while listing
            return out

        return lv.call("virConnectListAllStoragePools", read)

    @cached_property
    def disk_uses(self) -> list[DiskUse]:
        """Every disk of every defined domain (libvirt's domain list)."""
        from virtdoctor.facts.libvirt import parse_xml

        out = []
        for info in self.facts.libvirt.domains():
            root = parse_xml(info.live_xml or info.xml)
            for d in root.iterfind("devices/disk"):
                src = d.find("source")
                drv = d.find("driver")
                tgt = d.find("target")
                get = (lambda k: src.get(k)) if src is not None else (lambda k: None)
                out.append(DiskUse(info.name, info.active, tgt.get("dev", "?") if tgt is not None else "?",
                                   d.get("type", "file"), get("file") or get("dev"), get("pool"), get("volume"),
                                   drv.get("type") if drv is not None else None, d.find("readonly") is not None,
                                   d.find("shareable") is not None, d.get("device", "disk")))
        return out

    def pool(self, name: str) -> PoolInfo | None:
        return next((p for p in self.pools if p.name == name), None)

    # -- images -----------------------------------------------------------------
    def header(self, path: str) -> ImageHeader | None:
        """The image's header facts; None when the file does not exist. A block
        device is read too (qcow2 on LVM). FactUnavailable when unreadable."""
        if path not in self._headers:
            data = self.facts.read_bytes(path, limit=HEADER_BYTES)
            self._headers[path] = None if data is None else parse_header(path, data)
        return self._headers[path]

    def chain(self, top: str, max_depth: int = 32) -> list[ChainLink]:
        """The backing chain below `top` (not including it), as QEMU would open it,
        down to the first missing or non-file link."""
        out: list[ChainLink] = []
        seen = {top}
        cur = self.header(top)
        while cur is not None and cur.backing and len(out) < max_depth:
            path = resolve_backing(cur.path, cur.backing)
            hdr = None
            if path is not None:
                if path in seen:
                    break  # a loop; QEMU refuses it too
                seen.add(path)
                hdr = self.header(path)
            out.append(ChainLink(cur.path, cur.backing, path, cur.backing_format, hdr))
            if path is None:
                break
            cur = hdr
        return out

    def alloc(self, path: str) -> FileAlloc | None:
        real = self.facts._real(path)
        try:
            st = os.stat(real)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise FactUnavailable(f"cannot stat {path}: {exc.strerror or exc}") from exc
        return FileAlloc(path, st.st_size, st.st_blocks * 512, st.st_dev, st.st_ino)

    # -- locks ------------------------------------------------------------------
    @cached_property
    def locks(self) -> list[Lock]:
        text = self.facts.read_text("/proc/locks")
        if text is None:
            raise FactUnavailable("/proc/locks is not there")
        return parse_proc_locks(text)

    def locks_on(self, path: str) -> list[Lock]:
        a = self.alloc(path)
        if a is None:
            return []
        dev = dev_text(a.dev)
        return [lk for lk in self.locks if lk.ino == a.ino and lk.dev == dev]

    @cached_property
    def _fdinfo_locks(self) -> dict[tuple[str, int], dict[int, list[Lock]]]:
        """(dev, ino) -> {pid: [locks]} from every process's fdinfo `lock:` lines."""
        out: dict[tuple[str, int], dict[int, list[Lock]]] = {}
        for pid in self.facts.listdir("/proc"):
            if not pid.isdigit():
                continue
            base = f"/proc/{pid}/fdinfo"
            try:
                fds = self.facts.listdir(base)
            except FactUnavailable:
                continue
            for fd in fds:
                try:
                    text = self.facts.read_text(f"{base}/{fd}", limit=65536)
                except FactUnavailable:
                    continue
                if not text or "lock:" not in text:
                    continue
                lines = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("lock:")]
                for lk in parse_proc_locks("\n".join(lines)):
                    out.setdefault((lk.dev, lk.ino), {}).setdefault(int(pid), []).append(lk)
        return out

    def holders(self, path: str) -> list[Holder]:
        """The processes holding locks on `path`'s inode, with their command lines."""
        mine = self.locks_on(path)
        if not mine:
            return []
        a = self.alloc(path)
        by_pid: dict[int, list[Lock]] = {}
        for lk in mine:
            if lk.pid > 0:
                by_pid.setdefault(lk.pid, []).append(lk)
        if any(lk.pid <= 0 for lk in mine):
            for pid, lks in self._fdinfo_locks.get((dev_text(a.dev), a.ino), {}).items():
                by_pid.setdefault(pid, []).extend(lk for lk in lks if lk not in by_pid.get(pid, []))
        out = []
        for pid, lks in sorted(by_pid.items()):
            name, cmd = self.process_text(pid)
            out.append(Holder(pid, name, cmd, tuple(lks)))
        return out

    def process_text(self, pid: int) -> tuple[str, str]:
        try:
            comm = (self.facts.read_text(f"/proc/{pid}/comm") or "").strip()
            raw = self.facts.read_bytes(f"/proc/{pid}/cmdline", limit=8192) or b""
        except FactUnavailable:
            return "?", "?"
        return comm or "?", " ".join(a.decode("utf-8", "replace") for a in raw.split(b"\0") if a)

    # -- space and mounts ---------------------------------------------------------
    def space(self, path: str) -> Space | None:
        """statvfs of the filesystem holding `path` (its nearest existing ancestor);
        None when nothing of it exists."""
        if self.space_override is not None:
            best = None
            for p, sp in self.space_override.items():
                if path == p or path.startswith(p.rstrip("/") + "/"):
                    if best is None or len(p) > len(best[0]):
                        best = (p, sp)
            return best[1] if best else None
        probe = path
        while probe != "/" and not self.facts.exists(probe):
            probe = posixpath.dirname(probe)
        real = self.facts._real(probe)
        try:
            st = os.statvfs(real)
            dev = os.stat(real).st_dev
        except OSError as exc:
            raise FactUnavailable(f"cannot statvfs {probe}: {exc.strerror or exc}") from exc
        return Space(probe, st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize, st.f_bfree * st.f_frsize, dev)

    @cached_property
    def mounts(self) -> list[Mount]:
        text = self.facts.read_text("/proc/mounts")
        if text is None:
            text = self.facts.read_text("/proc/self/mounts")
        if text is None:
            raise FactUnavailable("/proc/mounts is not there")
        return parse_mounts(text)

    def mount_of(self, path: str) -> Mount | None:
        return mount_of(self.mounts, path)

    @cached_property
    def fstab(self) -> list[Mount]:
        text = self.facts.read_text("/etc/fstab") or ""
        return [m for m in parse_mounts("\n".join(ln for ln in text.splitlines()
                                                  if ln.strip() and not ln.lstrip().startswith("#")))]

    def is_mount_point(self, path: str) -> bool:
        p = path.rstrip("/") or "/"
        return any((m.point.rstrip("/") or "/") == p for m in self.mounts)


def pool_from_xml(xml: str, *, active: bool, autostart: bool, persistent: bool = True) -> PoolInfo:
    from virtdoctor.facts.libvirt import parse_xml

    root = parse_xml(xml)
    src = root.find("source")

    def attr(path: str, name: str) -> str | None:
        el = src.find(path) if src is not None else None
        return el.get(name) if el is not None else None

    return PoolInfo(name=root.findtext("name") or "?", type=root.get("type") or "?", active=active,
                    autostart=autostart, target=(root.findtext("target/path") or None),
                    source_device=attr("device", "path"), source_host=attr("host", "name"),
                    source_dir=attr("dir", "path"), persistent=persistent)


__all__ = ["DiskUse", "PoolInfo", "ImageHeader", "ChainLink", "Lock", "Holder", "Space", "FileAlloc", "Mount",
           "StorageFacts", "parse_header", "resolve_backing", "parse_proc_locks", "parse_mounts",
           "pool_from_xml", "mount_of"]
