"""Disks: bus and target names, drive addresses, source files, who may open
them, cache modes."""
from __future__ import annotations

import shlex

from virtdoctor.api import (Auto, BUS_PREFIX, Domain, FactUnavailable, Fail, Pass, PREFIX_BUSES, RunCommand,
                            Skip, Warn, check, disk_index_name, disk_name_prefix, edit_copy, hookimpl,
                            libvirt_disk_order, plan, planner, redefine_plan, remove_element, with_plan)

EMULATED_CDROM_BUS = {"q35": "sata", "i440fx": "ide"}


def _free_name(prefix: str, taken: set[str]) -> str:
    i = 0
    while disk_index_name(prefix, i) in taken:
        i += 1
    return disk_index_name(prefix, i)


# -- cdrom bus ---------------------------------------------------------------------
def _cdrom_problems(dom):
    out = []
    fam = dom.machine_family
    for d in dom.disks:
        if d.device != "cdrom":
            continue
        if d.bus in ("virtio", "xen", "sd"):
            out.append((d, f"cdrom {d.target} on bus {d.bus}: libvirt refuses it with \"disk type of "
                           f"'{d.target}' does not support ejectable media\" (older releases: \"disk type "
                           f"'{d.bus}' of '{d.target}' does not support ejectable media\")"))
        elif d.bus == "ide" and fam == "q35":
            out.append((d, f"cdrom {d.target} on bus ide, but q35 machines have no IDE controller: libvirt "
                           "refuses it with \"IDE controllers are unsupported for this QEMU binary or machine "
                           "type\"; use sata"))
    return out


@check("cdrom-on-virtio", scope="domain", area="storage", severity="error",
       title="Cdroms sit on a bus that takes removable media (sata on q35, ide on i440fx)", plans=True)
def cdrom_on_virtio(facts, dom):
    """Looks at every `<disk device='cdrom'>`'s target bus against the machine type.
    Why: virtio (and xen, sd) disks cannot eject media: libvirt 9.0.0 refuses
    with "unsupported configuration: disk type of 'vdb' does not support
    ejectable media" (older: "disk type 'virtio' of 'vdb' ..."); q35 has no IDE.
    Fix safety: unsafe (guest-visible device): moves the cdrom to sata (q35) or
    ide (i440fx), renames its target to match and drops its old address."""
    problems = _cdrom_problems(dom)
    if not problems:
        return Pass("every cdrom is on a bus with removable media")
    return with_plan([Fail(msg, {"target": d.target, "bus": d.bus, "machine": dom.machine, "line": d.line},
                           key=d.target) for d, msg in problems], cdrom_to_emulated_bus(facts, dom))


@planner
def cdrom_to_emulated_bus(facts, dom):
    bus = EMULATED_CDROM_BUS.get(dom.machine_family)
    if bus is None:
        return plan(f"Put the cdrom on a bus with removable media (scsi with a virtio-scsi controller on "
                    f"{dom.machine or dom.arch})", Auto.MANUAL)
    return redefine_plan(dom, lambda copy: _cdrom_move(copy, bus))


def _cdrom_move(copy, bus: str) -> str:
    prefix = "sd" if bus == "sata" else "hd"
    taken = {d.target for d in copy.disks}
    moved = []
    for d, _msg in _cdrom_problems(copy):
        t = d.el.find("target")
        old = d.target
        t.set("bus", bus)
        addr = d.address
        if addr is not None:
            remove_element(addr)  # libvirt assigns a drive address from the new name
        taken.discard(old)
        new = old if old.startswith(prefix) and not _collides(copy, d, old) else None
        while new is None or _collides(copy, d, new):
            if new is not None:
                taken.add(new)
            new = _free_name(prefix, taken)
        taken.add(new)
        t.set("dev", new)
        moved.append(f"{old}->{new}" if new != old else f"{old} to {bus}")
    return f"Move the cdrom to bus {bus} ({', '.join(moved)})"


