"""Disk images: backing chains (missing files, unrecorded formats), the image's real
format against `<driver type>`, locks held by other processes, images on NFS."""
from __future__ import annotations

import posixpath
import shlex

from virtdoctor.api import (Auto, Fail, FactUnavailable, Pass, RunCommand, Skip, Warn, check, hookimpl, plan,
                            redefine_plan)

IMAGES_DIR = "/var/lib/libvirt/images"


def _file_disks(dom):
    for d in dom.disks:
        path = d.source_path
        if path and d.type in ("file", "block") and path.startswith("/"):
            yield d, path


def _fmt(d) -> str | None:
    drv = d.driver
    return drv.get("type") if drv is not None else None


def _host(facts):
    if facts.offline:
        raise FactUnavailable("--offline: the host's images are not consulted")


def _q(p: str) -> str:
    return shlex.quote(p)


def _manual(summary: str, *cmds: str, notes=()):
    """A manual plan: its commands are printed (never run by `fix`)."""
    return plan(summary, Auto.MANUAL, *(RunCommand(shlex.split(c), summary=c) for c in cmds), notes=list(notes))


# -- backing chains ------------------------------------------------------------------
def _candidates(facts, missing: str, overlay: str) -> list[str]:
    """Files named like the missing backing file in the overlay's directory, the
    images directory and the active pools' targets."""
    base = posixpath.basename(missing)
    dirs = [posixpath.dirname(overlay), IMAGES_DIR]
    try:
        dirs += [p.target for p in facts.storage.pools if p.target]
    except FactUnavailable:
        pass
    out = []
    for d in dirs:
        cand = posixpath.join(d, base)
        if cand != missing and cand not in out and facts.stat(cand) is not None:
            out.append(cand)
    return out


@check("backing-file-missing", scope="domain", area="storage", severity="error", plans=True,
       title="Every backing file of the domain's images exists where the overlay says")
def backing_file_missing(facts, dom):
    """Looks at the backing chain of each file disk, read from the qcow2 headers
    (relative backing names resolved against the overlay's directory, as QEMU does),
    and at explicit `<backingStore>` sources in the XML.
    Why: the start fails with "Cannot access backing file 'B' of storage file 'T'
    (as uid:64055, gid:64055): No such file or directory" (QEMU: "Could not open
    backing file: Could not open 'B'"). Usually images were moved or renamed, or a
    relative name broke after a copy.
    No automatic fix (rewriting an image header is never automatic): the plan names
    `qemu-img rebase -u -F FMT -b NEW TOP` with a candidate found on this host."""
    _host(facts)
    out = []
    checked = 0
    for d, path in _file_disks(dom):
        if facts.stat(path) is None:
            continue  # disk-source-missing
        for bs in d.el.iterfind(".//backingStore/source"):
            f = bs.get("file")
            if f and f.startswith("/") and facts.stat(f) is None:
                out.append(Fail(f"disk {d.target}: the <backingStore> in the XML names {f}, which does not exist",
                                {"target": d.target, "top": path, "backing": f}, key=f"{d.target}:{f}",
                                plan=_manual(f"Fix the <backingStore> of disk {d.target} or restore {f}",
                                             f"virsh edit {dom.label}")))
        try:
            chain = facts.storage.chain(path)
        except FactUnavailable:
            continue
        checked += 1
        for link in chain:
            if link.path is None or link.exists:
                continue
            rel = "" if link.recorded.startswith("/") else f" (recorded as the relative name '{link.recorded}')"
            msg = (f"disk {d.target}: {link.parent} has backing file {link.path}{rel}, which does not exist: the "
                   f"start fails with \"Cannot access backing file '{link.path}' of storage file '{link.parent}'"
                   f"{_as_qemu(facts)}: No such file or directory\"")
            cands = _candidates(facts, link.path, link.parent)
            fmt = link.recorded_format
            if cands and fmt is None:
                try:
                    hdr = facts.storage.header(cands[0])
                    fmt = hdr.format if hdr else None
                except FactUnavailable:
                    fmt = None
            new = cands[0] if cands else f"/path/to/{posixpath.basename(link.path)}"
            cmd = f"qemu-img rebase -u -f qcow2 -F {fmt or 'FORMAT'} -b {_q(new)} {_q(link.parent)}"
            found = (f"{', '.join(cands)} has that name: check it is the right image first; " if cands
                     else f"no file named {posixpath.basename(link.path)} found here: put the real path in; ")
            out.append(Fail(msg, {"target": d.target, "top": path, "overlay": link.parent, "missing": link.path,
                                  "recorded": link.recorded, "candidates": cands}, key=f"{d.target}:{link.path}",
                            plan=_manual(f"Restore {link.path}, or point {link.parent} at its backing file with "
                                         f"{dom.label} shut off ({found}-u only rewrites the name in the header)",
                                         f"qemu-img info -U --backing-chain {_q(link.parent)}", cmd)))
            break
    return out or Pass(f"the backing chains of {checked} image(s) are complete" if checked else "no local image")


