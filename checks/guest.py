"""The guest machine: CPU mode, vCPU count, clock, pointer, USB controller.

Each failure carries its fix plan: an edit of a copy of the domain XML (the
XML-edit helpers of virtdoctor.api), redefined through libvirt by
`redefine_plan`, which re-applies the same edit to the domain's current
inactive XML at apply time so that two fixes on one domain do not undo each other.
"""
from __future__ import annotations

from typing import Callable

from virtdoctor.api import (Auto, FactUnavailable, Fail, Pass, Severity, Skip, Warn, append_child, check,
                            element, ensure_child, hookimpl, insert_before, is_q35, osinfo, plan, planner,
                            redefine_plan, remove_element)

X86 = ("x86_64", "i686")
USB1_MODELS = ("piix3-uhci", "piix4-uhci", "ich9-uhci1", "ich9-uhci2", "ich9-uhci3", "vt82c686b-uhci",
               "pci-ohci")
USB2_MODELS = ("ich9-ehci1",)
USB3_MODELS = ("qemu-xhci", "nec-xhci")


def domain_plan(dom, summary: str, auto: Auto, edit: Callable, notes: list[str] | tuple = ()):
    """The core's redefine_plan for this module's edits, which take the root element."""
    return redefine_plan(dom, lambda d: edit(d.root), auto=auto, summary=summary, notes=notes)


# -- aarch64-host-model ------------------------------------------------------------
def _host_arch(facts) -> str | None:
    try:
        return facts.libvirt.host_arch() or None
    except FactUnavailable:
        return None


@check("aarch64-host-model", scope="domain", area="guest", severity="error",
       title="CPU mode host-model is usable for this guest", plans=True)
def aarch64_host_model(facts, dom):
    """Looks at <cpu mode='host-model'> with an aarch64 guest or an aarch64
    host (host arch from the capabilities when libvirt answers); when the domain
    capabilities are reachable they decide (<mode name='host-model' supported>).
    Why: libvirt has no host CPU model for ARM, so the start fails with
    "CPU mode 'host-model' for aarch64 kvm domain on aarch64 host is not supported
    by hypervisor" (older releases: "cannot detect host CPU model for aarch64
    architecture").
    Fix safety: unsafe (guest-visible CPU): host-passthrough for KVM; for TCG,
    where passthrough is refused too, mode 'maximum'."""
    cpu = dom.root.find("cpu")
    mode = cpu.get("mode") if cpu is not None else None
    if mode != "host-model":
        return Pass(f"CPU mode is {mode or 'the default'}", {"cpu_mode": mode})
    host = _host_arch(facts)
    evidence = {"cpu_mode": mode, "guest_arch": dom.arch, "host_arch": host, "virt_type": dom.virt_type}
    try:
        caps = facts.domain_caps(dom)
        supported = caps.find("cpu/mode[@name='host-model']")
        evidence["domcapabilities"] = None if supported is None else supported.get("supported")
    except FactUnavailable:
        supported = None
    arm = dom.arch == "aarch64" or host == "aarch64"
    text = (f"CPU mode 'host-model' for {dom.arch or '?'} {dom.virt_type or '?'} domain on {host or dom.arch or '?'} "
            f"host is not supported by hypervisor")
    if supported is not None:
        if supported.get("supported") == "yes":
            return Pass("the domain capabilities offer host-model for this guest", evidence)
        if arm or supported.get("supported") == "no":
            return Fail(f"the domain capabilities say host-model is unsupported: the start fails with \"{text}\"",
                        evidence, plan=use_host_passthrough(facts, dom))
    if not arm:
        return Pass("host-model on a non-ARM guest and host", evidence)
    return Fail(f"host-model with an aarch64 {'guest' if dom.arch == 'aarch64' else 'host'}: libvirt has no host "
                f"CPU model for ARM and the start fails with \"{text}\"", evidence, plan=use_host_passthrough(facts, dom))


def _cpu_edit(mode: str):
    def edit(root):
        cpu = root.find("cpu")
        if cpu is None or cpu.get("mode") != "host-model":
            return
        cpu.set("mode", mode)
        for attr in ("match",):
            cpu.attrib.pop(attr, None)
        for child in list(cpu):
            if child.tag in ("model", "vendor"):
                remove_element(child)
    return edit


