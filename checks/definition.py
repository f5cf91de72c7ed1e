"""Domain definition and lifecycle: boot order, undefine traps, the root disk,
the install cdrom of a UEFI guest."""
from __future__ import annotations

from virtdoctor.api import (Auto, Disk, Fail, Pass, Warn, append_child, check, disk_name_index, element,
                            hookimpl, insert_before, plan, planner, redefine_plan, remove_element)

NVRAM_DIR = "/var/lib/libvirt/qemu/nvram"


# -- undefine --------------------------------------------------------------------
def nvram_path(dom) -> str | None:
    """The NVRAM file libvirt keeps for the domain: `<os><nvram>`, else the
    default for firmware='efi' (/var/lib/libvirt/qemu/nvram/NAME_VARS.fd)."""
    os_el = dom.root.find("os")
    if os_el is None:
        return None
    nv = os_el.find("nvram")
    if nv is not None:
        src = nv.find("source")
        path = (nv.text or "").strip() or (src.get("file") if src is not None else None)
        if path:
            return path
    if nv is not None or os_el.get("firmware") == "efi":
        return f"{NVRAM_DIR}/{dom.name}_VARS.fd" if dom.name else None
    return None


@check("nvram-undefine", scope="domain", area="definition", severity="info",
       title="Undefining the domain needs --nvram (or --keep-nvram)", plans=True)
def nvram_undefine(facts, dom):
    """Looks at `<os><nvram>` (or UEFI firmware's default NVRAM file) of a
    defined domain and whether that file exists.
    Why: `virsh undefine NAME` then fails with "Requested operation is not
    valid: cannot undefine domain with nvram".
    No automatic fix: undefine with `--nvram` (delete the UEFI variables) or
    `--keep-nvram`."""
    path = nvram_path(dom)
    if path is None:
        return Pass("no NVRAM: a plain undefine works")
    if dom.info is None:
        return Pass(f"not defined yet; once defined, undefine it with --nvram or --keep-nvram (NVRAM {path})",
                    {"nvram": path})
    if not dom.info.persistent:
        return Pass("transient: nothing to undefine", {"nvram": path})
    if not facts.exists(path):
        return Pass(f"the NVRAM file {path} does not exist yet: a plain undefine works", {"nvram": path})
    return Fail(f"{dom.name} keeps UEFI variables in {path}: 'virsh undefine {dom.name}' fails with "
                "\"cannot undefine domain with nvram\"; use --nvram or --keep-nvram", {"nvram": path}, plan=nvram_undefine_advice(facts, dom))


@planner
def nvram_undefine_advice(facts, dom):
    return plan(f"Undefine with 'virsh undefine {dom.name} --nvram' (deletes the UEFI variables) or "
                "--keep-nvram", Auto.MANUAL)


@check("transient-undefine", scope="domain", area="definition", severity="warning",
       title="The domain is persistent (defined), not transient", plans=True)
def transient_undefine(facts, dom):
    """Looks at whether a domain the daemon knows is persistent.
    Why: a transient domain (virsh create) vanishes when it stops, and
    `virsh undefine` fails with "Requested operation is not valid: cannot
    undefine transient domain".
    No automatic fix: stop it with `virsh destroy NAME`, or make it persistent
    with `virsh dumpxml NAME > NAME.xml; virsh define NAME.xml`."""
    if dom.info is None:
        return Pass("an XML file: it becomes persistent when defined with virsh define")
    if dom.info.persistent:
        return Pass("persistent")
    return Warn(f"{dom.name} is transient: it disappears when it stops, and 'virsh undefine' fails with "
                "\"cannot undefine transient domain\"", {"active": dom.info.active}, plan=transient_undefine_advice(facts, dom))


@planner
def transient_undefine_advice(facts, dom):
    return plan(f"Stop it with 'virsh destroy {dom.name}', or keep it: "
                f"'virsh dumpxml {dom.name} > {dom.name}.xml && virsh define {dom.name}.xml'", Auto.MANUAL)