def _as_qemu(facts) -> str:
    try:
        q = facts.qemu_account()
    except FactUnavailable:
        return ""
    return f" (as uid:{q.uid}, gid:{q.gid})" if q.uid is not None and q.gid is not None else ""


@check("backing-format-missing", scope="domain", area="storage", severity="error", plans=True,
       title="Overlays record their backing file's format")
def backing_format_missing(facts, dom):
    """Looks at each link of each disk's backing chain (qcow2 headers): a backing
    file without the backing-format header extension.
    Why: libvirt (since 6.0) does not trust probed formats. 9.0.0, seen on this host,
    probes one level and accepts it when the backing file has no backing of its
    own; deeper, it refuses: "Requested operation is not valid: format of backing
    image 'B' of image 'T' was not specified in the image metadata (See
    https://libvirt.org/kbase/backing_chains.html for troubleshooting)". A refusal is
    an error, the accepted single level a warning.
    No automatic fix: the plan prints `qemu-img rebase -u -f qcow2 -F FMT -b ABS TOP`."""
    _host(facts)
    out = []
    checked = 0
    for d, path in _file_disks(dom):
        try:
            chain = facts.storage.chain(path)
        except FactUnavailable:
            continue
        checked += 1
        for i, link in enumerate(chain):
            if link.recorded_format or link.path is None or not link.exists:
                continue
            probed = link.header.format
            deeper = bool(link.header.backing)
            cmd = f"qemu-img rebase -u -f qcow2 -F {probed} -b {_q(link.path)} {_q(link.parent)}"
            summary = (f"Record the backing format with {dom.label} shut off (-u only writes the header); {probed} "
                       f"comes from {link.path}'s own header: trust it only if that image is yours (a probed "
                       "format is a security risk, kbase/backing_chains)")
            ev = {"target": d.target, "overlay": link.parent, "backing": link.path, "probed": probed,
                  "backing_has_backing": deeper}
            if probed != "raw" and deeper:
                out.append(Fail(f"disk {d.target}: {link.parent} does not record the format of its backing file "
                                f"{link.path} ({probed}, itself an overlay): the start fails with \"format of backing "
                                f"image '{link.path}' of image '{link.parent}' was not specified in the image "
                                "metadata\"", ev, key=f"{d.target}:{link.parent}",
                                plan=_manual(summary, cmd)))
            else:
                out.append(Warn(f"disk {d.target}: {link.parent} does not record the format of its backing file "
                                f"{link.path}; libvirt 9.0.0 probes it ({probed}) because the chain ends there, but "
                                "refuses once that file gets a backing file of its own, and newer tools may refuse "
                                "outright", ev, key=f"{d.target}:{link.parent}",
                                plan=_manual(summary, cmd)))
    return out or Pass(f"{checked} image chain(s) record their formats" if checked else "no local image")


# -- image format --------------------------------------------------------------------
def _set_format(target: str, fmt: str):
    def edit(copy):
        for d in copy.disks:
            if d.target == target:
                drv = d.driver
                if drv is None:
                    return None
                drv.set("type", fmt)
        return f"Set disk {target}'s <driver type> to {fmt}, the image's real format"
    return edit


@check("disk-format-mismatch", scope="domain", area="storage", severity="error", plans=True,
       title="Each disk's <driver type> is the image's real format")
