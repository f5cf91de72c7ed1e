"""Storage pools and free space: inactive pools, missing pool targets, full or
overcommitted filesystems holding images."""
from __future__ import annotations

import posixpath
import shlex

from virtdoctor.api import Auto, Fail, Pass, RunCommand, Skip, Warn, check, hookimpl, plan

IMAGES_DIR = "/var/lib/libvirt/images"
FULL_PCT = 99.0  # used space at which writes fail soon: error
LOW_PCT = 95.0  # warning
MIN_FREE = 256 << 20  # less than this (or 2 % of a small filesystem) available is full


def _manual(summary: str, *cmds: str, notes=()):
    """A manual plan: its commands are printed (never run by `fix`)."""
    return plan(summary, Auto.MANUAL, *(RunCommand(shlex.split(c), summary=c) for c in cmds), notes=list(notes))


def _virsh(facts, *args: str) -> list[str]:
    return ["virsh", "-c", facts.resolved_uri, *args]


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def _start_plan(facts, pool, what: str):
    """Start (and autostart) a pool: safe, host-only. A pool whose target directory is
    missing cannot start: storage-pool-target-missing owns that case."""
    acts = []
    if not pool.active:
        acts.append(RunCommand(_virsh(facts, "pool-start", pool.name), summary=f"virsh pool-start {pool.name}"))
    if not pool.autostart and pool.persistent:
        acts.append(RunCommand(_virsh(facts, "pool-autostart", pool.name),
                               summary=f"virsh pool-autostart {pool.name}"))
    if pool.target and pool.type in ("dir", "fs", "netfs") and not facts.is_dir(pool.target):
        return plan(f"Pool {pool.name}'s target {pool.target} is missing: see storage-pool-target-missing, "
                    "then start the pool", Auto.MANUAL)
    return plan(what, Auto.SAFE, *acts)


def _referenced(facts) -> dict[str, list[str]]:
    """pool name -> domains with a `<disk type='volume'>` in it."""
    out: dict[str, list[str]] = {}
    for use in facts.storage.disk_uses:
        if use.type == "volume" and use.pool:
            out.setdefault(use.pool, [])
            if use.domain not in out[use.pool]:
                out[use.pool].append(use.domain)
    return out


@check("storage-pool-inactive", scope="host", area="storage", severity="error", needs=("libvirt",),
       plans=True, title="Storage pools that domains or tools use are running and autostarted")
def pool_inactive_host(facts):
    """Looks at every storage pool (active, autostart), the pools named by domains'
    `<disk type='volume'>` and the pool holding /var/lib/libvirt/images (virt-install's
    `default`). Why: a domain with a volume disk in an inactive pool does not start
    ("storage pool 'P' containing volume 'V' is not active"), and a pool without
    autostart is inactive after every host reboot.
    Fix safety: safe (host-only): virsh pool-start and pool-autostart."""
    pools = facts.storage.pools
    if not pools:
        return Pass("no storage pool defined")
    refs = _referenced(facts)
    out = []
    for p in pools:
        used = refs.get(p.name, [])
        images = p.target and p.target.rstrip("/") == IMAGES_DIR
        why = (f"domains {', '.join(sorted(used))} use volumes in it" if used
               else "it holds /var/lib/libvirt/images (virt-install's default pool)" if images else "")
        if not p.active:
            msg = (f"storage pool {p.name} ({p.type}, {p.target}) is not active"
                   + (f" and {why}: they fail to start with \"storage pool '{p.name}' containing volume ... is "
                      "not active\"" if used else f" ({why})" if why else "")
                   + ("" if p.autostart else "; autostart is off, so it stays inactive after a reboot"))
            ev = {"pool": p.name, "active": False, "autostart": p.autostart, "domains": used}
            fix = _start_plan(facts, p, f"Start pool {p.name}" + ("" if p.autostart else " and set it to autostart"))
            out.append(Fail(msg, ev, key=p.name, plan=fix) if (used or images or p.autostart)
                       else Warn(msg, ev, key=p.name, plan=fix))
        elif not p.autostart and p.persistent and (used or images):
            out.append(Warn(f"storage pool {p.name} is active but not set to autostart ({why}): after the next "
                            "host reboot it is inactive",
                            {"pool": p.name, "active": True, "autostart": False, "domains": used}, key=p.name,
                            plan=_start_plan(facts, p, f"Set pool {p.name} to autostart")))
    return out or Pass(f"{len(pools)} pool(s): the ones in use are active and autostarted")