@planner
def use_host_passthrough(facts, dom):
    mode = "host-passthrough" if dom.virt_type == "kvm" else "maximum"
    why = ("" if mode == "host-passthrough" else
           " (TCG: host-passthrough needs KVM on the same arch, 'maximum' is QEMU's richest emulated CPU)")
    return domain_plan(dom, f"Set <cpu mode='{mode}'> in place of host-model{why}", Auto.UNSAFE, _cpu_edit(mode))


# -- vcpus-over-255-need-iommu-eim ------------------------------------------------------
def _vcpus(dom) -> int | None:
    text = (dom.root.findtext("vcpu") or "").strip()
    return int(text) if text.isdigit() else None


def _eim_state(root) -> dict:
    iommu = root.find("devices/iommu")
    driver = iommu.find("driver") if iommu is not None else None
    ioapic = root.find("features/ioapic")
    return {"iommu_model": iommu.get("model") if iommu is not None else None,
            "intremap": driver.get("intremap") if driver is not None else None,
            "eim": driver.get("eim") if driver is not None else None,
            "ioapic_driver": ioapic.get("driver") if ioapic is not None else None}


@check("vcpus-over-255-need-iommu-eim", scope="domain", area="guest", severity="error",
       title="More than 255 vCPUs come with the intel IOMMU in extended interrupt mode", plans=True)
def vcpus_over_255_need_iommu_eim(facts, dom):
    """Looks at the maximum vCPU count (<vcpu>) of an x86 guest, the machine
    type, <iommu model='intel'><driver intremap='on' eim='on'/> and
    <features><ioapic driver='qemu'/>.
    Why: libvirt refuses the start with "more than 255 vCPUs require extended
    interrupt mode enabled on the iommu device" (on i440fx: "more than 255 vCPUs
    are only supported on q35-based machine types"); eim needs intremap, and
    intremap the split I/O APIC.
    Fix safety: unsafe (new guest device); on q35 adds the IOMMU and the ioapic
    driver; on other machines it is manual (the machine type must change)."""
    n = _vcpus(dom)
    evidence = {"vcpus": n, "arch": dom.arch, "machine": dom.machine, **_eim_state(dom.root)}
    if dom.arch not in X86:
        return Pass(f"not an x86 guest ({dom.arch or 'no arch'})", evidence)
    if n is None or n <= 255:
        return Pass(f"{n if n is not None else 'default'} vCPUs", evidence)
    if not is_q35(dom.machine):
        return Fail(f"{n} vCPUs on machine {dom.machine or 'pc (default)'}: libvirt refuses the start with "
                    "\"more than 255 vCPUs are only supported on q35-based machine types\"", evidence, plan=add_intel_iommu_eim(facts, dom))
    missing = []
    if evidence["iommu_model"] != "intel" or evidence["eim"] != "on":
        missing.append("<iommu model='intel'> with eim='on'")
    if evidence["iommu_model"] == "intel" and evidence["intremap"] != "on":
        missing.append("intremap='on'")
    if evidence["ioapic_driver"] != "qemu":
        missing.append("<ioapic driver='qemu'/>")
    if not missing:
        return Pass(f"{n} vCPUs with the intel IOMMU in extended interrupt mode", evidence)
    return Fail(f"{n} vCPUs without {', '.join(missing)}: the start fails with \"more than 255 vCPUs require "
                "extended interrupt mode enabled on the iommu device\"", evidence, plan=add_intel_iommu_eim(facts, dom))


def _add_eim(root):
    devices = root.find("devices")
    if devices is None:
        devices = append_child(root, element("devices"))
    iommu = devices.find("iommu")
    if iommu is None:
        iommu = append_child(devices, element("iommu", model="intel"))
    iommu.set("model", "intel")
    driver = iommu.find("driver")
    if driver is None:
        driver = append_child(iommu, element("driver"))
    driver.set("intremap", "on")
    driver.set("eim", "on")
    features = ensure_child(root, "features", before=("cpu", "clock", "on_poweroff", "devices"))
    ioapic = features.find("ioapic")
    if ioapic is None:
        ioapic = append_child(features, element("ioapic"))
    ioapic.set("driver", "qemu")


