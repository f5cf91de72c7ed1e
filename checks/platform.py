"""Platform: what `virt-host-validate qemu` checks besides KVM itself: the
vhost-net and tun devices, cgroup controllers, the IOMMU, secure guests."""
from __future__ import annotations

import posixpath

from virtdoctor.api import (PersistModule, Auto, FactUnavailable, Fail, MakeDir, Pass, RunCommand, Severity, Warn,
                            WriteFile, check, hookimpl, plan)
from virtdoctor.api import platformfacts as pf

MODULES_LOAD = "/etc/modules-load.d/virtdoctor.conf"


# -- /dev/vhost-net and /dev/net/tun ----------------------------------------------------
DEVICES = {
    # slug: (node, module, misc name, mode, group, why)
    "vhost-net-missing": ("/dev/vhost-net", "vhost_net", "vhost-net", 0o660, "kvm",
                          "virtio-net falls back to QEMU's userspace backend: slow guest networking"),
    "tun-missing": ("/dev/net/tun", "tun", "tun", 0o666, None,
                    "tap devices cannot be created: guests with <interface type='network'> or 'bridge' "
                    "fail to start with \"Unable to open /dev/net/tun, is tun module loaded?: No such file "
                    "or directory\""),
}


def _device_result(facts, slug: str):
    node, module, misc, _mode, _group, why = DEVICES[slug]
    st = facts.stat(node)
    mod = pf.kernel_module(facts, module, misc)
    fix = _device_fix(facts, slug, mod)
    evidence = {"node": node, "module": module, "module_loaded": mod.loaded, "builtin": mod.builtin,
                "loadable": mod.loadable, "misc_dev": mod.misc_dev, "kernel": mod.release}
    if st is not None and st.is_char_device:
        rdev = pf.devnum(st.rdev)
        evidence["rdev"] = rdev
        if mod.misc_dev and mod.misc_dev != rdev:
            return Fail(f"{node} is device {rdev} but the {misc} driver registered {mod.misc_dev}: "
                        f"opening it reaches another driver", evidence)  # a person must look
        return Pass(f"{node} exists (character device {rdev})", evidence)
    if st is not None:
        evidence["type"] = "directory" if st.is_dir else "not a character device"
        return Fail(f"{node} exists but is not a character device: {why}", evidence, plan=fix)
    if mod.misc_dev:
        cause = f"the {module} driver is loaded ({misc} is {mod.misc_dev}) but the device node is missing"
    elif not mod.modules_supported and not mod.builtin:
        cause = f"the running kernel has no {module} driver and cannot load modules"
    elif mod.loadable:
        cause = f"the {module} module is not loaded"
    elif mod.release:
        cause = f"the {module} module is neither loaded nor installed for kernel {mod.release}"
    else:
        cause = f"the {module} driver is not loaded"
    return Fail(f"{node} is missing ({cause}): {why}", evidence, plan=fix)


def _device_fix(facts, slug: str, mod):
    node, module, misc, mode, group, _why = DEVICES[slug]
    if mod.misc_dev:
        major, _, minor = mod.misc_dev.partition(":")
        actions = []
        parent = posixpath.dirname(node)
        if parent != "/dev" and not facts.is_dir(parent):
            actions.append(MakeDir(parent, 0o755))
        grp = group if group and facts.group(group) else None
        use_mode = mode if grp or mode == 0o666 else 0o600
        argv = ["mknod", "-m", f"{use_mode:04o}", node, "c", major, minor]
        actions.append(RunCommand(argv, f"create {node} (c {major}:{minor}, mode {use_mode:04o})",
                                  wait_for=node, undo=["rm", "-f", node]))
        if grp:
            actions.append(RunCommand(["chgrp", grp, node], f"give {node} to group {grp}"))
        return plan(f"Create the missing device node {node} for the loaded {module} driver", Auto.SAFE,
                    *actions, notes=["without udev/devtmpfs the node is gone after a reboot: "
                                     "let devtmpfs or udev create it at boot"])
    if mod.loadable:
        return plan(f"Load the {module} module and load it at every boot", Auto.SAFE,
                    RunCommand(["modprobe", module], f"modprobe {module}", wait_for=node,
                               undo=["modprobe", "-r", module]),
                    PersistModule(MODULES_LOAD, module))
    notes = [f"kernel {mod.release or '(unknown release)'} offers no {module} module"
             + ("" if mod.modules_supported else " and has no module support (/proc/modules is absent)")
             + f": boot a kernel built with {'CONFIG_VHOST_NET' if module == 'vhost_net' else 'CONFIG_TUN'}"]
    return plan(f"Load {module}; this kernel cannot: boot a kernel that has it", Auto.MANUAL,
                RunCommand(["modprobe", module]), PersistModule(MODULES_LOAD, module), notes=notes)


