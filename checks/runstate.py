"""Domains' run-time state: paused on a disk error, killed QEMU processes, managed-save
images that cannot be restored."""
from __future__ import annotations

import re
import shlex

from virtdoctor.api import Auto, Fail, FactUnavailable, Pass, RunCommand, Skip, Warn, check, hookimpl, plan

# virDomainState / reasons (libvirt-domain.h)
PAUSED, SHUTOFF = 3, 5
PAUSED_IOERROR = 5
SHUTOFF_CRASHED = 3
LOW_FREE = 256 << 20  # resume is offered with this much (or 5 % of a small filesystem) available
OOM_RE = re.compile(r"Out of memory: Killed process (\d+) \((qemu-system-[^)]*|qemu-kvm)\)")
SIGNAL_RE = re.compile(r"terminating on signal (\d+) from pid (\d+) \(([^)]*)\)")


def _manual(summary: str, *cmds: str, notes=()):
    """A manual plan: its commands are printed (never run by `fix`)."""
    return plan(summary, Auto.MANUAL, *(RunCommand(shlex.split(c), summary=c) for c in cmds), notes=list(notes))


def _virsh(facts, *args: str) -> list[str]:
    return ["virsh", "-c", facts.resolved_uri, *args]


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


@check("domain-paused-io-error", scope="domain", area="lifecycle", severity="error", needs=("libvirt",),
       plans=True, title="The domain is not paused on a disk I/O error")