# -- target names and drive addresses ------------------------------------------------
def _target_problems(dom):
    """[(severity, disk, partner, kind, message)] for prefix/bus mismatches, duplicate
    targets and duplicate drive addresses, as libvirt decides them."""
    out = []
    seen: dict[str, object] = {}
    disks = dom.disks
    if not disks:
        return out
    ordered = libvirt_disk_order(disks) if len(disks) > 1 else disks
    for d in ordered if len(disks) > 1 else ():
        if not d.target:
            continue
        if d.target in seen:
            other = seen[d.target]
            out.append(("error", d, other, "duplicate-target",
                        f"target '{d.target}' duplicated (line {other.line} and line {d.line}): libvirt refuses it "
                        f"with \"XML error: target '{d.target}' duplicated for disk sources "
                        f"'{other.source_path or '<null>'}' and '{d.source_path or '<null>'}'\""))
        else:
            seen[d.target] = d
    addrs: dict[tuple, object] = {}
    for d in ordered if len(disks) > 1 else ():
        a = d.drive_address()
        if a is None:
            continue
        key = (d.bus, a)
        if key in addrs:
            first = addrs[key]
            out.append(("error", d, first, "duplicate-address",
                        f"disks {first.target} and {d.target} both get {d.bus} drive address controller='{a[0]}' "
                        f"bus='{a[1]}' target='{a[2]}' unit='{a[3]}': libvirt refuses it with \"Found duplicate "
                        f"drive address for disk with target name '{first.target}' controller='{a[0]}' "
                        f"bus='{a[1]}' target='{a[2]}' unit='{a[3]}'\""))
        else:
            addrs[key] = d
    hostdev_addrs = {}
    for hd in dom.root.iterfind("devices/hostdev[@type='scsi']") if any(d.bus == "scsi" for d in disks) else ():
        a = hd.find("address[@type='drive']")
        if a is not None:
            hostdev_addrs[tuple(int(a.get(k, "0"), 0) for k in ("controller", "bus", "target", "unit"))] = hd
    for d in ordered if hostdev_addrs else ():
        a = d.drive_address()
        if d.bus == "scsi" and d.address is None and a in hostdev_addrs:
            out.append(("error", d, None, "hostdev-address",
                        f"disk {d.target}'s derived SCSI address is taken by the SCSI host device at line "
                        f"{hostdev_addrs[a].sourceline}: libvirt refuses it with \"using disk target name "
                        f"'{d.target}' conflicts with SCSI host device address controller='{a[0]}' bus='{a[1]}' "
                        f"target='{a[2]}' unit='{a[3]}'\""))
    for d in disks:
        t = d.el.find("target")
        if t is None or not t.get("bus"):
            continue
        prefix = disk_name_prefix(t.get("dev") or "")
        if prefix is None:
            continue
        # only where the name decides the drive address (ide, sata, scsi, fdc): on virtio or usb a
        # name is a mere hint (libvirt: not guaranteed to match the guest's device name)
        if d.bus not in PREFIX_BUSES.get(prefix, ()) and d.bus in ("ide", "sata", "scsi", "fdc"):
            out.append(("warning", d, None, "prefix",
                        f"target {d.target} on bus {d.bus}: the name says {'/'.join(PREFIX_BUSES[prefix])}; "
                        f"libvirt derives the drive address from the name, so a bus changed without the target "
                        f"collides with another disk ({BUS_PREFIX[d.bus]}X names match bus {d.bus})"))
    return out


@check("disk-target-bus-mismatch", scope="domain", area="storage", severity="error",
       title="Disk targets match their bus and are unique, drive addresses do not collide", plans=True)