@check("vhost-net-missing", scope="host", area="platform", severity="warning",
       title="/dev/vhost-net exists (in-kernel virtio-net backend)", plans=True)
def vhost_net_missing(facts):
    """Looks at /dev/vhost-net (a character device), the vhost_net module and
    the misc device the driver registered (/sys/class/misc/vhost-net/dev).
    Why: without it virtio-net runs in QEMU's userspace: slow networking;
    virt-host-validate says "Load the 'vhost_net' module to improve performance
    of virtio networking".
    Fix safety: safe; modprobe vhost_net plus /etc/modules-load.d, or mknod
    when the driver is loaded but the node is missing; manual when the kernel
    has no such module."""
    return _device_result(facts, "vhost-net-missing")


@check("tun-missing", scope="host", area="platform", severity="error",
       title="/dev/net/tun exists (tap networking)", plans=True)
def tun_missing(facts):
    """Looks at /dev/net/tun (a character device), the tun module and the misc
    device the driver registered (/sys/class/misc/tun/dev).
    Why: libvirt creates a tap device per guest NIC through it; without it
    every <interface type='network'|'bridge'> guest fails to start with
    "Unable to open /dev/net/tun, is tun module loaded?: No such file or directory".
    Fix safety: safe; modprobe tun plus /etc/modules-load.d, or mknod when the
    driver is loaded but the node is missing; manual when the kernel has no tun."""
    return _device_result(facts, "tun-missing")


# -- cgroups -------------------------------------------------------------------------
@check("cgroup-controller-missing", scope="host", area="platform", severity="warning",
       title="cgroup controllers libvirt uses are available", plans=True)
def cgroup_controller_missing(facts):
    """Looks at the cgroup mounts (/proc/self/mounts), the v2 root's
    cgroup.controllers and /proc/cgroups for the controllers virt-host-validate
    checks: cpu, cpuacct, cpuset, memory, devices, blkio (io on v2), one
    result per controller.
    Why: without them resource tuning fails (<memtune>, <blkiotune>, vcpupin,
    <cputune>) and device ACLs for guests are not enforced; virt-host-validate
    says "Enable 'memory' in kernel Kconfig file or mount/enable cgroup
    controller in your system"."""
    cg = pf.cgroups(facts)
    results = []
    for name, ctl in cg.controllers.items():
        evidence = {"controller": name, "mode": cg.mode, "how": ctl.how,
                    "v1_mount": cg.v1_mounts.get(name), "v2_mount": cg.v2_mount,
                    "v2_controllers": list(cg.v2_controllers)}
        if ctl.available:
            results.append(Pass(f"cgroup '{name}' controller: {ctl.how}", evidence))
        else:
            results.append(Warn(f"cgroup '{name}' controller is missing ({ctl.how}): "
                                f"{_controller_use(name)} fail", evidence,
                                plan=enable_controller(name, ctl.how, cg.mode, cg.v2_mount)))
    return results


def _controller_use(name: str) -> str:
    return {"cpu": "<cputune> shares/quota", "cpuacct": "CPU statistics (virsh cpu-stats)",
            "cpuset": "vcpupin/emulatorpin and <numatune>", "memory": "<memtune> limits",
            "devices": "device access control for guests", "blkio": "<blkiotune> and disk I/O throttling"}[name]