@check("storage-pool-inactive", scope="domain", area="storage", severity="error", needs=("libvirt",),
       plans=True, title="The pools of the domain's volume disks are active")
def pool_inactive_domain(facts, dom):
    """Looks at each `<disk type='volume'>`'s `<source pool>` against the host's pools.
    Why: the start fails with "unsupported configuration: storage pool 'P' containing
    volume 'V' is not active" (an undefined pool: "Storage pool not found: no storage
    pool with matching name 'P'").
    Fix safety: safe: virsh pool-start and pool-autostart (manual when the pool is not defined)."""
    vols = [d for d in dom.disks if d.type == "volume"]
    if not vols:
        return Pass("no volume disk")
    out = []
    for d in vols:
        src = d.source_el
        pool_name = src.get("pool") if src is not None else None
        vol = src.get("volume") if src is not None else None
        if not pool_name:
            continue
        pool = facts.storage.pool(pool_name)
        ev = {"target": d.target, "pool": pool_name, "volume": vol}
        if pool is None:
            out.append(Fail(f"disk {d.target}: pool {pool_name} is not defined: the start fails with \"Storage pool "
                            f"not found: no storage pool with matching name '{pool_name}'\"", ev, key=d.target,
                            plan=_manual(f"Define pool {pool_name} again or point disk {d.target} at a file",
                                         f"virsh pool-define-as {pool_name} dir --target /path/to/dir",
                                         f"virsh pool-start {pool_name}", f"virsh pool-autostart {pool_name}")))
        elif not pool.active:
            out.append(Fail(f"disk {d.target}: pool {pool_name} is not active: the start fails with \"unsupported "
                            f"configuration: storage pool '{pool_name}' containing volume '{vol}' is not active\"",
                            ev, key=d.target,
                            plan=_start_plan(facts, pool, f"Start pool {pool_name}"
                                             + ("" if pool.autostart else " and set it to autostart"))))
    return out or Pass(f"the pools of {len(vols)} volume disk(s) are active")


def _fstab_mount_for(facts, path: str):
    """The fstab entry whose mount point is `path` or one of its parents (not /)."""
    best = None
    for m in facts.storage.fstab:
        p = m.point.rstrip("/")
        if p and p != "/" and (path == p or path.startswith(p + "/")):
            if best is None or len(p) > len(best.point):
                best = m
    return best


@check("storage-pool-target-missing", scope="host", area="storage", severity="error", needs=("libvirt",),
       plans=True, title="Every storage pool's target directory exists (and its mount is mounted)")