def disk_target_bus_mismatch(facts, dom):
    """Looks at each disk's target name prefix (vd/hd/sd/fd) against its bus,
    duplicate target names, and the drive address each disk gets (explicit, or
    derived from the name as libvirt's virDomainDiskDefAssignAddress does).
    Why: after a bus is changed but not `target dev`, libvirt refuses the domain
    with "unsupported configuration: Found duplicate drive address for disk with
    target name 'hdb' controller='0' bus='0' target='0' unit='1'", or with
    "target 'sda' duplicated for disk sources ...".
    Fix safety: unsafe (guest-visible names): renames targets to match their
    bus with a free name and drops the stale drive address."""
    problems = _target_problems(dom)
    if not problems:
        return Pass("targets match their buses, no duplicate target or drive address")
    out = []
    for sev, d, _partner, kind, msg in problems:
        ev = {"target": d.target, "bus": d.bus, "kind": kind, "line": d.line}
        out.append(Fail(msg, ev, key=f"{kind}:{d.target}") if sev == "error" else Warn(msg, ev, key=f"{kind}:{d.target}"))
    return with_plan(out, rename_targets(facts, dom))


class _Unreachable(Exception):
    pass


def _fix_targets(copy) -> str:
    """Edit `copy` until no duplicate target or drive address and no name/bus
    mismatch remains; the summary. _Unreachable when that cannot be done."""
    tree = copy.tree
    changes = []
    for _round in range(8):
        problems = _target_problems(copy)
        if not problems:
            return f"Make disk targets match their bus and drive addresses unique: {', '.join(changes)}"
        sev, d, partner, kind, _msg = problems[0]
        if partner is not None and _mismatched(partner) and not _mismatched(d):
            d = partner  # the disk whose bus changed without its name is the one to rename
        taken = {x.target for x in copy.disks}
        want = BUS_PREFIX.get(d.bus)
        t = d.el.find("target")
        addr = d.address
        if kind == "duplicate-address" and addr is not None and addr.get("type") == "drive" and \
                not (want and not d.target.startswith(want)):
            remove_element(addr)
            changes.append(f"dropped {d.target}'s drive address")
        elif want is not None:
            new = _free_name(want, taken)
            while _collides(copy, d, new):
                taken.add(new)
                new = _free_name(want, taken)
            old = d.target
            t.set("dev", new)
            if addr is not None and addr.get("type") == "drive":
                remove_element(addr)
            changes.append(f"{old}->{new}")
        else:
            raise _Unreachable()
        copy = _reparse(tree, copy)
    raise _Unreachable()


def _mismatched(disk) -> bool:
    prefix = disk_name_prefix(disk.target)
    return prefix is not None and disk.bus not in PREFIX_BUSES.get(prefix, ())


def _collides(copy, disk, name: str) -> bool:
    """Would `disk` renamed to `name` (its address derived from the name) hit
    another disk's or a SCSI host device's drive address?"""
    t = disk.el.find("target")
    old, addr = t.get("dev"), disk.address
    t.set("dev", name)
    if addr is not None and addr.get("type") == "drive":
        pos = disk.el.index(addr)
        disk.el.remove(addr)
    else:
        addr = None
    try:
        mine = disk.drive_address()
        if mine is None:
            return False
        if disk.bus == "scsi":
            for hd in copy.root.iterfind("devices/hostdev[@type='scsi']"):
                a = hd.find("address[@type='drive']")
                if a is not None and tuple(int(a.get(k, "0"), 0) for k in ("controller", "bus", "target", "unit")) == mine:
                    return True
        return any(o.el is not disk.el and o.bus == disk.bus and o.drive_address() == mine for o in copy.disks)
    finally:
        t.set("dev", old)
        if addr is not None:
            disk.el.insert(pos, addr)


def _reparse(tree, copy):
    return Domain(tree=tree, source=copy.source, subject=copy.subject, info=copy.info)


@planner
def rename_targets(facts, dom):
    try:
        edit_copy(dom, _fix_targets)
    except _Unreachable:
        return plan("Give each disk a unique target matching its bus (vd: virtio, hd: ide, sd: sata/scsi/usb) "
                    "and remove stale <address type='drive'> elements", Auto.MANUAL)
    return redefine_plan(dom, _fix_targets)


# -- sources on the host ---------------------------------------------------------------
def _local_sources(dom):
    for d in dom.disks:
        path = d.source_path
        if path and d.type in ("file", "block") and path.startswith("/"):
            yield d, path


def _host_needed(facts):
    if facts.offline:
        raise _offline()


