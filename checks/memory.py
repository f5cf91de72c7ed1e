"""Guest memory against the host: huge pages (hugetlbfs mounts, free pages per size and NUMA
node), locked memory (RLIMIT_MEMLOCK), host free memory and the overcommit policy, and the
memory balloon. Inputs come from `facts.memory` (virtdoctor/facts/memory.py)."""
from __future__ import annotations

from virtdoctor.api import (Auto, is_session, Fail, MakeDir, Pass, RunCommand, Skip, Warn, check, hookimpl, plan,
                            redefine_plan)

UNIT_KIB = {"b": 1 / 1024, "bytes": 1 / 1024, "k": 1, "kib": 1, "kb": 1000 / 1024, "m": 1024, "mib": 1024,
            "mb": 1000 * 1000 / 1024, "g": 1024 ** 2, "gib": 1024 ** 2, "gb": 1000 ** 3 / 1024,
            "t": 1024 ** 3, "tib": 1024 ** 3, "tb": 1000 ** 4 / 1024}
HUGE_MOUNT = "/dev/hugepages"


def kib(el, default_unit: str = "KiB") -> int | None:
    """A libvirt memory element's value in KiB."""
    if el is None or not (el.text or "").strip():
        return None
    try:
        value = int(el.text.strip())
    except ValueError:
        return None
    return int(value * UNIT_KIB.get((el.get("unit") or default_unit).lower(), 1))


def guest_kib(dom) -> int | None:
    return kib(dom.tree.find("memory"))



# -- hugepages-unavailable ----------------------------------------------------------------------
def _hugepage_requests(dom, default_kib) -> list[tuple[int, list[int] | None]]:
    """(page size KiB, NUMA nodes or None) of <memoryBacking><hugepages>."""
    hp = dom.tree.find("memoryBacking/hugepages")
    if hp is None:
        return []
    pages = hp.findall("page")
    if not pages:
        return [(default_kib or 2048, None)]
    out = []
    for p in pages:
        try:
            size = int(int(p.get("size")) * UNIT_KIB.get((p.get("unit") or "KiB").lower(), 1))
        except (TypeError, ValueError):
            continue
        nodes = None
        if p.get("nodeset"):
            nodes = []
            for part in p.get("nodeset").split(","):
                a, _, b = part.partition("-")
                if a.strip().isdigit():
                    nodes += list(range(int(a), int(b or a) + 1))
        out.append((size, nodes))
    return out


@check("hugepages-unavailable", scope="domain", area="memory", severity="error", plans=True,
       title="Huge pages the domain asks for are mounted and free")