@planner
def add_intel_iommu_eim(facts, dom):
    if not is_q35(dom.machine):
        return plan("Move the guest to a q35 machine type, then add <iommu model='intel'><driver intremap='on' "
                    "eim='on'/></iommu> and <ioapic driver='qemu'/>", Auto.MANUAL,
                    notes=["changing the machine type from i440fx to q35 changes the guest's hardware (PCI "
                           "layout, no IDE): do it with virt-manager or by hand, then re-run virtdoctor"])
    return domain_plan(dom, "Add <iommu model='intel'><driver intremap='on' eim='on'/></iommu> and "
                       "<ioapic driver='qemu'/>", Auto.UNSAFE, _add_eim)


# -- guest OS ------------------------------------------------------------------------
WINDOWS_FAMILIES = ("winnt", "win9x", "win16")
LINUX_ID_HOSTS = ("fedoraproject.org", "redhat.com", "centos.org", "debian.org", "ubuntu.com", "opensuse.org",
                  "suse.com", "archlinux.org", "almalinux.org", "rockylinux.org", "alpinelinux.org", "gentoo.org",
                  "mageia.org", "voidlinux.org", "nixos.org", "kali.org", "linuxmint.com", "manjaro.org",
                  "mandriva.com", "altlinux.org", "slackware.com", "clearlinux.org", "cirros-cloud.net")


def guest_os(facts, dom) -> tuple[str | None, dict]:
    """("windows" | "linux" | another osinfo family | None, evidence) from the
    libosinfo metadata: osinfo-db's family when installed and it knows the id,
    else the id itself. Never from the domain name: a VM called "win-build" may
    well run Linux."""
    os_id = osinfo.domain_os_id(dom.root)
    evidence: dict = {"os_id": os_id}
    if not os_id:
        return None, evidence
    family = None
    if osinfo.osinfo_installed(facts):
        family, chain = osinfo.os_family(facts, os_id)
        entry = osinfo.os_entry(facts, os_id)
        if entry is not None:
            evidence["os_name"] = entry.name
        if family:
            evidence.update(family=family, source="osinfo-db")
            if len(chain) > 1:
                evidence["derives_from"] = chain[1:]
    if family is None:
        host = os_id.split("://", 1)[-1].split("/", 1)[0]
        path = os_id.split("://", 1)[-1].split("/", 1)[1] if "/" in os_id.split("://", 1)[-1] else ""
        if host == "microsoft.com" and (path.startswith("win") or path.startswith("msdos")):
            family = "winnt" if path.startswith("win") else "msdos"
        elif host in LINUX_ID_HOSTS or (host == "libosinfo.org" and path.startswith("linux")):
            family = "linux"
        evidence.update(family=family, source="os id" + ("" if osinfo.osinfo_installed(facts) else " (no osinfo-db)"))
    if family in WINDOWS_FAMILIES:
        return "windows", evidence
    return family, evidence


# -- clock-offset-mismatch ---------------------------------------------------------------
def _clock(root) -> tuple[str, str | None]:
    clock = root.find("clock")
    offset = clock.get("offset", "utc") if clock is not None else "utc"
    basis = clock.get("basis", "utc") if clock is not None and offset == "variable" else None
    return offset, basis


WANTED_OFFSET = {"windows": "localtime", "linux": "utc"}


@check("clock-offset-mismatch", scope="domain", area="guest", severity="warning",
       title="The guest clock offset suits the guest OS", plans=True)