def _offline():
    return FactUnavailable("--offline: the host's files are not consulted (XML-intrinsic checks only)")


@check("disk-source-missing", scope="domain", area="storage", severity="error",
       title="Disk and cdrom source files exist", plans=True)
def disk_source_missing(facts, dom):
    """Looks at every file and block `<source>` of disks, cdroms and floppies on the host.
    Why: the start fails with "Cannot access storage file '<path>': No such
    file or directory" (or QEMU's "Could not open '<path>'").
    No automatic fix: correct the path, restore the image, or remove the
    device (a cdrom with startupPolicy='optional' is dropped instead)."""
    _host_needed(facts)
    out = []
    checked = 0
    for d, path in _local_sources(dom):
        checked += 1
        if facts.stat(path) is not None:
            continue
        ev = {"target": d.target, "path": path, "device": d.device, "line": d.line}
        if d.startup_policy == "optional":
            continue  # libvirt drops the medium and starts
        out.append(Fail(f"{d.device} {d.target}: {path} does not exist: the start fails with \"Cannot access "
                        f"storage file '{path}'{_as_qemu(facts, d)}: No such file or directory\"", ev, key=d.target,
                        plan=disk_source_missing_advice(dom, d.device, d.target, path)))
    return out or Pass(f"{checked} local source(s) exist" if checked else "no local disk source")


def _as_qemu(facts, disk) -> str:
    """libvirt probes images that can have a backing chain (anything but raw)
    as QEMU's user and says so: " (as uid:64055, gid:64055)"."""
    drv = disk.driver
    fmt = drv.get("type") if drv is not None else None
    if fmt in (None, "raw") or disk.type == "block":
        return ""
    ident = qemu_identity(facts)
    return f" (as uid:{ident[1]}, gid:{ident[2]})" if ident is not None else ""


@planner
def disk_source_missing_advice(dom, device: str, tgt: str, path: str):
    cmd = (f"virsh change-media {dom.label} {tgt} --eject --config" if device == "cdrom"
           else f"virsh detach-disk {dom.label} {tgt} --config")
    return plan(f"Restore {path}, point the disk at the right file (virsh edit {dom.label}), "
                f"or remove it: {cmd}", Auto.MANUAL)


def qemu_identity(facts):
    """(label, uid, gid, gids, dynamic_ownership) QEMU runs with: the calling user on
    qemu:///session, qemu.conf user/group (plus the user's groups) otherwise.
    None when QEMU's user does not exist (qemu-user-missing reports that)."""
    uri = ""
    try:
        uri = facts.resolved_uri or ""
    except Exception:
        uri = facts.uri or ""
    if uri.endswith("/session"):
        acct = facts.account(facts.euid)
        return ((acct.name if acct else str(facts.euid)), facts.euid, acct.gid if acct else None,
                (acct.groups if acct else frozenset()), False)
    q = facts.qemu_account()
    if q.account is None:
        return None
    return q.label, q.uid, q.gid, q.gids, q.dynamic_ownership


def _relabelled(dom, disk) -> bool:
    """Does libvirt's DAC driver chown this image at start? Not with a domain
    `<seclabel type='none'>` (all models) or a DAC seclabel with relabel='no'
    (a static DAC label defaults to no), nor a disk-level DAC relabel='no'."""
    for sl in dom.root.iterfind("seclabel"):
        model = sl.get("model")
        if sl.get("type") == "none" and model in (None, "dac"):
            return False
        if model == "dac" and (sl.get("relabel") == "no"
                               or (sl.get("type") == "static" and sl.get("relabel") != "yes")):
            return False
    src = disk.source_el
    if src is not None:
        for sl in src.iterfind("seclabel"):
            if sl.get("model", "dac") == "dac" and sl.get("relabel") == "no":
                return False
    return True


def _parents(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p][:-1]
    out, cur = ["/"], ""
    for p in parts:
        cur += "/" + p
        out.append(cur)
    return out


@check("disk-source-permission", scope="domain", area="storage", severity="error",
       title="QEMU's account can reach and open every disk source", plans=True)
