"""Snapshots: internal snapshots that libvirt refuses (UEFI/pflash guests, non-qcow2
disks) and external snapshots that libvirt 9.0.0 cannot revert to."""
from __future__ import annotations

import shlex

from virtdoctor.api import Auto, FactUnavailable, Pass, RunCommand, Warn, check, hookimpl, plan

# libvirt 9.0.0 (this host) refuses "revert to external snapshot not supported yet",
# reproduced live; later releases gained the revert (not encoded: check the host's release)
REVERT_EXTERNAL_TESTED = (9, 0)


def _snapshots(facts, dom):
    if dom.info is None:
        return None
    try:
        return facts.runstate.snapshots(dom.name)
    except FactUnavailable:
        return None


def _pflash(dom) -> bool:
    os_el = dom.root.find("os")
    loader = os_el.find("loader") if os_el is not None else None
    return dom.is_efi or (loader is not None and loader.get("type") == "pflash")


def _manual(summary: str, *cmds: str):
    """A manual plan: its commands are printed (never run by `fix`)."""
    return plan(summary, Auto.MANUAL, *(RunCommand(shlex.split(c), summary=c) for c in cmds))


def _external_plan(name: str):
    return _manual("Take external snapshots instead (--memspec adds the RAM for a full checkpoint), and know that "
                   "libvirt 9.0.0 cannot revert to them (see snapshot-revert-external)",
                   f"virsh snapshot-create-as {name} SNAP --disk-only --atomic")


@check("snapshot-internal-uefi", scope="domain", area="snapshots", severity="warning", plans=True,
       title="UEFI/pflash guests do not rely on internal snapshots")
def internal_uefi(facts, dom):
    """Looks at the firmware (`<os firmware='efi'>`, a pflash `<loader>`) and the
    domain's snapshots (internal ones: `<memory snapshot='internal'>` or internal
    disks). Why: libvirt refuses internal snapshots of pflash guests ("Operation not
    supported: internal snapshots of a VM with pflash based firmware are not
    supported"): virt-manager's snapshot button fails on every UEFI guest. A UEFI
    guest that already has internal snapshots (taken before, or on another host) is
    a warning; other UEFI guests get a note. No automatic fix: use external snapshots."""
    if not _pflash(dom):
        return Pass("not a UEFI/pflash guest")
    snaps = _snapshots(facts, dom) or []
    internal = [s.name for s in snaps if not s.external]
    if internal:
        return Warn(f"UEFI guest with internal snapshots ({', '.join(internal)}): libvirt refuses new internal "
                    "snapshots of pflash guests (\"internal snapshots of a VM with pflash based firmware are not "
                    "supported\"), and they never captured the NVRAM", {"internal": internal},
                    plan=_external_plan(dom.label))
    return Pass("UEFI guest: internal snapshots are refused here (\"internal snapshots of a VM with pflash based "
                f"firmware are not supported\"); use external ones: virsh snapshot-create-as {dom.label} SNAP "
                "--disk-only --atomic")


@check("snapshot-internal-raw-disk", scope="domain", area="snapshots", severity="warning", plans=True,
       title="Guests that use internal snapshots have only qcow2 disks")
def internal_raw(facts, dom):
    """Looks at every writable disk that snapshots include (not `snapshot='no'`, not
    readonly or cdrom) and its `<driver type>`, and at the domain's snapshots.
    Why: internal snapshots need every such disk in qcow2: "unsupported configuration:
    internal snapshot for disk vdb unsupported for storage type raw". A guest that has
    internal snapshots and a non-qcow2 disk is a warning (the next one fails); other
    guests with raw disks get a note. No automatic fix: external snapshots,
    `snapshot='no'` on the disk (unsafe: changes coverage) or a conversion to qcow2."""
    bad = []
    for d in dom.disks:
        if d.device in ("cdrom", "floppy") or d.readonly:
            continue
        if d.el.get("snapshot") == "no":
            continue
        drv = d.driver
        fmt = drv.get("type") if drv is not None else None
        if fmt != "qcow2":
            bad.append((d.target, fmt or "unset"))
    if not bad:
        return Pass("every snapshotted disk is qcow2")
    snaps = _snapshots(facts, dom) or []
    internal = [s.name for s in snaps if not s.external]
    which = ", ".join(f"{t} ({f})" for t, f in bad)
    tgt, fmt = bad[0]
    if internal:
        return Warn(f"guest with internal snapshots ({', '.join(internal)}) has non-qcow2 disks {which}: the next "
                    f"internal snapshot fails with \"internal snapshot for disk {tgt} unsupported for storage type "
                    f"{fmt}\"", {"disks": bad, "internal": internal},
                    plan=_manual(f"Use external snapshots, exclude disk {tgt} (snapshot='no'), or convert it to qcow2 "
                                 f"with the guest shut off and point disk {tgt} at the copy with type='qcow2'",
                                 f"virsh snapshot-create-as {dom.label} SNAP --disk-only --atomic",
                                 "qemu-img convert -O qcow2 SRC DST"))
    return Pass(f"non-qcow2 disks {which}: internal snapshots would be refused (\"internal snapshot for disk {tgt} "
                f"unsupported for storage type {fmt}\"); use --disk-only external snapshots")


@check("snapshot-revert-external", scope="domain", area="snapshots", severity="warning", plans=True,
       title="The domain has no external snapshot this libvirt cannot revert to")
def revert_external(facts, dom):
    """Looks at the domain's snapshots (`<memory snapshot='external'>`, `<disk
    snapshot='external'>`) and the daemon's libvirt version. Why: libvirt 9.0.0 creates
    external snapshots but refuses to revert to them ("unsupported configuration:
    revert to external snapshot not supported yet"); operators find out during an
    emergency, so warn before. No automatic fix: revert by hand (shut down, point the
    disk back at the chosen image, or blockcommit) or upgrade libvirt."""
    snaps = _snapshots(facts, dom)
    if not snaps:
        return Pass("no snapshot")
    ext = [s for s in snaps if s.external]
    if not ext:
        return Pass(f"{len(snaps)} internal snapshot(s)")
    try:
        ver = facts.libvirt.versions().get("libvirt", "")
    except FactUnavailable:
        ver = ""
    try:
        major_minor = tuple(int(x) for x in ver.split(".")[:2])
    except ValueError:
        major_minor = ()
    names = ", ".join(s.name for s in ext)
    if major_minor and major_minor > REVERT_EXTERNAL_TESTED:
        return Pass(f"external snapshots {names}: libvirt {ver} is newer than 9.0.0 (which cannot revert them); "
                    "check that your release can")
    name = dom.label
    return Warn(f"external snapshots {names}: libvirt {ver or '9.0.0'} cannot revert to them (\"revert to external "
                "snapshot not supported yet\"); plan a manual revert before you need it",
                {"external": [s.name for s in ext], "libvirt": ver},
                plan=_manual("Revert by hand when needed: shut the guest down, point each disk's <source file> back at "
                             "the image the snapshot started from (the overlay's backing file), drop the snapshot's "
                             "metadata; or merge instead (virsh blockcommit NAME vda --active --pivot)",
                             f"virsh snapshot-dumpxml {name} {ext[-1].name}", f"virsh domblklist {name} --details",
                             f"virsh edit {name}", f"virsh snapshot-delete {name} {ext[-1].name} --metadata"))


@hookimpl
def virtdoctor_checks():
    return [internal_uefi, internal_raw, revert_external]