def clock_offset_mismatch(facts, dom):
    """Looks at <clock offset> (and basis for offset='variable') against the
    guest OS from the libosinfo metadata (osinfo-db's family when installed,
    else the os id). Without OS metadata it skips: the name is no evidence.
    Why: Linux keeps the RTC in UTC and Windows in local time; the wrong offset
    puts the guest clock hours off (the seed: a CentOS guest 8 h fast with
    offset='localtime').
    Fix safety: unsafe; the guest sees its clock jump at the next boot."""
    kind, evidence = guest_os(facts, dom)
    if kind is None:
        if evidence.get("os_id"):
            return Skip(f"guest OS {evidence['os_id']} is not in osinfo-db and its id names no known family",
                        evidence)
        return Skip("the domain XML records no guest OS (libosinfo metadata); the name alone proves nothing",
                    evidence)
    want = WANTED_OFFSET.get(kind)
    offset, basis = _clock(dom.root)
    evidence.update(offset=offset, basis=basis, wanted=want)
    if want is None:
        return Pass(f"no clock rule for the {kind} family", evidence)
    if offset in ("timezone", "absolute"):
        return Pass(f"offset='{offset}' is an explicit choice", evidence)
    effective = basis if offset == "variable" else offset
    if effective == want:
        return Pass(f"{kind} guest with its RTC in {want}", evidence)
    label = "Windows" if kind == "windows" else "Linux"
    return Warn(f"{label} guest ({evidence['os_id']}) with clock offset '{effective}': {label} expects its RTC "
                f"in {want}, so the guest clock runs hours off", evidence, plan=set_clock_offset(facts, dom))


def _set_offset(want: str):
    def edit(root):
        clock = root.find("clock")
        if clock is None:
            clock = ensure_child(root, "clock", before=("on_poweroff", "on_reboot", "on_crash", "pm", "devices"))
        if clock.get("offset") == "variable":
            clock.set("basis", want)
            return
        if clock.get("offset") in ("timezone", "absolute"):
            return
        clock.set("offset", want)
        clock.attrib.pop("basis", None)
    return edit


@planner
def set_clock_offset(facts, dom):
    kind, _ = guest_os(facts, dom)
    want = WANTED_OFFSET.get(kind)
    if want is None:
        return None
    return domain_plan(dom, f"Set <clock offset='{want}'> for the {kind} guest", Auto.UNSAFE, _set_offset(want))


# -- windows-tablet ------------------------------------------------------------------
def _tablets(root) -> list:
    return [i for i in root.iterfind("devices/input")
            if i.get("type") == "tablet" and i.get("bus", "usb") in ("usb", "virtio")]


def _usb_disabled(root) -> bool:
    return any(c.get("model") == "none" for c in root.iterfind("devices/controller[@type='usb']"))


@check("windows-tablet", scope="domain", area="guest", severity="warning",
       title="A Windows guest has exactly one USB or virtio tablet", plans=True)
def windows_tablet(facts, dom):
    """Looks at the <input type='tablet'> devices (bus usb or virtio) of a
    guest whose libosinfo metadata says Windows.
    Why: with only the PS/2 mouse Windows shows two pointers that never meet
    (relative mouse drift); with several tablets the pointer jumps and Windows
    may blue-screen (the seed).
    Fix safety: unsafe (guest hardware); keeps or adds one
    <input type='tablet' bus='usb'/> and removes the others."""
    kind, evidence = guest_os(facts, dom)
    if kind is None:
        return Skip("the domain XML records no guest OS (libosinfo metadata); the name alone proves nothing",
                    evidence)
    tablets = _tablets(dom.root)
    evidence["tablets"] = [f"{t.get('type')}:{t.get('bus', 'usb')}" for t in tablets]
    if kind != "windows":
        return Pass(f"not a Windows guest ({kind})", evidence)
    if len(tablets) == 1:
        return Pass(f"one {tablets[0].get('bus', 'usb')} tablet", evidence)
    if not tablets:
        return Warn("Windows guest without a USB tablet: the mouse drifts, two pointers that never meet", evidence, plan=add_usb_tablet(facts, dom))
    return Warn(f"Windows guest with {len(tablets)} tablets: the pointer jumps, Windows may blue-screen; "
                "keep exactly one", evidence, plan=add_usb_tablet(facts, dom))