def disk_source_permission(facts, dom):
    """Looks at every directory on the path of each local disk source
    (traversable: x) and the file itself (read, and write unless readonly)
    for the user and groups QEMU runs as (qemu.conf user/group, POSIX ACLs
    honoured). With qemu.conf dynamic_ownership (the default) libvirt chowns
    the image to QEMU's user at start, but never its parent directories;
    `shareable` images are chowned too but must stay writable by all users.
    Why: the start fails with "Cannot access storage file '<path>' (as
    uid:64055, gid:64055): Permission denied" or QEMU's "Could not open
    '<path>': Permission denied".
    Fix safety: safe, as virt-manager offers it: `setfacl -m u:QEMUUSER:x` on each
    directory that blocks traversal, read (or read-write) on the image only when libvirt
    would not chown it (dynamic_ownership off, relabel='no'); rollback and undo restore
    the ACLs exactly."""
    _host_needed(facts)
    ident = qemu_identity(facts)
    if ident is None:
        return Skip(f"QEMU's user {facts.qemu_account().user} does not exist; qemu-user-missing reports that")
    label, uid, gid, gids, dynamic = ident
    user = label.split(":")[0]
    out = []
    checked = 0
    for d, path in _local_sources(dom):
        if not facts.exists(path):
            continue  # disk-source-missing reports it
        checked += 1
        problems, commands, steps = [], [], []
        for parent in _parents(path):
            info = facts.stat(parent)
            if info is None or not info.is_dir:
                continue
            if not info.allowed(uid, gids, "x"):
                problems.append(f"{parent} ({info.owner}:{info.group} {info.mode_text}"
                                f"{', ACL ' + info.acl_text if info.acl_text else ''}) is not searchable")
                argv = _grant(info, user, uid, 1, parent)
                commands.append(shlex.join(argv))
                steps.append((argv, parent))
        info = facts.stat(path)
        want = "r" if d.readonly else "rw"
        relabel = dynamic and _relabelled(dom, d)
        if info is not None:
            if relabel:
                # libvirt makes QEMU's user the owner: the owner bits decide (the ACL of the
                # file is libvirt's business then: dynamic_ownership)
                owner_bits = (info.perms >> 6) & 7
                need = 4 | (0 if d.readonly else 2)
                if owner_bits & need != need:
                    problems.append(f"{path} mode {info.mode_text}: even after libvirt chowns it to {user} "
                                    f"the owner has no {want} access")
                    argv = ["chmod", f"u+{want}", path]
                    commands.append(shlex.join(argv))
                    steps.append((argv, path))
            elif not info.allowed(uid, gids, want):
                problems.append(f"{path} ({info.owner}:{info.group} {info.mode_text}"
                                f"{', ACL ' + info.acl_text if info.acl_text else ''}) is not {want} for {label}"
                                " and libvirt does not relabel it (dynamic_ownership off or seclabel relabel='no')")
                argv = _grant(info, user, uid, 4 | (0 if d.readonly else 2), path)
                commands.append(shlex.join(argv))
                steps.append((argv, path))
        if problems:
            out.append(Fail(f"{d.device} {d.target}: {label} cannot open {path}: " + "; ".join(problems)
                            + f"; the start fails with \"Cannot access storage file '{path}' (as uid:{uid}, "
                              f"gid:{gid}): Permission denied\"",
                            {"target": d.target, "path": path, "qemu": label, "dynamic_ownership": dynamic,
                             "problems": problems, "commands": commands}, key=d.target,
                            plan=disk_permission_plan(facts, steps)))
    return out or Pass(f"{label} can open {checked} local source(s)" if checked else "no local disk source")


def _grant(info, user: str, uid, bits: int, path: str) -> list[str]:
    """`setfacl -m u:USER:PERMS PATH` adding `bits` to what QEMU's user already has by a
    named entry (-m replaces that entry's permissions: an existing r must stay r)."""
    have = next((e.perm for e in info.acl if e.tag == 0x02 and e.id == uid), 0)  # ACL_USER
    perm = have | bits
    text = "".join(c for b, c in ((4, "r"), (2, "w"), (1, "x")) if perm & b)
    return ["setfacl", "-m", f"u:{user}:{text}", path]


