"""Host devices passed to guests: IOMMU groups of PCI devices, devices two
domains claim, USB devices that are not plugged in.

Facts: `facts.devices` (/sys/bus/pci, /sys/kernel/iommu_groups,
/sys/bus/usb, and every defined or running domain's <hostdev> claims)."""
from __future__ import annotations

from virtdoctor.api import (Auto, each_domain, FactUnavailable, Fail, Pass, RunCommand, Severity, Skip, check, hookimpl, plan,
                            redefine_plan)


def _hostdevs(root, kind: str) -> list:
    return [h for h in root.iterfind("devices/hostdev")
            if h.get("mode", "subsystem") == "subsystem" and h.get("type") == kind]


@check("vfio-group-not-viable", scope="domain", area="passthrough", severity="error",
       title="Every device in a passed-through PCI device's IOMMU group is free for VFIO", plans=True)
def vfio_group_not_viable(facts, dom):
    """Looks at each <hostdev type='pci'>: /sys/bus/pci/devices/BDF/iommu_group
    and every member of that group (/sys/kernel/iommu_groups/N/devices) with
    its driver link. A member is fine when bound to vfio-pci or pci-stub,
    unbound, a PCI bridge, or assigned to this domain as well (with
    managed='yes' libvirt binds those itself); with managed='no' the device
    itself must already be on vfio-pci.
    Why: VFIO takes whole groups: QEMU fails with "vfio 0000:01:00.0: group 1
    is not viable" and "Please ensure all devices within the iommu_group are
    bound to their vfio bus driver."
    Fix safety: manual (takes devices away from the host): the exact
    `virsh nodedev-detach` of each endpoint still on a host driver."""
    hds = _hostdevs(dom.root, "pci")
    if not hds:
        return Pass("no PCI hostdev")
    mine = {facts.devices.pci_address_of(h): h.get("managed") == "yes" for h in hds}
    mine.pop(None, None)
    problems, notes, ev, detach = [], [], {}, []
    for bdf, managed in mine.items():
        dev = facts.devices.pci_device(bdf)
        if dev is None:
            problems.append(f"PCI device {bdf} does not exist on this host")
            continue
        if dev.group is None:
            problems.append(f"{bdf} has no IOMMU group (\"no iommu_group found\"): the IOMMU is off "
                            "(iommu-disabled)")
            continue
        members = facts.devices.iommu_group(dev.group)
        ev[bdf] = {"group": dev.group, "members": {m.address: m.driver for m in members}}
        if not managed and dev.driver not in ("vfio-pci", "pci-stub"):
            problems.append(f"{bdf} (managed='no') is bound to {dev.driver or 'no driver'}, not vfio-pci")
            detach.append(dev.nodedev)
        for m in members:
            if m.address == bdf or m.address in mine or m.is_bridge or m.driver in (None, "vfio-pci", "pci-stub"):
                continue
            problems.append(f"group {dev.group} of {bdf} also holds {m.address} (class {m.pci_class}), still bound "
                            f"to host driver {m.driver}")
            detach.append(m.nodedev)
            notes.append(f"{m.address} ({m.nodedev}) is now on {m.driver}")
    if not problems:
        return Pass(f"IOMMU group(s) of {', '.join(mine)} viable", ev)
    first_group = next((v["group"] for v in ev.values()), "N")
    notes.append("or assign those devices to the guest too; ACS-override patches are not a fix")
    return Fail("; ".join(problems) + f": QEMU fails with \"group {first_group} is not viable\"", ev,
                plan=plan("Detach the rest of the IOMMU group from host drivers", Auto.MANUAL,
                          *[RunCommand(["virsh", "nodedev-detach", n]) for n in dict.fromkeys(detach)],
                          notes=list(dict.fromkeys(notes))))



@check("vfio-group-not-viable", scope="host", area="passthrough", severity="error",
       title="IOMMU groups of every passed-through PCI device are viable", needs=("libvirt",), plans=True)
def vfio_group_not_viable_host(facts):
    """Looks at the <hostdev type='pci'> of every defined domain (the domain
    check, over all): their IOMMU groups' members and driver bindings.
    Why: a domain whose group is not viable fails to start ("group N is not viable").
    Fix safety: manual (takes devices away from the host)."""
    return each_domain(facts, vfio_group_not_viable.func, "passes through a PCI device of a non-viable group")


@check("hostdev-in-use", scope="domain", area="passthrough", severity="error",
       title="No other domain claims the domain's host devices", needs=("libvirt",), plans=True)
