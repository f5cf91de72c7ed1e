"""Host memory as QEMU meets it: hugetlbfs mounts and free huge pages per size and NUMA node,
/proc/meminfo and the overcommit policy, and RLIMIT_MEMLOCK of this process (QEMU on
qemu:///session inherits it; a privileged daemon raises QEMU's limit itself). All read from
/proc and /sys below the root."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

HUGEPAGES = "/sys/kernel/mm/hugepages"
NODES = "/sys/devices/system/node"


@dataclass(frozen=True)
class PagePool:
    size_kib: int
    total: int
    free: int
    node: int | None = None  # None: the whole host


@dataclass(frozen=True)
class MemoryFacts:
    hugetlbfs: tuple = ()  # (mount point, pagesize KiB or None for the default)
    default_hugepage_kib: int | None = None
    pools: tuple = ()  # PagePool, host-wide
    node_pools: tuple = ()  # PagePool per NUMA node
    meminfo: dict = field(default_factory=dict)  # key -> KiB
    overcommit: int | None = None
    overcommit_ratio: int | None = None
    memlock: dict = field(default_factory=dict)  # "self" (QEMU on qemu:///session inherits it) -> soft limit bytes or None (unlimited)

    def pool(self, size_kib: int, node: int | None = None) -> PagePool | None:
        for p in (self.pools if node is None else self.node_pools):
            if p.size_kib == size_kib and p.node == node:
                return p
        return None

    def mount_for(self, size_kib: int) -> str | None:
        for mnt, size in self.hugetlbfs:
            if (size or self.default_hugepage_kib) == size_kib:
                return mnt
        return None


def _int(text) -> int | None:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return None


def _size_kib(value: str) -> int | None:
    m = re.fullmatch(r"(\d+)([KkMmGg]?)", value.strip())
    if not m:
        return None
    unit = m.group(2).lower()
    return int(m.group(1)) // 1024 if not unit else int(m.group(1)) * {"k": 1, "m": 1024, "g": 1024 * 1024}[unit]


def _pools(facts, base: str, node: int | None) -> list[PagePool]:
    out = []
    for d in facts.listdir(base):
        m = re.fullmatch(r"hugepages-(\d+)kB", d)
        if not m:
            continue
        total = _int(facts.read_text(f"{base}/{d}/nr_hugepages"))
        free = _int(facts.read_text(f"{base}/{d}/free_hugepages"))
        out.append(PagePool(int(m.group(1)), total or 0, free or 0, node))
    return out


def limits_memlock(text: str | None) -> tuple[bool, int | None]:
    """(found, soft limit in bytes or None for unlimited) from a /proc/PID/limits text."""
    for line in (text or "").splitlines():
        if line.startswith("Max locked memory"):
            soft = line[len("Max locked memory"):].split()[0]
            return True, None if soft == "unlimited" else _int(soft)
    return False, None


def read_memory(facts) -> MemoryFacts:
    mounts = []
    for line in (facts.read_text("/proc/mounts") or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "hugetlbfs":
            opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in parts[3].split(","))
            mounts.append((parts[1].replace("\\040", " "), _size_kib(opts["pagesize"]) if opts.get("pagesize") else None))
    meminfo = {}
    for line in (facts.read_text("/proc/meminfo") or "").splitlines():
        m = re.match(r"(\S+):\s+(\d+)", line)
        if m:
            meminfo[m.group(1)] = int(m.group(2))
    node_pools = []
    for d in facts.listdir(NODES):
        m = re.fullmatch(r"node(\d+)", d)
        if m:
            node_pools += _pools(facts, f"{NODES}/{d}/hugepages", int(m.group(1)))
    memlock = {}
    try:
        found, soft = limits_memlock(facts.read_text("/proc/self/limits"))
        if found and facts.is_live:
            memlock["self"] = soft
    except Exception:
        pass
    return MemoryFacts(hugetlbfs=tuple(mounts), default_hugepage_kib=meminfo.get("Hugepagesize"),
                       pools=tuple(_pools(facts, HUGEPAGES, None)), node_pools=tuple(node_pools),
                       meminfo=meminfo, overcommit=_int(facts.read_text("/proc/sys/vm/overcommit_memory")),
                       overcommit_ratio=_int(facts.read_text("/proc/sys/vm/overcommit_ratio")), memlock=memlock)