def enable_controller(name: str, how: str, mode: str, v2_mount: str | None):
    how = how or ""
    commands = []
    notes = []
    if "switched off in the kernel" in how:
        notes.append(f"remove cgroup_disable={name} from the kernel command line and reboot")
    elif "no such controller" in how:
        notes.append(f"the kernel lacks the {name} controller: boot a kernel with it (CONFIG_CGROUP_*, "
                     f"CONFIG_MEMCG, CONFIG_BLK_CGROUP...)")
    elif mode in ("v2", "hybrid") and v2_mount and name not in ("cpuacct", "devices"):
        v2 = pf.V2_NAME.get(name, name)
        commands.append(RunCommand(["sh", "-c", f"echo +{v2} > {v2_mount}/cgroup.subtree_control"],
                                   f"enable {v2} for child cgroups"))
        notes.append("a controller bound to a v1 hierarchy cannot be enabled on v2 until that is unmounted")
    else:
        target = f"/sys/fs/cgroup/{name}"
        commands += [RunCommand(["mkdir", "-p", target]),
                     RunCommand(["mount", "-t", "cgroup", "-o", name, "cgroup", target])]
        notes.append("persist the mount in /etc/fstab or let the init system mount it")
    notes.append("restart the libvirt daemon afterwards so it sees the controller")
    return plan(f"Make the cgroup '{name}' controller available", Auto.MANUAL, *commands, notes=notes)


# -- IOMMU -------------------------------------------------------------------------------
def _domains_with(facts, xpath: str) -> list[str]:
    """Defined domains whose XML has `xpath`; [] when libvirt is unreachable."""
    try:
        doms = facts.domains  # parsed once per run by the facts layer
    except FactUnavailable:
        return []
    return [dom.name for dom in doms if dom.root.xpath(xpath)]


@check("iommu-disabled", scope="host", area="platform", severity="info",
       title="The IOMMU is on (PCI device assignment)", plans=True)
def iommu_disabled(facts):
    """Looks at /sys/kernel/iommu_groups, the ACPI DMAR (Intel VT-d) and IVRS
    (AMD-Vi) tables and intel_iommu=/amd_iommu=/iommu= on the kernel command line.
    Why: PCI passthrough (<hostdev type='pci'>) needs an IOMMU group per
    device; without one it fails. Severity info, warning when a defined domain
    has a PCI <hostdev>."""
    io = pf.iommu(facts)
    try:
        cpu = pf.cpuinfo(facts)
    except FactUnavailable:
        cpu = None
    evidence = {"iommu_groups": io.groups, "dmar": io.dmar, "ivrs": io.ivrs,
                "cmdline": {k: v for k, v in io.cmdline.items() if v is not None},
                "cpu_vendor": cpu.vendor if cpu else None}
    if io.groups:
        return Pass(f"the IOMMU is on: {io.groups} IOMMU group(s) in /sys/kernel/iommu_groups", evidence)
    users = _domains_with(facts, "devices/hostdev[@type='pci']")
    evidence["domains_with_pci_hostdev"] = users
    sev = Severity.WARNING if users else Severity.INFO
    off = [f"{k}={v}" for k, v in io.cmdline.items() if v in ("off", "0")]
    vendor = cpu.vendor if cpu else ""
    arg = "intel_iommu=on" if vendor == "GenuineIntel" or io.dmar else \
        "amd_iommu=on iommu=pt" if vendor in ("AuthenticAMD", "HygonGenuine") or io.ivrs else "intel_iommu=on or amd_iommu=on"
    if io.groups is None:
        cause = "the kernel has no IOMMU support (no /sys/kernel/iommu_groups): IOMMU capability not compiled into kernel"
    elif off:
        cause = f"the kernel command line switches it off ({' '.join(off)})"
    elif io.dmar or io.ivrs:
        table = "DMAR" if io.dmar else "IVRS"
        cause = f"the firmware has an IOMMU (ACPI {table} table) but the kernel did not enable it: add {arg} to the kernel command line"
    elif not io.acpi_tables:
        cause = "no IOMMU groups and no ACPI tables to look at"
    else:
        cause = ("no ACPI DMAR or IVRS table: the IOMMU is disabled in the BIOS/firmware or absent "
                 "(in a VM: the hypervisor offers no virtual IOMMU)")
    tail = f"; domains with PCI passthrough will fail to start: {', '.join(users)}" if users else \
        "; this only matters for PCI passthrough"
    return Fail(f"no IOMMU groups: {cause}{tail}", evidence, severity=sev, plan=ENABLE_IOMMU)