def hostdev_in_use(facts, dom):
    """Looks at the domain's <hostdev> sources (PCI address, USB vendor:product
    or bus/device, mdev UUID) against those of every other defined domain
    (their live XML when running).
    Why: only one domain can hold a device: "Requested operation is not valid:
    PCI device 0000:01:00.0 is in use by driver QEMU, domain other" (USB, mdev
    alike). A running holder blocks this start now; defined or autostarted
    ones clash when both start.
    Fix safety: manual: detach it from one domain or give each its own device."""
    keys = []
    for h in dom.root.iterfind("devices/hostdev"):
        if h.get("mode", "subsystem") == "subsystem":
            keys += facts.devices.keys_of(h)
    if not keys:
        return Pass("no host device")
    claims = facts.devices.claims
    own_uuid = (dom.root.findtext("uuid") or "").strip()
    running, defined = [], []
    for k in dict.fromkeys(keys):
        for c in claims.get(k, []):
            if c.domain == dom.name:
                continue
            (running if c.active else defined).append((k, c))
    if not running and not defined:
        return Pass(f"host device(s) {', '.join(dict.fromkeys(keys))} claimed by no other domain")
    ev = {"running": [f"{k}: {c.domain}" for k, c in running], "defined": [f"{k}: {c.domain}" for k, c in defined]}
    del own_uuid
    if running:
        k, c = running[0]
        what = k.replace("PCI ", "PCI device ").replace("USB ", "USB device ")
        msg = (f"{k} is held by running domain {c.domain}: the start fails with \"Requested operation is not valid: "
               f"{what} is in use by driver QEMU, domain {c.domain}\"")
        severity = Severity.ERROR
    else:
        k, c = defined[0]
        msg = (f"{k} is also assigned to domain {c.domain}{' (autostart)' if c.autostart else ''}: whichever "
               "starts second fails")
        severity = Severity.WARNING
    extra = [f"{k} ({c.domain})" for k, c in (running + defined)[1:]]
    if extra:
        msg += f" (also: {', '.join(extra)})"
    others = sorted({c.domain for _, c in running + defined})
    return Fail(msg, ev, severity=severity, plan=plan("Give the device to one domain only", Auto.MANUAL, notes=[
        *[f"virsh dumpxml {o} | grep -A6 '<hostdev'   # then: virsh detach-device {o} HOSTDEV.xml --config"
          for o in others],
        f"or stop the holder first: virsh shutdown {others[0]}"]))


def _usb_match(dev, vendor, product, bus, devnum) -> bool:
    if vendor and product and (dev.vendor, dev.product) != (vendor, product):
        return False
    if bus is not None and devnum is not None and (dev.busnum, dev.devnum) != (bus, devnum):
        return False
    return True


def _hex(text):
    if not text:
        return None
    try:
        return f"{int(text, 16) if not text.lower().startswith('0x') else int(text, 0):04x}"
    except ValueError:
        return None


def _make_optional(missing_index):
    def edit(d):
        hds = _hostdevs(d.root, "usb")
        for i in missing_index:
            if i < len(hds):
                src = hds[i].find("source")
                if src is not None:
                    src.set("startupPolicy", "optional")
        return "Let the domain start without the absent USB device(s) (startupPolicy='optional')"
    return edit


def _drop(missing_index):
    def edit(d):
        hds = _hostdevs(d.root, "usb")
        for i in sorted(missing_index, reverse=True):
            if i < len(hds):
                hds[i].getparent().remove(hds[i])
        return "Remove the USB hostdev(s) this host cannot provide"
    return edit


@check("usb-hostdev-missing", scope="domain", area="passthrough", severity="error",
       title="The domain's USB host devices are plugged in", plans=True)
def usb_hostdev_missing(facts, dom):
    """Looks at <hostdev type='usb'><source><vendor/><product/><address/> against
    /sys/bus/usb/devices/*/{idVendor,idProduct,busnum,devnum}, and the
    source's startupPolicy.
    Why: an unplugged or re-enumerated device fails the start: "operation
    failed: Did not find USB device 1234:5678" (or "... could not be found at
    previous address (bus:1 device:4)").
    Fix safety: unsafe (the guest loses the device while it is absent):
    startupPolicy='optional' on the source; or plug the device in. On a host
    without a USB bus (no /sys/bus/usb) even an optional device fails the
    start ("cannot open directory '/sys/bus/usb/devices'"): the hostdev is
    removed instead."""
    hds = _hostdevs(dom.root, "usb")
    if not hds:
        return Pass("no USB hostdev")
    devices = facts.devices.usb_devices
    missing, labels = [], []
    for i, h in enumerate(hds):
        src = h.find("source")
        if src is None:
            continue
        ven, prod, addr = src.find("vendor"), src.find("product"), src.find("address")
        vendor = _hex(ven.get("id")) if ven is not None else None
        product = _hex(prod.get("id")) if prod is not None else None
        bus = devnum = None
        if addr is not None:
            try:
                bus, devnum = int(addr.get("bus", ""), 0), int(addr.get("device", ""), 0)
            except ValueError:
                pass
        if not (vendor and product) and bus is None:
            continue
        if any(_usb_match(d, vendor, product, bus, devnum) for d in devices):
            continue
        optional = src.get("startupPolicy") == "optional"
        label = (f"{vendor}:{product}" if vendor and product else "") + \
                (f" bus:{bus} device:{devnum}" if bus is not None else "")
        label = label.strip()
        if optional:
            continue
        missing.append(i)
        labels.append(label)
    if not missing:
        return Pass("USB host devices present (or optional)")
    if not facts.devices.usb_bus:
        # seen live on a host without USB: libvirt cannot even list devices, and
        # startupPolicy='optional' does not help; only dropping the hostdev does
        fix = redefine_plan(dom, _drop(missing), auto=Auto.UNSAFE,
                            notes=["this host has no USB bus (/sys/bus/usb is absent): the device can never be found"])
        return Fail(f"USB device(s) {', '.join(labels)} cannot be found: this host has no USB bus; the start fails with "
                    "\"cannot open directory '/sys/bus/usb/devices': No such file or directory\"",
                    {"missing": labels, "usb_bus": False}, plan=fix)
    text = f"Did not find USB device {labels[0]}"
    fix = redefine_plan(dom, _make_optional(missing), auto=Auto.UNSAFE,
                        notes=["or plug the device in (lsusb) and start the domain again"])
    return Fail(f"USB device(s) {', '.join(labels)} not plugged in: the start fails with \"operation failed: "
                f"{text}\"", {"missing": labels, "present": [f"{d.vendor}:{d.product}" for d in devices]}, plan=fix)


@hookimpl
def virtdoctor_checks():
    return [vfio_group_not_viable_host, vfio_group_not_viable, hostdev_in_use, usb_hostdev_missing]