def pool_target_missing(facts):
    """Looks at each dir/fs/netfs pool's `<target><path>` (exists, is a directory),
    /etc/fstab and /proc/mounts (a target on a filesystem that fstab lists but that is
    not mounted), and each logical pool's volume group (/dev/VG).
    Why: the pool cannot start or refresh: "cannot open directory 'PATH': No such
    file or directory" (older: "cannot open path"), and autostart fails quietly.
    Fix safety: safe for a plain dir pool not under an fstab mount (virsh pool-build
    creates the directory with the pool's permissions, then pool-start); manual when
    the path should be a mount (creating the directory would hide the missing mount)."""
    pools = facts.storage.pools
    out = []
    for p in pools:
        if p.type == "logical":
            vg = p.source_dir or p.name
            if not facts.exists(f"/dev/{vg}") and not p.active:
                out.append(Fail(f"logical pool {p.name}: volume group {vg} is not there (/dev/{vg} missing)",
                                {"pool": p.name, "vg": vg}, key=p.name,
                                plan=_manual(f"Attach the disk holding volume group {vg} and activate it, then "
                                             "start the pool", f"vgchange -ay {vg}", f"virsh pool-start {p.name}")))
            continue
        if p.type not in ("dir", "fs", "netfs") or not p.target:
            continue
        target = p.target.rstrip("/") or "/"
        info = facts.stat(target)
        fst = _fstab_mount_for(facts, target)
        unmounted = fst is not None and not facts.storage.is_mount_point(fst.point.rstrip("/"))
        ev = {"pool": p.name, "type": p.type, "target": target, "active": p.active}
        if info is not None and info.is_dir:
            if unmounted and p.type == "dir":
                out.append(Warn(f"pool {p.name}: {target} lies on {fst.point} ({fst.device}, in /etc/fstab) which "
                                f"is not mounted: the pool shows the empty directory below the mount point",
                                {**ev, "fstab": fst.point}, key=p.name,
                                plan=_manual(f"Mount {fst.point}, then refresh pool {p.name}",
                                             f"mount {shlex.quote(fst.point)}", f"virsh pool-refresh {p.name}")))
            continue
        if info is not None:
            out.append(Fail(f"pool {p.name}: target {target} is not a directory", ev, key=p.name,
                            plan=plan(f"Move {target} aside or point pool {p.name} at a directory "
                                      f"(virsh pool-edit {p.name})", Auto.MANUAL)))
            continue
        msg = (f"pool {p.name} ({p.type}): target directory {target} does not exist: the pool cannot start "
               f"(\"cannot open directory '{target}': No such file or directory\")")
        parent = posixpath.dirname(target)
        if unmounted:
            fix = _manual(f"Mount {fst.point} ({fst.device}) from /etc/fstab, then start pool {p.name}; "
                          "creating the directory would hide the missing mount",
                          f"mount {shlex.quote(fst.point)}", f"virsh pool-start {p.name}")
            msg += f"; it lies on {fst.point}, which /etc/fstab lists and is not mounted"
        elif p.type == "dir" and facts.is_dir(parent):
            acts = [RunCommand(_virsh(facts, "pool-build", p.name), summary=f"virsh pool-build {p.name}")]
            if not p.active:
                acts.append(RunCommand(_virsh(facts, "pool-start", p.name), summary=f"virsh pool-start {p.name}"))
            fix = plan(f"Create {target} with the pool's permissions (virsh pool-build {p.name})"
                       + ("" if p.active else " and start the pool"), Auto.SAFE, *acts)
        else:
            fix = _manual(f"Restore {target} (an external disk not plugged in? an unmounted share?) or point pool "
                          f"{p.name} elsewhere, then start it; pool-build only if {target} is meant to be a "
                          "plain directory", f"virsh pool-build {p.name}", f"virsh pool-start {p.name}")
        out.append(Fail(msg, ev, key=p.name, plan=fix))
    return out or Pass(f"{len(pools)} pool target(s) present" if pools else "no storage pool defined")