def _one_usb_tablet(root):
    tablets = _tablets(root)
    keep = next((t for t in tablets if t.get("bus", "usb") == "usb"), None)
    for t in tablets:
        if t is not keep:
            remove_element(t)
    if keep is None:
        devices = root.find("devices")
        first_input = devices.find("input")
        tablet = element("input", type="tablet", bus="usb")
        if first_input is not None:
            insert_before(first_input, tablet)
        else:
            append_child(devices, tablet)
    if _usb_disabled(root):
        _xhci(root)


@planner
def add_usb_tablet(facts, dom):
    if dom.root.find("devices") is None:
        return None
    notes = ["the guest needs its USB HID driver (built in since Windows XP)"]
    return domain_plan(dom, "Keep exactly one <input type='tablet' bus='usb'/>", Auto.UNSAFE, _one_usb_tablet, notes)


# -- usb-controller-model ----------------------------------------------------------------
def _usb_devices(root) -> list[tuple[str, str]]:
    out = []
    for el in root.iterfind("devices/*"):
        tag = el.tag
        if tag == "input" and el.get("bus") == "usb":
            out.append(("input", f"input {el.get('type')} usb"))
        elif tag == "hostdev" and el.get("type") == "usb":
            out.append(("hostdev", "hostdev usb " + _hostdev_label(el)))
        elif tag == "redirdev" and el.get("bus", "usb") == "usb":
            out.append(("redirdev", f"redirdev {el.get('type')}"))
        elif tag == "disk" and el.find("target") is not None and el.find("target").get("bus") == "usb":
            out.append(("disk", f"disk {el.find('target').get('dev')} usb"))
        elif tag == "hub" and el.get("type") == "usb":
            out.append(("hub", "hub usb"))
        elif tag == "sound" and el.get("model") == "usb":
            out.append(("sound", "sound usb"))
        elif tag == "smartcard":
            out.append(("smartcard", f"smartcard {el.get('mode')}"))
    return out


def _hostdev_label(el) -> str:
    src = el.find("source")
    if src is None:
        return "?"
    v, p, a = src.find("vendor"), src.find("product"), src.find("address")
    if v is not None and p is not None:
        return f"{v.get('id')}:{p.get('id')}"
    if a is not None:
        return f"bus {a.get('bus')} device {a.get('device')}"
    return "?"


def default_usb_model(dom) -> str | None:
    """libvirt 9.0's default model for a USB controller without one."""
    if dom.arch in X86:
        return "qemu-xhci" if is_q35(dom.machine) else "piix3-uhci"
    if dom.arch == "aarch64":
        return "qemu-xhci"
    return None


def _usb_speed(facts, hostdev) -> int | None:
    """The host device's speed in Mbit/s from sysfs, None when unknown."""
    src = hostdev.find("source")
    if src is None:
        return None
    v, p, a = src.find("vendor"), src.find("product"), src.find("address")
    try:
        for dev in facts.glob("/sys/bus/usb/devices/*"):
            if ":" in dev.rsplit("/", 1)[-1]:
                continue  # interfaces, not devices
            if v is not None and p is not None:
                vid = (facts.read_text(f"{dev}/idVendor") or "").strip()
                pid = (facts.read_text(f"{dev}/idProduct") or "").strip()
                if int(vid or "-1", 16) != int(v.get("id", "-1"), 16) or int(pid or "-1", 16) != int(p.get("id", "-1"), 16):
                    continue
            elif a is not None:
                bus = (facts.read_text(f"{dev}/busnum") or "").strip()
                num = (facts.read_text(f"{dev}/devnum") or "").strip()
                if bus != str(int(a.get("bus", "-1"), 0)) or num != str(int(a.get("device", "-1"), 0)):
                    continue
            else:
                return None
            speed = (facts.read_text(f"{dev}/speed") or "").strip()
            return int(float(speed)) if speed else None
    except (FactUnavailable, ValueError):
        return None
    return None


@check("usb-controller-model", scope="domain", area="guest", severity="warning",
       title="The USB controller model suits the USB devices", plans=True)