def hugepages_unavailable(facts, dom):
    """Looks at <memoryBacking><hugepages> (page size, nodeset) against hugetlbfs mounts in
    /proc/mounts and the free pages in /sys/kernel/mm/hugepages (per node under
    /sys/devices/system/node/node*/hugepages).
    Why: without a mount libvirt refuses ("hugetlbfs filesystem is not mounted or disabled by
    administrator config"); with too few free pages QEMU cannot map guest RAM. Hosts without
    systemd mount no hugetlbfs at all.
    Fix: safe; mount hugetlbfs and reserve the missing pages (takes that RAM from the host);
    making both persistent (fstab, sysctl.d) is manual."""
    mem = facts.memory
    requests = _hugepage_requests(dom, mem.default_hugepage_kib)
    if not requests:
        return Pass("the domain does not use huge pages")
    if dom.info is not None and dom.info.active:
        return Pass("the domain is running and holds its huge pages")
    need_kib = guest_kib(dom) or 0
    actions, problems = [], []
    evidence = {"mounts": [list(m) for m in mem.hugetlbfs], "requests": [list(r) for r in requests],
                "guest_kib": need_kib}
    for size, nodes in requests:
        if mem.mount_for(size) is None:
            problems.append(f"no hugetlbfs mount for {size} KiB pages")
            mnt = HUGE_MOUNT if size == mem.default_hugepage_kib else f"{HUGE_MOUNT}{size // 1024}M"
            actions += [MakeDir(mnt, 0o755),
                        RunCommand(["mount", "-t", "hugetlbfs", "-o", f"pagesize={size}K", "hugetlbfs", mnt],
                                   f"mount hugetlbfs ({size} KiB pages) on {mnt}")]
        pages = -(-need_kib // size)
        pool = mem.pool(size)
        if pool is None:
            problems.append(f"this kernel has no {size} KiB huge pages")
            continue
        if nodes:
            per_node = -(-pages // len(nodes))
            for n in nodes:
                np = mem.pool(size, n)
                if np is not None and np.free < per_node:
                    problems.append(f"node {n} has {np.free} free {size} KiB pages, {per_node} needed")
        if pool.free < pages:
            problems.append(f"{pool.free} of {pool.total} {size} KiB pages are free, the guest needs {pages}")
            actions.append(RunCommand(["sh", "-c", f"echo {pool.total + pages - pool.free} > "
                                       f"/sys/kernel/mm/hugepages/hugepages-{size}kB/nr_hugepages"],
                                      f"reserve {pages - pool.free} more {size} KiB pages "
                                      f"({(pages - pool.free) * size // 1024} MiB of host RAM)"))
    evidence["problems"] = problems
    if not problems:
        return Pass("hugetlbfs is mounted and enough huge pages are free", evidence)
    fix = plan("Mount hugetlbfs and reserve the huge pages the guest needs", Auto.SAFE, *actions,
               notes=["persist: 'hugetlbfs /dev/hugepages hugetlbfs defaults 0 0' in /etc/fstab and "
                      "vm.nr_hugepages in /etc/sysctl.d/ (manual)",
                      "a new mount is seen by the daemon after it restarts (libvirt reads the mounts at start)"]) \
        if actions else None
    return Fail("; ".join(problems) + ": the guest cannot start with <hugepages/>", evidence, plan=fix)


# -- memlock-limit ------------------------------------------------------------------------------
def _needs_lock(dom) -> str | None:
    if dom.tree.find("memoryBacking/locked") is not None:
        return "<memoryBacking><locked/>"
    for h in dom.tree.iterfind("devices/hostdev"):
        if h.get("type") in ("pci", "mdev"):
            return f"<hostdev type='{h.get('type')}'> (VFIO pins guest RAM)"
    return None


@check("memlock-limit", scope="domain", area="memory", severity="error", plans=True,
       title="QEMU may lock the guest RAM it must pin")
def memlock_limit(facts, dom):
    """For domains whose RAM must be pinned (<memoryBacking><locked/>, VFIO hostdevs): on
    qemu:///session the caller's RLIMIT_MEMLOCK (QEMU inherits it and libvirt cannot raise it),
    and <memtune><hard_limit> against guest RAM.
    Why: "cannot limit locked memory of process ...: Operation not permitted", QEMU's
    "mlock: Cannot allocate memory" / "locking memory failed", or a VFIO DMA map failure.
    Fix: manual; qemu:///system, a memlock entry in /etc/security/limits.conf, or a correct
    <hard_limit>."""
    why = _needs_lock(dom)
    if why is None:
        return Pass("the domain does not pin its RAM")
    need = guest_kib(dom) or 0
    hard = kib(dom.tree.find("memtune/hard_limit"))
    evidence = {"needs": why, "guest_kib": need, "hard_limit_kib": hard}
    if hard is not None and hard < need:
        return Fail(f"{why}, but <memtune><hard_limit> ({hard} KiB) is below the guest RAM ({need} KiB)", evidence,
                    plan=plan("Raise or remove <memtune><hard_limit>", Auto.MANUAL,
                              notes=[f"virsh memtune {dom.name} --hard-limit {need + 262144} --config"]))
    if not is_session(facts):
        return Pass(f"{why}: the privileged daemon raises QEMU's memlock limit itself", evidence)
    limit = facts.memory.memlock.get("self")
    evidence["memlock_bytes"] = limit
    if limit is None:
        return Pass(f"{why}: your locked-memory limit is unlimited", evidence)
    if limit >= need * 1024:
        return Pass(f"{why}: your locked-memory limit ({limit // 1024} KiB) covers the guest RAM", evidence)
    user = facts.account(facts.euid)
    name = user.name if user else str(facts.euid)
    return Fail(f"{why} on qemu:///session: QEMU inherits your locked-memory limit of {limit // 1024} KiB, far below "
                f"the guest's {need} KiB; libvirt cannot raise it (\"cannot limit locked memory ...\", "
                "\"mlock: Cannot allocate memory\")", evidence,
                plan=plan(f"Raise {name}'s memlock limit or run the guest under qemu:///system", Auto.MANUAL,
                          RunCommand(["sh", "-c", f"echo '{name} hard memlock {need + 262144}\n{name} soft memlock "
                                                  f"{need + 262144}' >> /etc/security/limits.conf"]),
                          notes=["log in again (limits apply at login), then restart the session daemon",
                                 "or define the guest on qemu:///system"]))


# -- host-memory-insufficient -------------------------------------------------------------------
@check("host-memory-insufficient", scope="domain", area="memory", severity="error", plans=True,
       title="The host can allocate the domain's RAM")
def host_memory_insufficient_domain(facts, dom):
    """Looks at the domain's <memory> against /proc/meminfo (MemAvailable; CommitLimit minus
    Committed_AS under vm.overcommit_memory=2; MemTotal + SwapTotal under the heuristic mode).
    Why: QEMU cannot allocate guest RAM ("cannot set up guest memory 'pc.ram': Cannot allocate
    memory"), or the guest runs the host into the OOM killer.
    Fix: manual (lower guest memory is a guest-visible XML change; free memory, add swap or
    revisit the overcommit policy)."""
    if dom.info is not None and dom.info.active:
        return Pass("the domain is running: its memory is allocated")
    need = guest_kib(dom)
    if need is None:
        return Skip("the domain gives no <memory>")
    if dom.tree.find("memoryBacking/hugepages") is not None:
        return Pass("huge-page backed: hugepages-unavailable judges it")
    mi = facts.memory.meminfo
    if not mi:
        return Skip("no /proc/meminfo")
    mode = facts.memory.overcommit
    avail = mi.get("MemAvailable", mi.get("MemFree", 0))
    evidence = {"guest_kib": need, "overcommit_memory": mode, "MemAvailable": avail, "MemTotal": mi.get("MemTotal"),
                "SwapTotal": mi.get("SwapTotal"), "CommitLimit": mi.get("CommitLimit"),
                "Committed_AS": mi.get("Committed_AS")}
    name = dom.name
    fix = plan(f"Lower {name}'s memory or free host memory", Auto.MANUAL,
               RunCommand(["virsh", "setmaxmem", name, f"{max(avail // 2, 65536)}K", "--config"],
                          "lower the guest's maximum memory (guest-visible)"),
               notes=["or free memory / add swap on the host; or revisit vm.overcommit_memory"])
    if mode == 2:
        room = mi.get("CommitLimit", 0) - mi.get("Committed_AS", 0)
        if need > room:
            return Fail(f"vm.overcommit_memory=2 leaves {room // 1024} MiB to commit; the guest needs {need // 1024} MiB: "
                        "\"cannot set up guest memory 'pc.ram': Cannot allocate memory\"", evidence, plan=fix)
    elif mode != 1:
        total = mi.get("MemTotal", 0) + mi.get("SwapTotal", 0)
        if need > total:
            return Fail(f"the guest's {need // 1024} MiB exceed RAM + swap ({total // 1024} MiB): the kernel refuses the "
                        "allocation (\"cannot set up guest memory 'pc.ram': Cannot allocate memory\")", evidence, plan=fix)
    if need > avail:
        return Warn(f"the guest's {need // 1024} MiB exceed the host's available memory ({avail // 1024} MiB): it may "
                    "start, then push the host into swap or the OOM killer", evidence, plan=fix)
    return Pass(f"{need // 1024} MiB fit in the host's available {avail // 1024} MiB", evidence)


@check("host-memory-insufficient", scope="host", area="memory", severity="warning",
       title="Autostart guests fit in host memory")
def host_memory_insufficient_host(facts):
    """Sums <memory> of the autostart and running domains against MemTotal + SwapTotal.
    Why: chronic overcommit ends in OOM kills of QEMU. A planning warning; the fix is manual."""
    mi = facts.memory.meminfo
    if not mi:
        return Skip("no /proc/meminfo")
    try:
        doms = facts.libvirt.domains()
    except Exception as exc:
        return Skip(f"libvirt: {exc}")
    from_xml = []
    for d in doms:
        if not (d.autostart or d.active):
            continue
        amount = _xml_memory_kib(d.xml)
        if amount:
            from_xml.append((d.name, amount))
    total = sum(a for _, a in from_xml)
    cap = mi.get("MemTotal", 0) + mi.get("SwapTotal", 0)
    evidence = {"guests": dict(from_xml), "sum_kib": total, "MemTotal": mi.get("MemTotal"), "SwapTotal": mi.get("SwapTotal")}
    if total > cap:
        return Warn(f"running and autostart guests want {total // 1024} MiB, more than RAM + swap ({cap // 1024} MiB)",
                    evidence)
    return Pass(f"running and autostart guests want {total // 1024} MiB of {cap // 1024} MiB RAM + swap", evidence)


def _xml_memory_kib(xml: str) -> int | None:
    import re

    m = re.search(r"<memory(?:\s+unit=['\"](\w+)['\"])?\s*>\s*(\d+)\s*</memory>", xml)
    if not m:
        return None
    return int(int(m.group(2)) * UNIT_KIB.get((m.group(1) or "KiB").lower(), 1))


# -- memballoon-missing ---------------------------------------------------------------------------
@check("memballoon-missing", scope="domain", area="memory", severity="warning", plans=True,
       title="The domain has a memory balloon when its memory is meant to change")
def memballoon_missing(facts, dom):
    """Looks at /domain/devices/memballoon/@model and <currentMemory> against <memory>.
    Why: without a balloon `virsh setmem` on a running guest fails ("Unable to change memory of
    active domain without the balloon device and guest OS balloon driver"), memory statistics
    are empty, and a <currentMemory> below <memory> is never reached.
    Fix: unsafe (a new guest device, applies at the next cold boot); <memballoon model='virtio'/>."""
    bal = dom.tree.find("devices/memballoon")
    model = bal.get("model") if bal is not None else "virtio (default)"
    mem = guest_kib(dom)
    cur = kib(dom.tree.find("currentMemory"))
    evidence = {"model": model, "memory_kib": mem, "current_kib": cur}
    if model != "none":
        return Pass(f"memory balloon: {model}", evidence)
    if cur is None or mem is None or cur >= mem:
        return Pass("no balloon (<memballoon model='none'/>): the guest's memory cannot change while it runs "
                    "(virsh setmem is refused)", evidence)

    def edit(copy):
        b = copy.tree.find("devices/memballoon")
        b.set("model", "virtio")
        return "Give the domain a virtio memory balloon"

    return Fail(f"<currentMemory> ({cur // 1024} MiB) is below <memory> ({mem // 1024} MiB) but there is no balloon "
                "(<memballoon model='none'/>): the guest always gets the full amount, and virsh setmem fails "
                "(\"Unable to change memory of active domain without the balloon device ...\")", evidence,
                plan=redefine_plan(dom, edit, auto=Auto.UNSAFE,
                                   notes=["the guest needs its virtio_balloon driver (Linux has it; Windows: virtio-win)"]))


@hookimpl
def virtdoctor_checks():
    return [hugepages_unavailable, memlock_limit, host_memory_insufficient_host, host_memory_insufficient_domain,
            memballoon_missing]