# -- boot order ------------------------------------------------------------------
def _device_label(el) -> str:
    parent = el.getparent()
    tag = parent.tag if parent is not None else "?"
    target = parent.find("target") if parent is not None else None
    if tag == "disk" and target is not None and target.get("dev"):
        return f"{parent.get('device', 'disk')} {target.get('dev')}"
    if tag == "interface":
        mac = parent.find("mac")
        return f"interface {mac.get('address')}" if mac is not None else "interface"
    return tag


@check("boot-order-conflict", scope="domain", area="definition", severity="error",
       title="Boot order is given one way: <os><boot> or per-device <boot order>", plans=True)
def boot_order_conflict(facts, dom):
    """Looks at `<os><boot dev>` and every device's `<boot order>`.
    Why: libvirt refuses the pair with "unsupported configuration: per-device
    boot elements cannot be used together with os/boot elements" (at define;
    virt-xml and virt-manager hit it when adding a device with a boot order).
    Fix safety: unsafe (guest-visible boot order): drops `<os><boot>` and gives
    devices boot orders keeping the intended order."""
    os_boots = dom.os_boot_devs
    per_device = dom.device_boot_elements
    if not (os_boots and per_device):
        return Pass("boot order given " + ("per device" if per_device else "in <os>" if os_boots else "by default"))
    devs = [f"{_device_label(b)} (order {b.get('order')}, line {b.sourceline})" for b in per_device]
    return Fail(f"<os><boot dev='{', '.join(os_boots)}'> and per-device <boot order> on {', '.join(devs)}: "
                "libvirt refuses this with \"per-device boot elements cannot be used together with os/boot "
                "elements\"", {"os_boot": os_boots, "device_boot": devs}, plan=boot_order_per_device(facts, dom))


def merged_boot_order(dom) -> list:
    """Device elements in the intended boot order: devices that already carry a
    `<boot order>` first (the newer, more specific intent), by order; then, for
    each `<os><boot dev>` in turn, the first device of that class not yet listed
    (hd: disk, cdrom: cdrom, network: interface, fd: floppy), as the BIOS does."""
    ordered = sorted(dom.device_boot_elements, key=lambda b: int(b.get("order")) if b.get("order", "").isdigit() else 0)
    devices = [b.getparent() for b in ordered]
    classes = {"hd": "devices/disk[@device='disk']|devices/disk[not(@device)]",
               "cdrom": "devices/disk[@device='cdrom']", "fd": "devices/disk[@device='floppy']",
               "network": "devices/interface"}
    for dev in dom.os_boot_devs:
        xpath = classes.get(dev)
        if not xpath:
            continue
        candidates = dom.root.xpath(xpath)
        if any(c in devices for c in candidates):
            continue  # that class already boots from an explicitly ordered device
        if candidates:
            devices.append(_first_by_target(candidates))
    return devices


def _first_by_target(elements):
    def key(el):
        t = el.find("target")
        idx = disk_name_index(t.get("dev", "")) if t is not None else None
        return (idx if idx is not None else 1 << 30)

    if all(e.tag == "disk" for e in elements):
        return min(elements, key=key)
    return elements[0]


@planner
def boot_order_per_device(facts, dom):
    return redefine_plan(dom, _boot_per_device)


def _boot_per_device(copy) -> str:
    """Drop <os><boot> and number the devices in the merged order; the summary."""
    order = merged_boot_order(copy)
    for b in copy.root.findall("os/boot"):
        remove_element(b)
    for b in copy.device_boot_elements:
        remove_element(b)
    for i, dev in enumerate(order, 1):
        boot = element("boot", order=str(i))
        addr = dev.find("address")  # <boot> goes before <address>, as libvirt writes it
        if addr is not None:
            insert_before(addr, boot)
        else:
            append_child(dev, boot)
    names = ", ".join(_device_label(d.find("boot")) for d in order)
    return f"Drop <os><boot> and boot per device in this order: {names}"


# -- root disk -------------------------------------------------------------------
@check("root-disk-order", scope="domain", area="definition", severity="warning",
       title="The boot (root) disk is the first disk", plans=True)