# -- free space --------------------------------------------------------------------
def _space_problem(sp):
    """(severity, text) for a filesystem's space, None when fine."""
    used = sp.used_pct
    if sp.avail < min(MIN_FREE, sp.total // 50) or used >= FULL_PCT:
        return "error", f"{_gib(sp.avail)} available of {_gib(sp.total)} ({used:.0f}% used)"
    if used >= LOW_PCT:
        return "warning", f"{_gib(sp.avail)} available of {_gib(sp.total)} ({used:.0f}% used)"
    return None


def _image_dirs(facts) -> dict[str, list]:
    """directory -> disk uses of file images in it (writable disks only)."""
    out: dict[str, list] = {}
    for u in facts.storage.disk_uses:
        if u.path and u.type in ("file",) and u.path.startswith("/") and not u.readonly and u.device == "disk":
            out.setdefault(posixpath.dirname(u.path), []).append(u)
    return out


def _growth(facts, paths) -> int:
    """Bytes the thin images among `paths` may still grow by (virtual size minus allocation)."""
    total = 0
    for path in paths:
        a = facts.storage.alloc(path)
        if a is None:
            continue
        try:
            hdr = facts.storage.header(path)
        except Exception:
            continue
        virtual = hdr.virtual_size if hdr is not None and hdr.format == "qcow2" else a.size
        if virtual:
            total += max(0, virtual - a.allocated)
    return total


def _space_plan(where: str, paths: list[str]):
    cmds = [f"df -h {shlex.quote(where)}", f"du -sh {shlex.quote(where)}"]
    cmds += [f"qemu-img info -U {shlex.quote(p)}" for p in paths[:3]]
    return _manual(f"Free space on the filesystem of {where}, grow it, or move images elsewhere (qemu-img info shows "
                   "virtual against allocated size); virtdoctor never deletes anything", *cmds)


@check("storage-space-exhausted", scope="host", area="storage", severity="error", needs=("libvirt",),
       plans=True, title="Filesystems holding pools and images have free space (and room for thin images to grow)")
def space_host(facts):
    """Looks at statvfs of every active dir/fs/netfs pool target and every directory
    holding a domain's writable file disk (space available to non-root users, which
    is what QEMU gets), and the room thin images (qcow2, sparse raw) may still take
    (virtual size from the image header minus allocated blocks) against it.
    Why: when the filesystem fills, guests pause with an I/O error
    (domain-paused-io-error) and vol-create fails ("Not enough space left in storage
    pool", "cannot allocate N bytes in file").
    No automatic fix: free space, grow the filesystem or move images."""
    dirs = _image_dirs(facts)
    where: dict[str, list[str]] = {}
    for p in facts.storage.pools:
        if p.active and p.type in ("dir", "fs", "netfs") and p.target:
            where.setdefault(p.target.rstrip("/") or "/", [])
    for d, uses in dirs.items():
        where.setdefault(d, []).extend(u.path for u in uses)
    if not where:
        return Pass("no pool or image directory to check")
    by_fs: dict[object, tuple[str, object, list[str]]] = {}
    for d, paths in sorted(where.items()):
        sp = facts.storage.space(d)
        if sp is None:
            continue
        key = sp.dev if sp.dev is not None else sp.path
        cur = by_fs.setdefault(key, (d, sp, []))
        cur[2].extend(p for p in paths if p not in cur[2])
    out = []
    for d, sp, paths in by_fs.values():
        prob = _space_problem(sp)
        ev = {"path": d, "total": sp.total, "avail": sp.avail, "images": paths}
        if prob:
            sev, text = prob
            res = Fail if sev == "error" else Warn
            out.append(res(f"the filesystem holding {d}: {text}; guests writing there pause with an I/O error "
                           "when it fills", ev, key=d, plan=_space_plan(d, paths)))
            continue
        grow = _growth(facts, paths)
        if grow > sp.avail:
            out.append(Warn(f"the filesystem holding {d}: thin images there may still grow by {_gib(grow)} but only "
                            f"{_gib(sp.avail)} is available (overcommitted): guests pause when it fills",
                            {**ev, "growth": grow}, key=d, plan=_space_plan(d, paths)))
    return out or Pass(f"{len(by_fs)} filesystem(s) with pools or images have room")


@check("storage-space-exhausted", scope="domain", area="storage", severity="error", plans=True,
       title="The filesystems holding the domain's writable disks have free space")
def space_domain(facts, dom):
    """Looks at statvfs of the filesystem of each writable file disk and what the
    thin image may still grow by. Why: with the default error_policy='stop' the guest
    pauses ("paused (I/O error)", domblkerror "no space") when a write finds the
    filesystem full. No automatic fix."""
    if facts.offline:
        return Skip("--offline: the host's filesystems are not consulted")
    out = []
    checked = 0
    for d in dom.disks:
        path = d.source_path
        if d.type != "file" or not path or not path.startswith("/") or d.readonly or d.device != "disk":
            continue
        sp = facts.storage.space(path)
        if sp is None:
            continue
        checked += 1
        prob = _space_problem(sp)
        ev = {"target": d.target, "path": path, "total": sp.total, "avail": sp.avail}
        if prob:
            sev, text = prob
            res = Fail if sev == "error" else Warn
            out.append(res(f"disk {d.target} ({path}): its filesystem has {text}; guest writes fail and the guest "
                           "pauses when it is full", ev, key=d.target, plan=_space_plan(posixpath.dirname(path), [path])))
            continue
        grow = _growth(facts, [path])
        if grow > sp.avail:
            out.append(Warn(f"disk {d.target} ({path}) may still grow by {_gib(grow)} but its filesystem has only "
                            f"{_gib(sp.avail)} available", {**ev, "growth": grow}, key=d.target,
                            plan=_space_plan(posixpath.dirname(path), [path])))
    return out or Pass(f"{checked} writable disk(s) have room" if checked else "no writable file disk")


@hookimpl
def virtdoctor_checks():
    return [pool_inactive_host, pool_inactive_domain, pool_target_missing, space_host, space_domain]