@planner
def disk_permission_plan(facts, steps: list[tuple[list[str], str]]):
    """The way virt-manager offers it: an ACL entry for QEMU's user on each directory that
    blocks traversal and, only when libvirt would not chown it, on the image; never a
    chmod of the world bits, never a directory above the path. Each path's mode and ACL
    are backed up (touches): rollback and `fix --undo` put them back exactly."""
    cmds = [shlex.join(argv) for argv, _ in steps]
    actions = [RunCommand(list(argv), f"{shlex.join(argv)}", touches=(p,)) for argv, p in steps]
    if facts.which("setfacl") is None and any(a[0] == "setfacl" for a, _ in steps):
        return plan("Let QEMU's account reach the image: " + "; ".join(cmds), Auto.MANUAL, *actions,
                    notes=["setfacl is not installed (Debian: apt-get install acl)"])
    return plan("Grant QEMU's account what it lacks on the image's path: " + "; ".join(cmds), Auto.SAFE, *actions,
                notes=["ACL entries for QEMU's user only: no other account gains access; the previous mode "
                       "and ACL of each path are backed up and restored by rollback and `virtdoctor fix --undo`"])


# -- cache mode ------------------------------------------------------------------------
SAFE_CACHE = ("none", "directsync")


@check("disk-cache-unsafe", scope="domain", area="storage", severity="warning",
       title="Disks use cache='none' (safe to migrate, no host page-cache stalls)", plans=True)
def disk_cache_unsafe(facts, dom):
    """Looks at `<driver cache>` and `io` of every writable disk.
    Why: libvirt refuses live migration with "Migration may lead to data
    corruption if disks use cache other than none or directsync"; writeback or
    unsafe caching lets a disk benchmark fill the host page cache and stall the
    VM; io='native' without cache='none' falls back to threads.
    Fix safety: unsafe (changes I/O behaviour): cache='none', io='native' for
    block devices and io='threads' for files."""
    out = []
    for d in dom.disks:
        if d.device not in ("disk", "lun") or d.readonly:
            continue
        drv = d.driver
        cache = drv.get("cache") if drv is not None else None
        io = drv.get("io") if drv is not None else None
        if cache is not None and cache not in SAFE_CACHE:
            out.append(Warn(f"disk {d.target} uses cache='{cache}': not safe to migrate, and heavy guest I/O "
                            "goes through the host page cache (a disk benchmark can stall the VM)",
                            {"target": d.target, "cache": cache, "io": io, "line": d.line}, key=d.target))
        elif io == "native" and cache not in SAFE_CACHE:
            out.append(Warn(f"disk {d.target} asks io='native' with the default cache: QEMU falls back to "
                            "io='threads'; io='native' needs cache='none' or 'directsync'",
                            {"target": d.target, "cache": cache, "io": io, "line": d.line}, key=d.target))
    return with_plan(out, cache_none(facts, dom)) if out else Pass("no writable disk with a host-cached mode")


@planner
def cache_none(facts, dom):
    return redefine_plan(dom, _cache_none)


def _cache_none(copy) -> str:
    changed = []
    for d in copy.disks:
        if d.device not in ("disk", "lun") or d.readonly:
            continue
        drv = d.driver
        cache = drv.get("cache") if drv is not None else None
        io = drv.get("io") if drv is not None else None
        if (cache is not None and cache not in SAFE_CACHE) or (io == "native" and cache not in SAFE_CACHE):
            drv.set("cache", "none")
            drv.set("io", "native" if d.type == "block" else "threads")
            changed.append(f"{d.target}: cache='none' io='{drv.get('io')}'")
    return "Set " + "; ".join(changed)


@hookimpl
def virtdoctor_checks():
    return [cdrom_on_virtio, disk_target_bus_mismatch, disk_source_missing, disk_source_permission,
            disk_cache_unsafe]