def root_disk_order(facts, dom):
    """Looks at which disk the guest boots from (the disk with the lowest
    per-device `<boot order>`) and whether another disk comes before it in
    target order (vda before vdb).
    Why: guests taken over from elsewhere (LVM root, fstab or initramfs naming
    the first disk) fail to boot unless the root disk is first.
    No automatic fix: swap the targets (or the order of the disks) so the root
    disk is the first one."""
    disks = [d for d in dom.disks if d.device == "disk"]
    booted = [d for d in disks if d.boot_order is not None]
    if not booted:
        return Pass("no per-device boot order on a disk: the first disk boots")
    root = min(booted, key=lambda d: d.boot_order)
    idx = disk_name_index(root.target)
    earlier = [d for d in disks if d is not root and d.bus == root.bus and idx is not None
               and (disk_name_index(d.target) if disk_name_index(d.target) is not None else 1 << 30) < idx]
    if not earlier:
        return Pass(f"the boot disk {root.target} is the first {root.bus} disk")
    first = min(earlier, key=lambda d: disk_name_index(d.target))
    return Warn(f"the guest boots from {root.target} (boot order {root.boot_order}) but {first.target} comes "
                f"first: a guest whose root is on the first disk (LVM, fstab, initramfs) may not find it",
                {"boot_disk": root.target, "first_disk": first.target, "line": root.line},
                plan=root_disk_order_advice(dom, root.target, first.target))


@planner
def root_disk_order_advice(dom, boot_disk: str, first_disk: str):
    return plan(f"Swap the targets of {boot_disk} and {first_disk} "
                f"(virsh edit {dom.label}) so the root disk is first", Auto.MANUAL)


# -- UEFI and the install cdrom -------------------------------------------------
def bootable_devices(dom) -> list:
    """The device elements the firmware may boot from."""
    per = dom.device_boot_elements
    if per:
        return [b.getparent() for b in per]
    devs = dom.os_boot_devs or ["hd"]
    out = []
    for dev in devs:
        if dev == "hd":
            out += dom.root.xpath("devices/disk[@device='disk']|devices/disk[not(@device)]")
        elif dev == "cdrom":
            out += dom.root.xpath("devices/disk[@device='cdrom']")
        elif dev == "network":
            out += dom.root.xpath("devices/interface")
        elif dev == "fd":
            out += dom.root.xpath("devices/disk[@device='floppy']")
    return out


@check("uefi-cdrom-source-lost", scope="domain", area="definition", severity="warning",
       title="A UEFI guest has something to boot besides an empty cdrom", plans=True)
def uefi_cdrom_source_lost(facts, dom):
    """Looks at UEFI domains whose only bootable devices are cdroms without a
    `<source>` (the install ISO was ejected after the first boot).
    Why: the guest drops into the UEFI shell after reboot instead of booting.
    No automatic fix: attach the ISO again (virsh change-media NAME sda ISO
    --insert) or give the installed disk the first boot order."""
    if not dom.is_efi:
        return Pass("not UEFI")
    bootable = bootable_devices(dom)
    if not bootable:
        return Pass("no bootable device listed: the firmware tries every device")
    empty = [el for el in bootable if el.tag == "disk" and el.get("device") == "cdrom"
             and not Disk(el, 0).has_source]
    if len(empty) != len(bootable):
        return Pass("boots from a device with media")
    targets = ", ".join(Disk(el, 0).target for el in empty)
    return Warn(f"UEFI guest whose only boot device is the empty cdrom {targets}: it drops into the UEFI shell",
                {"cdroms": targets}, plan=uefi_cdrom_advice(dom, Disk(empty[0], 0).target or "sda"))


@planner
def uefi_cdrom_advice(dom, cd: str):
    return plan(f"Insert the ISO again ('virsh change-media {dom.label} {cd} /path/to.iso --insert --config') "
                "or boot the installed disk first", Auto.MANUAL)


@hookimpl
def virtdoctor_checks():
    return [boot_order_conflict, root_disk_order, uefi_cdrom_source_lost, nvram_undefine, transient_undefine]