def disk_format_mismatch(facts, dom):
    """Looks at the first bytes of each file and block disk (qcow2's `QFI\\xfb`, the
    magics of qed, vmdk, vdi, vhdx, luks, vpc; anything else is raw) against
    `<driver type>`.
    Why: qcow2 declared on a raw file fails with QEMU's "Image is not in qcow2
    format"; raw declared on a qcow2 file starts, but the guest sees the qcow2 header
    as its disk (boots nothing, and may overwrite it). A disk without a declared type
    is a warning: declare it.
    Fix safety: unsafe (guest-visible): set `<driver type>` to the real format."""
    _host(facts)
    out = []
    checked = 0
    for d, path in _file_disks(dom):
        if d.device not in ("disk", "lun"):
            continue
        declared = _fmt(d)
        try:
            hdr = facts.storage.header(path)
        except FactUnavailable:
            continue
        if hdr is None:
            continue
        checked += 1
        real = hdr.format
        ev = {"target": d.target, "path": path, "declared": declared, "real": real}
        if declared is None:
            out.append(Warn(f"disk {d.target} ({path}) declares no <driver type>; the image is {real}: declare it",
                            ev, key=d.target, plan=redefine_plan(dom, _set_format(d.target, real))
                            if d.driver is not None else None))
            continue
        if declared == real or (declared == "raw" and real in ("raw",)):
            continue
        if declared == "qcow2" and real != "qcow2":
            msg = (f"disk {d.target}: <driver type='qcow2'> but {path} is {real}: QEMU refuses it with \"Image is "
                   "not in qcow2 format\"")
        elif declared == "raw" and real != "raw":
            msg = (f"disk {d.target}: <driver type='raw'> but {path} is {real}: the guest sees the {real} header as "
                   "its disk (nothing boots, and a guest write can destroy the image)")
        else:
            msg = f"disk {d.target}: <driver type='{declared}'> but {path} is {real}"
        out.append(Fail(msg, ev, key=d.target, plan=redefine_plan(
            dom, _set_format(d.target, real),
            notes=["a deliberate raw view of a qcow2 file is rare but exists: confirm first"])))
    return out or Pass(f"{checked} disk(s) declare their real format" if checked else "no local disk image")


# -- locks ---------------------------------------------------------------------------
@check("image-write-locked", scope="domain", area="storage", severity="error", plans=True,
       title="No other process or domain holds the domain's writable images")
def image_write_locked(facts, dom):
    """Looks at /proc/locks for locks on each writable, non-shareable disk image
    (QEMU's OFD locks: byte 100+N holds permission N, 200+N refuses to share it) and
    maps them to the processes holding them (/proc/PID/fdinfo `lock:` lines); also at
    the other defined domains using the same image without `<shareable/>`.
    Why: QEMU cannot open an image another process holds: "Failed to get "write"
    lock" / "Is another process using the image [PATH]?" (qemu-img: "Failed to get
    shared "write" lock"); two writers corrupt it.
    No automatic fix (never clear a lock): the plan names the holder by pid and
    command line."""
    _host(facts)
    self_active = dom.info is not None and dom.info.active
    try:
        uses = facts.storage.disk_uses
    except FactUnavailable:
        uses = []
    out = []
    checked = 0
    for d, path in _file_disks(dom):
        if d.readonly or d.shareable or d.device not in ("disk", "lun"):
            continue
        checked += 1
        holders = []
        if not self_active:  # a running domain's QEMU holds its images: nobody else can write them
            try:
                holders = facts.storage.holders(path)
            except FactUnavailable:
                pass
        others = [u for u in uses if u.path == path and u.domain != dom.name and not u.readonly
                  and not u.shareable]
        running = [u for u in others if u.active]
        ev = {"target": d.target, "path": path, "holders": [{"pid": h.pid, "name": h.name, "cmdline": h.cmdline}
                                                            for h in holders],
              "domains": sorted({u.domain for u in others})}
        if holders:
            who = "; ".join(f"pid {h.pid} ({h.cmdline or h.name})" for h in holders)
            dom_hint = f" (domain {', '.join(sorted({u.domain for u in running}))})" if running else ""
            out.append(Fail(f"disk {d.target}: {path} is locked by {who}{dom_hint}: QEMU fails with \"Failed to get "
                            f"\"write\" lock\" / \"Is another process using the image [{path}]?\"", ev,
                            key=d.target,
                            plan=_manual(f"Stop the other user of {path} ({who}); never clear the lock. Read-only "
                                         "inspection: qemu-img info -U; deliberate sharing: <shareable/> with raw "
                                         "format and cache='none'",
                                         *(f"virsh shutdown {u.domain}" for u in running),
                                         *(f"ps -o pid,args -p {h.pid}" for h in holders if not running))))
        elif running:
            names = ", ".join(sorted({u.domain for u in running}))
            out.append(Fail(f"disk {d.target}: {path} is also a writable disk of running domain {names}", ev,
                            key=d.target,
                            plan=_manual(f"Shut down {names} first, or give this domain its own disk image",
                                         *(f"virsh shutdown {u.domain}" for u in running))))
        elif others:
            names = ", ".join(sorted({u.domain for u in others}))
            out.append(Warn(f"disk {d.target}: {path} is also a writable disk of domain {names}: the second one to "
                            "start fails (\"Failed to get \"write\" lock\")", ev, key=d.target,
                            plan=plan(f"Give each domain its own image (a clone that kept the source path?), or "
                                      "mark the disk <shareable/> (raw, cache='none') if both write it on purpose",
                                      Auto.MANUAL)))
    return out or Pass(f"{checked} writable image(s) are not held by anyone else" if checked
                       else "no writable local image")