ENABLE_IOMMU = plan("Enable the IOMMU in the firmware (VT-d / AMD-Vi) and on the kernel command line, then reboot",
                Auto.MANUAL, notes=["Debian: add intel_iommu=on (Intel) or amd_iommu=on iommu=pt (AMD) to "
                                    "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot"])


# -- secure guests ------------------------------------------------------------------------
LAUNCH_TYPES = {"sev": "sev", "sev-snp": "sev-snp", "s390-pv": "s390-pv", "tdx": "tdx"}


@check("secure-guest-unsupported", scope="host", area="platform", severity="info",
       title="The host supports confidential (secure) guests", plans=True)
def secure_guest_unsupported(facts):
    """Looks at AMD SEV (/sys/module/kvm_amd/parameters/sev, sev_es, sev_snp,
    /dev/sev), Intel TDX (kvm_intel.tdx), IBM Secure Execution (facility 158,
    /sys/firmware/uv, prot_virt=1) and, when libvirt answers, domcapabilities'
    <sev>/<s390-pv> support.
    Why: a domain with <launchSecurity> fails to start without it. Severity
    info, error when a defined domain asks for launchSecurity the host lacks."""
    cpu = pf.cpuinfo(facts)
    offers = pf.secure_guests(facts, cpu)
    evidence = {"arch_family": cpu.arch_family, "cpu_sev_flag": "sev" in cpu.flags,
                "technologies": {o.kind: {"supported": o.supported, "why": o.why} for o in offers}}
    caps = _domcaps_secure(facts)
    if caps is not None:
        evidence["domcapabilities"] = caps
    wanted = _launch_security(facts)
    evidence["domains_with_launch_security"] = wanted
    supported = {o.kind for o in offers if o.supported}
    if caps:
        supported |= {k for k, v in caps.items() if v}
    if not offers and not caps:
        text = "Unknown if this platform has Secure Guest support: no SEV, TDX or IBM Secure Execution here"
    elif not supported:
        text = "; ".join(o.why for o in offers) or "domain capabilities offer no secure guest technology"
    else:
        text = ""
    missing = {name: t for name, t in wanted.items() if t not in supported and not (t == "sev" and "sev-es" in supported)}
    if missing:
        return Fail(f"{', '.join(f'{d} wants <launchSecurity type={t!r}>' for d, t in missing.items())}, "
                    f"which this host does not offer"
                    + (f": {text}" if text else f" (it offers {', '.join(sorted(supported))})"),
                    evidence, severity=Severity.ERROR, plan=ENABLE_SECURE_GUESTS)
    if supported:
        return Pass(f"secure guests possible: {', '.join(sorted(supported))}", evidence)
    return Fail(text + " (only matters for confidential guests)", evidence, severity=Severity.INFO,
                plan=ENABLE_SECURE_GUESTS)


def _domcaps_secure(facts) -> dict[str, bool] | None:
    try:
        caps = facts.libvirt.domcapabilities()
    except FactUnavailable:
        return None
    except Exception:
        return None
    out = {}
    for tag, kind in (("sev", "sev"), ("s390-pv", "s390-pv"), ("tdx", "tdx")):
        el = caps.find(f"features/{tag}")
        if el is not None:
            out[kind] = el.get("supported") == "yes"
    return out


def _launch_security(facts) -> dict[str, str]:
    try:
        doms = facts.domains  # parsed once per run by the facts layer
    except FactUnavailable:
        return {}
    out = {}
    for dom in doms:
        ls = dom.root.find("launchSecurity")
        if ls is not None:
            out[dom.name] = LAUNCH_TYPES.get(ls.get("type", ""), ls.get("type", "?"))
    return out


ENABLE_SECURE_GUESTS = plan("Enable the secure guest technology in the firmware and the kernel", Auto.MANUAL,
                notes=["AMD SEV: enable SEV in the BIOS, boot with mem_encrypt=on kvm_amd.sev=1",
                       "IBM Secure Execution: boot with prot_virt=1",
                       "Intel TDX: needs a TDX-enabled BIOS and kernel (kvm_intel.tdx=1) and a libvirt that "
                       "supports <launchSecurity type='tdx'> (libvirt 9.0 does not)"])


@hookimpl
def virtdoctor_checks():
    return [vhost_net_missing, tun_missing, cgroup_controller_missing, iommu_disabled, secure_guest_unsupported]