def paused_io_error(facts, dom):
    """Looks at the domain's state and reason (paused, I/O error), its disk errors
    (virDomainGetDiskErrors: "no space", "unspecified error") and, for each disk in
    error, the free space of the filesystem holding it right now.
    Why: with the default error_policy='stop' QEMU pauses the guest when a write
    fails (host disk full, lost NFS/iSCSI path); nothing shows but a frozen VM
    ("virsh domstate --reason": "paused (I/O error)").
    Fix safety: unsafe (guest-visible) `virsh resume`, offered only when every
    erroring disk's filesystem has room again; otherwise manual: free space first."""
    info = dom.info
    if info is None:
        return Skip("not a defined domain")
    if not (info.state == PAUSED and info.reason == PAUSED_IOERROR):
        return Pass(f"state: {info.state_name} ({info.reason_name})")
    try:
        errors = facts.runstate.disk_errors(dom.name)
    except FactUnavailable:
        errors = {}
    by_target = {d.target: d for d in dom.disks}
    details, full = [], []
    for tgt, err in sorted(errors.items()):
        d = by_target.get(tgt)
        path = d.source_path if d is not None else None
        text = f"{tgt}: {err}"
        if path and path.startswith("/"):
            sp = facts.storage.space(path)
            if sp is not None:
                text += f" ({path}; {_gib(sp.avail)} available now)"
                if sp.avail < min(LOW_FREE, sp.total // 20):
                    full.append(path)
        details.append(text)
    msg = ("domain is paused after a disk I/O error (\"paused (I/O error)\")"
           + (": " + "; ".join(details) if details else ""))
    ev = {"state": "paused", "reason": "I/O error", "disk_errors": errors, "full": full}
    if full or not errors:
        fix = _manual("Free space on (or repair) the storage under the failing disk, then resume the guest "
                      "(it pauses again at once while the write still fails)",
                      *(f"df -h {shlex.quote(p)}" for p in full), f"virsh domblkerror {dom.name}",
                      f"virsh resume {dom.name}")
    else:
        fix = plan(f"Resume {dom.name} (its disks' filesystems have room again)", Auto.UNSAFE,
                   RunCommand(_virsh(facts, "resume", dom.name), summary=f"virsh resume {dom.name}"),
                   notes=["it pauses again at once if the write still fails"])
    return Fail(msg, ev, plan=fix)


def _log_evidence(facts, name: str) -> list[str]:
    try:
        tail = facts.runstate.qemu_log_tail(name) or ""
    except FactUnavailable:
        return []
    lines = tail.splitlines()
    # the last start's part
    for i in range(len(lines) - 1, -1, -1):
        if "starting up libvirt version" in lines[i]:
            lines = lines[i:]
            break
    return [ln for ln in lines if "reason=crashed" in ln or SIGNAL_RE.search(ln)][-3:]


def _oom_lines(facts) -> list[str]:
    """Kernel OOM-killer lines naming QEMU: /var/log/kern.log's tail, else `dmesg`
    (run only when /proc/vmstat counts an OOM kill since boot)."""
    out = []
    try:
        text = facts.read_tail("/var/log/kern.log", 1 << 20) or ""
    except FactUnavailable:
        text = ""
    out = [ln for ln in text.splitlines() if OOM_RE.search(ln)]
    if out:
        return out
    try:
        vmstat = facts.read_text("/proc/vmstat") or ""
    except FactUnavailable:
        return []
    m = re.search(r"^oom_kill (\d+)$", vmstat, re.M)
    if not m or m.group(1) == "0":
        return []
    try:
        res = facts.run(["dmesg"], timeout=5)
    except FactUnavailable:
        return []
    return [ln for ln in res.stdout.splitlines() if OOM_RE.search(ln)]


def _killed_plan(name: str, oom: bool):
    cmds = [f"tail -n 30 /var/log/libvirt/qemu/{name}.log", "dmesg -T"]
    if oom:
        return _manual("The OOM killer chose QEMU: lower the memory of running guests, add RAM or swap, revisit "
                       "overcommit, or set <memtune><hard_limit>, before restarting the guest",
                       *cmds, "grep -e MemAvailable -e Committed_AS /proc/meminfo")
    return _manual("Find out why QEMU died (kill -9 by someone, or a crash: look for a core dump per "
                   "core_pattern) before restarting the guest", *cmds)


@check("qemu-process-killed", scope="domain", area="lifecycle", severity="warning", needs=("libvirt",),
       plans=True, title="The domain's QEMU did not die under it (shut off, crashed)")
def qemu_killed_domain(facts, dom):
    """Looks at the domain's state and reason (shut off, crashed), the last start's part
    of /var/log/libvirt/qemu/NAME.log ("shutting down, reason=crashed", QEMU's
    "terminating on signal N from pid P") and kernel OOM-killer lines naming QEMU.
    Why: the QEMU process died without a guest shutdown: the OOM killer, a kill -9 or
    a crash. No automatic fix."""
    info = dom.info
    if info is None:
        return Skip("not a defined domain")
    if not (info.state == SHUTOFF and info.reason == SHUTOFF_CRASHED):
        return Pass(f"state: {info.state_name} ({info.reason_name})")
    lines = _log_evidence(facts, dom.name)
    oom = _oom_lines(facts)
    msg = "domain is shut off (crashed): its QEMU process died without a guest shutdown"
    sig = next((SIGNAL_RE.search(ln) for ln in lines if SIGNAL_RE.search(ln)), None)
    if sig:
        msg += f"; QEMU logged signal {sig.group(1)} from pid {sig.group(2)} ({sig.group(3)})"
    elif oom:
        msg += f"; the kernel's OOM killer killed QEMU: {oom[-1].strip()}"
    else:
        msg += " (SIGKILL or a crash: QEMU logged no signal)"
    return Fail(msg, {"state": "shut off", "reason": "crashed", "log": lines, "oom": oom[-3:]},
                plan=_killed_plan(dom.name, bool(oom)))


@check("qemu-process-killed", scope="host", area="lifecycle", severity="warning", needs=("libvirt",),
       plans=True, title="No QEMU process was killed by the kernel's OOM killer")
def qemu_killed_host(facts):
    """Looks at the kernel log (/var/log/kern.log, else dmesg when /proc/vmstat counts
    OOM kills) for "Out of memory: Killed process PID (qemu-system-...)", and at
    domains shut off with reason "crashed".
    Why: memory overcommit ends with the OOM killer picking the largest process:
    a guest. No automatic fix."""
    try:
        crashed = [i.name for i in facts.libvirt.domains() if i.state == SHUTOFF and i.reason == SHUTOFF_CRASHED]
    except FactUnavailable:
        crashed = []
    oom = _oom_lines(facts)
    if oom:
        return Fail(f"the kernel's OOM killer killed QEMU {len(oom)} time(s), last: {oom[-1].strip()}"
                    + (f"; crashed domains: {', '.join(crashed)}" if crashed else ""),
                    {"oom": oom[-5:], "crashed": crashed}, plan=_killed_plan(crashed[0] if crashed else "NAME", True))
    if crashed:
        return Warn(f"domains shut off after their QEMU died: {', '.join(crashed)}", {"crashed": crashed},
                    plan=_killed_plan(crashed[0], False))
    return Pass("no QEMU process killed by the OOM killer, no crashed domain")


@check("managed-save-restore-failed", scope="domain", area="lifecycle", severity="error", needs=("libvirt",),
       plans=True, title="A managed-save image, if any, can be restored")
def managed_save(facts, dom):
    """Looks at the managed-save image /var/lib/libvirt/qemu/save/NAME.save (libvirt's
    header: complete or still "LibvirtQemudPart", the recorded XML length against the
    file size), its age against the domain's config and the emulator binary, and the
    daemon/QEMU log for "Unable to restore from managed state" / "load of migration
    failed".
    Why: `virsh start` restores a managed-save image; when QEMU, libvirt or the
    config changed since, or the file is damaged, the start fails and the domain looks
    unstartable. No automatic fix: discarding the image (managedsave-remove,
    start --force-boot) loses the guest's RAM state."""
    info = dom.info
    if info is None or info.active:
        return Pass("running or not defined: no managed save to restore")
    try:
        img = facts.runstate.save_image(dom.name)
    except FactUnavailable as exc:
        return Skip(str(exc))
    if img is None:
        return Pass("no managed-save image")
    name = dom.name
    fix = _manual(f"Compare the config the saved state expects with today's and make it match "
                  f"(managedsave-edit), or discard the saved state (managedsave-remove, or start --force-boot): "
                  "that loses the guest's RAM (an unclean boot)",
                  f"virsh managedsave-dumpxml {name}", f"virsh managedsave-edit {name}",
                  f"virsh managedsave-remove {name}")
    ev = {"path": img.path, "size": img.size, "complete": img.complete, "valid": img.valid}
    if not img.valid:
        return Fail(f"{img.path} is not a libvirt save image (no LibvirtQemudSave header): the start fails",
                    ev, plan=fix)
    if not img.complete:
        return Fail(f"{img.path} is incomplete (libvirt never finished writing it): \"save image is incomplete\"",
                    ev, plan=fix)
    if img.truncated:
        return Fail(f"{img.path} is truncated ({img.size} bytes, shorter than its own header): the restore fails",
                    ev, plan=fix)
    problems = []
    try:
        tail = facts.runstate.qemu_log_tail(name) or ""
    except FactUnavailable:
        tail = ""
    last = tail[tail.rfind("starting up libvirt version"):] if "starting up libvirt version" in tail else ""
    m = re.search(r"(load of migration failed: .*|Unknown savevm section.*)", last)
    if m:
        problems.append(f"the last restore failed: QEMU said \"{m.group(1).strip()}\"")
    emu = dom.emulator
    est = facts.stat(emu) if emu else None
    if est is not None and est.mtime > img.mtime:
        problems.append(f"{emu} changed after the image was saved")
    cst = facts.stat(f"/etc/libvirt/qemu/{name}.xml")
    if cst is not None and cst.mtime > img.mtime + 1:
        problems.append("the domain's config changed after the image was saved")
    if not problems:
        return Pass(f"managed-save image {img.path} ({img.size >> 20} MiB) looks restorable")
    res = Fail if m else Warn
    return res(f"managed-save image {img.path}: " + "; ".join(problems)
               + ("" if m else ": the restore may fail (\"Unknown savevm section\", \"load of migration failed\")"),
               {**ev, "problems": problems}, plan=fix)


@hookimpl
def virtdoctor_checks():
    return [paused_io_error, qemu_killed_domain, qemu_killed_host, managed_save]