# -- NFS -----------------------------------------------------------------------------
@check("nfs-root-squash", scope="domain", area="storage", severity="error", plans=True,
       title="Images on NFS are usable by QEMU's account (root_squash blocks libvirt's chown)")
def nfs_root_squash(facts, dom):
    """Looks at the mount of each file disk (/proc/mounts: nfs, nfs4); for images
    there, the owner and mode against QEMU's account, and QEMU's uid against
    Debian's fixed 64055 (equal uids across hosts are needed for migration).
    Why: with `root_squash` libvirt's chown to QEMU's user fails (EPERM, ignored on
    purpose), so QEMU cannot open an image it does not already own: "Could not open
    'PATH': Permission denied".
    No automatic fix: export with no_root_squash, or chown the files to 64055:64055
    on the server."""
    _host(facts)
    try:
        mounts = facts.storage.mounts
    except FactUnavailable as exc:
        return Skip(str(exc))
    del mounts
    try:
        q = facts.qemu_account()
    except FactUnavailable as exc:
        return Skip(str(exc))
    out = []
    on_nfs = 0
    for d, path in _file_disks(dom):
        m = facts.storage.mount_of(path)
        if m is None or not m.fstype.startswith("nfs"):
            continue
        on_nfs += 1
        info = facts.stat(path)
        if info is None or q.uid is None:
            continue
        want = "r" if d.readonly else "rw"
        ev = {"target": d.target, "path": path, "mount": m.point, "server": m.device, "owner": info.owner,
              "mode": info.mode_text, "qemu": q.label}
        if info.uid != q.uid and not info.allowed(q.uid, q.gids, want):
            out.append(Fail(f"disk {d.target}: {path} is on NFS ({m.device} at {m.point}), owned by {info.owner}:"
                            f"{info.group} {info.mode_text}; libvirt's chown to {q.label} fails on a root_squash "
                            f"export, so QEMU gets \"Could not open '{path}': Permission denied\"", ev, key=d.target,
                            plan=_manual(f"On the NFS server {m.device.split(':', 1)[0]}: chown {posixpath.basename(path)} "
                                         f"to {q.uid}:{q.gid if q.gid is not None else q.uid} in "
                                         f"{m.device.split(':', 1)[-1]}, or export it with no_root_squash "
                                         "(/etc/exports, then exportfs -ra); keep QEMU's uid/gid equal on every "
                                         "host sharing the export", f"findmnt -T {_q(path)}", f"ls -ln {_q(path)}")))
    if on_nfs and q.uid is not None and q.user == "libvirt-qemu" and q.uid != 64055:
        out.append(Warn(f"QEMU's user libvirt-qemu has uid {q.uid}, not Debian's fixed 64055: images on NFS owned "
                        "by 64055 on other hosts are not its own here (migration breaks)",
                        {"uid": q.uid}, key="uid",
                        plan=plan("Give libvirt-qemu the same uid/gid (64055) on every host sharing the storage",
                                  Auto.MANUAL)))
    return out or Pass(f"{on_nfs} image(s) on NFS usable by {q.label}" if on_nfs else "no image on NFS")


@hookimpl
def virtdoctor_checks():
    return [backing_file_missing, backing_format_missing, disk_format_mismatch, image_write_locked, nfs_root_squash]