def usb_controller_model(facts, dom):
    """Looks at <controller type='usb' model> (libvirt's default when absent:
    piix3-uhci on i440fx, qemu-xhci on q35 and aarch64) against the guest's USB
    devices: inputs, hostdevs (their speed from the host's sysfs when visible),
    redirdevs, USB disks, hubs.
    Why: model='none' with USB devices is refused ("Can't add USB input device.
    USB bus is disabled", "USB is disabled for this domain, but USB devices are
    present in the domain XML"), so a q35 guest without a USB controller cannot
    take a USB tablet; passthrough devices on a USB 1.1 (uhci/ohci) or a USB 3
    device on a USB 2 controller run slowly or not at all.
    Fix safety: unsafe (guest hardware): one qemu-xhci controller in place of
    the old USB controllers."""
    controllers = list(dom.root.iterfind("devices/controller[@type='usb']"))
    models = [c.get("model") or default_usb_model(dom) for c in controllers]
    if not controllers:
        models = [default_usb_model(dom)] if default_usb_model(dom) else []
    devices = _usb_devices(dom.root)
    evidence = {"controllers": models, "usb_devices": [d[1] for d in devices], "machine": dom.machine}
    if any(m == "none" for m in models):
        if not devices:
            return Pass("USB disabled and no USB devices", evidence)
        kinds = {k for k, _ in devices}
        text = ("Can't add USB input device. USB bus is disabled" if "input" in kinds else
                "Can't add USB hub: USB is disabled for this domain" if "hub" in kinds else
                "Can't add host USB device: USB is disabled in this host" if "hostdev" in kinds else
                "USB is disabled for this domain, but USB devices are present in the domain XML")
        return Fail(f"USB controller model='none' with {', '.join(d[1] for d in devices)}: libvirt refuses the "
                    f"domain with \"{text}\"", evidence, severity=Severity.ERROR, plan=use_qemu_xhci(facts, dom))
    if not devices or not models:
        return Pass("no USB devices that care about the controller", evidence)
    best = "usb3" if any(m in USB3_MODELS for m in models) else "usb2" if any(m in USB2_MODELS for m in models) \
        else "usb1" if any(m in USB1_MODELS for m in models) else None
    evidence["speed_class"] = best
    if best == "usb3" or best is None:
        return Pass(f"USB controller {', '.join(models)}", evidence)
    bulk = [d for d in devices if d[0] in ("hostdev", "redirdev", "disk")]
    fast = []
    for el in dom.root.iterfind("devices/hostdev[@type='usb']"):
        speed = _usb_speed(facts, el)
        if speed is not None and speed >= 5000:
            fast.append(f"{_hostdev_label(el)} ({speed} Mbit/s)")
    evidence["usb3_hostdevs"] = fast
    if fast:
        return Warn(f"USB 3 device {', '.join(fast)} on a {best.upper().replace('USB', 'USB ')} controller "
                    f"({', '.join(models)}): it runs slowly or not at all; use qemu-xhci", evidence, plan=use_qemu_xhci(facts, dom))
    if best == "usb1" and bulk:
        return Warn(f"{', '.join(d[1] for d in bulk)} on a USB 1.1 controller ({', '.join(models)}, 12 Mbit/s): "
                    "slow; use qemu-xhci", evidence, plan=use_qemu_xhci(facts, dom))
    return Pass(f"USB controller {', '.join(models)}", evidence)


def _xhci(root):
    devices = root.find("devices")
    old = [c for c in devices.iterfind("controller[@type='usb']") if c.get("index", "0") == "0"]
    new = element("controller", type="usb", index="0", model="qemu-xhci", ports="15")
    if old:
        insert_before(old[0], new)
        for c in old:
            remove_element(c)
    else:
        append_child(devices, new)


@planner
def use_qemu_xhci(facts, dom):
    if dom.root.find("devices") is None:
        return None
    return domain_plan(dom, "Use one qemu-xhci (USB 3) controller: "
                       "virt-xml --add-device --controller type=usb,model=qemu-xhci", Auto.UNSAFE, _xhci,
                       ["the guest needs an xHCI driver (Linux 3.x+, Windows 8+; Windows 7 needs a driver)"])


@hookimpl
def virtdoctor_checks():
    return [aarch64_host_model, vcpus_over_255_need_iommu_eim, clock_offset_mismatch, windows_tablet,
            usb_controller_model]
