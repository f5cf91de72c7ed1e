"""KVM acceleration: the /dev/kvm device, who may open it, and whether the hardware (or the
hypervisor below a nested host) offers virtualisation."""
from __future__ import annotations

from virtdoctor.api import (Auto, Fail, Pass, RemoveAcl, RunCommand, SetGroup, SetMode, Skip, WriteFile, check,
                            hookimpl, parse_uri, plan, platformfacts)

KVM_DEVICE = "/dev/kvm"
UDEV_RULE = "/etc/udev/rules.d/65-kvm.rules"
UDEV_RULE_TEXT = ('# written by virtdoctor (kvm-device-permission): group kvm, hence QEMU, opens /dev/kvm\n'
                  'KERNEL=="kvm", GROUP="kvm", MODE="0660", OPTIONS+="static_node=kvm"\n')
UDEV_DIRS = ("/etc/udev/rules.d", "/run/udev/rules.d", "/usr/lib/udev/rules.d", "/lib/udev/rules.d")


def qemu_identity(facts):
    """(label, uid, gids, account) QEMU processes will have for this URI:
    qemu.conf user/group on qemu:///system, the calling user on session."""
    uri = parse_uri(facts.resolved_uri) if not facts.offline else None
    if uri is not None and uri.path == "/session":
        acct = facts.account(facts.euid)
        gids = acct.groups if acct else frozenset()
        return (acct.name if acct else str(facts.euid)), facts.euid, gids, None
    qemu = facts.qemu_account()
    return qemu.label, qemu.uid, qemu.gids, qemu


def udev_rule_grants(facts) -> str | None:
    """The udev rule file that gives /dev/kvm a group and mode QEMU can use, if any."""
    for d in UDEV_DIRS:
        for name in facts.listdir(d):
            if not name.endswith(".rules"):
                continue
            text = facts.read_text(f"{d}/{name}") or ""
            for line in text.splitlines():
                if 'KERNEL=="kvm"' in line and 'GROUP="kvm"' in line and ('MODE="0660"' in line or 'MODE="0666"' in line):
                    return f"{d}/{name}"
    return None


@check("kvm-device-permission", scope="host", area="kvm", severity="error",
       title="QEMU's account can open /dev/kvm read-write", needs=("libvirt-installed",), plans=True)
def kvm_device_permission(facts):
    """Looks at mode, owner, group and POSIX ACL of /dev/kvm against the user
    and groups QEMU runs as (qemu.conf user/group, else the built-in default,
    with the user's supplementary groups).
    Why: else every KVM guest fails with "Could not access KVM kernel module:
    Permission denied" / "failed to initialize kvm: Permission denied".
    Fix safety: safe; group kvm, mode 0660, stray ACL removed, a udev rule so it
    survives reboot; no guest-visible change."""
    node = facts.stat(KVM_DEVICE)
    if node is None:
        return Skip("/dev/kvm is absent; kvm-device-missing reports that")
    label, uid, gids, qemu = qemu_identity(facts)
    if qemu is not None and qemu.account is None:
        return Skip(f"QEMU's user {qemu.user} does not exist; qemu-user-missing reports that")
    evidence = {"mode": node.mode_text, "owner": node.owner, "group": node.group, "acl": node.acl_text,
                "qemu": label, "qemu_groups": sorted(facts.accounts.group_name(g) for g in gids),
                "udev_rule": udev_rule_grants(facts)}
    if node.allowed(uid, gids, "rw"):
        return Pass(f"{label} can open /dev/kvm read-write ({node.owner}:{node.group} {node.mode_text})", evidence)
    why = f"{node.owner}:{node.group} {node.mode_text}"
    if node.acl_text:
        why += f", ACL {node.acl_text}"
    return Fail(f"{label} cannot open /dev/kvm read-write ({why}): KVM guests fail with "
                f"\"Could not access KVM kernel module: Permission denied\"", evidence,
                plan=give_kvm_group_rw(facts, node, label, gids, qemu, evidence["udev_rule"]))


def give_kvm_group_rw(facts, node, label, gids, qemu, rule):
    kvm = facts.group("kvm")
    actions = []
    notes = []
    if kvm is None:
        return plan("Create the kvm group, put QEMU's user in it, then give it /dev/kvm", Auto.MANUAL,
                    RunCommand(["groupadd", "--system", "kvm"]),
                    RunCommand(["usermod", "-a", "-G", "kvm", qemu.user if qemu else label]))
    if kvm.gid not in gids:
        user = qemu.user if qemu else label
        actions.append(RunCommand(["usermod", "-a", "-G", "kvm", user], f"add {user} to group kvm",
                                  touches=("/etc/group", "/etc/gshadow")))
        notes.append(f"{user} is not in group kvm; running domains keep their old groups until restarted")
    if node.acl_text:
        actions.append(RemoveAcl(KVM_DEVICE))
    actions += [SetGroup(KVM_DEVICE, "kvm"), SetMode(KVM_DEVICE, 0o660)]
    if rule is None:
        actions.append(WriteFile(UDEV_RULE, UDEV_RULE_TEXT, 0o644))
        summary = "Give group kvm read-write on /dev/kvm (0660) and persist it with a udev rule"
    else:
        notes.append(f"{rule} already sets group kvm and mode 0660 at boot (when udev runs); "
                     "something changed the node since")
        summary = "Give group kvm read-write on /dev/kvm (0660)"
    return plan(summary, Auto.SAFE, *actions, notes=notes)


KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm", "kvm_hv", "kvm_pr")


def cpu_virt_flags(facts) -> dict:
    """What /proc/cpuinfo says: vmx/svm present, and the `hypervisor` flag (we are a guest).
    Under --root without a proc tree: unknown (None)."""
    try:
        flags = platformfacts.cpuinfo(facts).flags  # the facts layer's one /proc/cpuinfo parser
    except Exception:
        return {"vmx": None, "svm": None, "hypervisor": None, "known": False}
    return {"vmx": "vmx" in flags, "svm": "svm" in flags, "hypervisor": "hypervisor" in flags,
            "known": bool(flags)}


def kvm_modules(facts) -> dict:
    """Loaded KVM modules: /proc/modules lines, else /sys/module/<name> (built-in modules
    and kernels without /proc/modules show only there)."""
    loaded = set()
    try:
        text = facts.read_text("/proc/modules") or ""
    except Exception:
        text = ""
    for line in text.splitlines():
        name = line.split(" ", 1)[0]
        if name == "kvm" or name in KVM_MODULES:
            loaded.add(name)
    for name in ("kvm", *KVM_MODULES):
        if facts.is_dir(f"/sys/module/{name}"):
            loaded.add(name)
    return {"kvm": "kvm" in loaded, "vendor": sorted(loaded & set(KVM_MODULES))}


def nested_state(facts) -> dict:
    """/sys/module/kvm_intel/parameters/nested or kvm_amd's: whether this host lets its own
    guests use KVM in turn."""
    out = {}
    for mod in ("kvm_intel", "kvm_amd"):
        try:
            val = facts.read_text(f"/sys/module/{mod}/parameters/nested")
        except Exception:
            val = None
        if val is not None:
            out[mod] = val.strip() in ("Y", "1")
    return out


@check("kvm-device-missing", scope="host", area="kvm", severity="error",
       title="/dev/kvm exists", plans=True)
def kvm_device_missing(facts):
    """Looks at the /dev/kvm device node, the loaded KVM modules (/proc/modules,
    /sys/module/kvm*) and the CPU's virtualisation flags.
    Why: without /dev/kvm every <domain type='kvm'> fails ("invalid argument: could not find
    capabilities for domaintype=kvm") and only slow TCG emulation is left.
    Fix: manual; load kvm_intel/kvm_amd (modprobe), or enable VT-x/AMD-V in the firmware, or
    nested virtualisation on the hypervisor below."""
    node = facts.stat(KVM_DEVICE)
    mods = kvm_modules(facts)
    flags = cpu_virt_flags(facts)
    evidence = {"device": KVM_DEVICE, "modules": mods, "cpu": flags}
    vendor = "kvm_intel" if flags["vmx"] else "kvm_amd" if flags["svm"] else None
    fix = load_kvm_module(mods, vendor)
    if node is not None:
        if not node.is_char_device:
            return Fail(f"{KVM_DEVICE} exists but is not a character device ({node.mode_text})", evidence,
                        plan=fix)
        return Pass(f"{KVM_DEVICE} exists (char device {node.rdev >> 8}:{node.rdev & 0xff})", evidence)
    if facts.exists(KVM_DEVICE):
        return Fail(f"{KVM_DEVICE} is a dangling symlink", evidence, plan=fix)
    if mods["kvm"] and mods["vendor"]:
        why = (f"the modules {', '.join(['kvm', *mods['vendor']])} are loaded but the device node is missing "
               "(no udev/devtmpfs?): mknod /dev/kvm c 10 232")
    elif vendor:
        why = f"the CPU has {'VT-x' if flags['vmx'] else 'AMD-V'} but {vendor} is not loaded: modprobe {vendor}"
    elif flags["known"] and flags["hypervisor"]:
        why = ("this is a virtual machine whose hypervisor hides VT-x/AMD-V: enable nested virtualisation "
               "on the host below (kvm_intel nested=1 / kvm_amd nested=1)")
    elif flags["known"]:
        why = "the CPU shows no VT-x/AMD-V: enable virtualisation in the firmware (BIOS/UEFI) setup"
    else:
        why = "neither KVM modules nor CPU flags are visible"
    evidence["suggested_module"] = vendor
    return Fail(f"{KVM_DEVICE} does not exist: {why}; guests can only use slow TCG emulation", evidence,
                plan=fix)


def load_kvm_module(mods: dict, mod: str | None):
    if mods.get("kvm") and mods.get("vendor"):
        return plan("Create the /dev/kvm node", Auto.MANUAL,
                    RunCommand(["mknod", "-m", "0660", KVM_DEVICE, "c", "10", "232"]),
                    RunCommand(["chgrp", "kvm", KVM_DEVICE]))
    if mod:
        return plan(f"Load {mod} and load it at boot", Auto.MANUAL, RunCommand(["modprobe", mod]),
                    notes=[f"persist: echo {mod} > /etc/modules-load.d/kvm.conf"])
    return plan("Enable hardware virtualisation (VT-x/AMD-V) in the firmware or nested virtualisation "
                "on the hypervisor below", Auto.MANUAL)


def _caps_offer_kvm(facts) -> tuple[bool | None, str]:
    """Whether libvirt's capabilities offer <domain type='kvm'> for the host arch."""
    try:
        caps = facts.libvirt.capabilities()
        arch = facts.libvirt.host_arch()
    except Exception as exc:
        return None, f"libvirt capabilities not available: {str(exc).splitlines()[0] if str(exc) else exc}"
    doms = caps.xpath("guest[arch/@name=$a]/arch/domain/@type", a=arch) or caps.xpath("guest/arch/domain/@type")
    return "kvm" in doms, f"capabilities offer {', '.join(sorted(set(doms))) or 'no domain type'} for {arch}"


@check("kvm-hw-virt-missing", scope="host", area="kvm", severity="error",
       title="Hardware virtualisation works (probed, not guessed from CPU flags)")
def kvm_hw_virt_missing(facts):
    """Decides by probing: opens /dev/kvm, asks KVM_GET_API_VERSION and KVM_CREATE_VM, and
    reads whether libvirt's capabilities offer <domain type='kvm'>; CPU flags and the nested
    parameter (kvm_intel/kvm_amd) are evidence only. A nested host often hides vmx/svm
    while KVM works: that passes (virt-host-validate and kvm-ok report a failure there).
    Why: without it only TCG is left; KVM domains fail with "invalid argument: could not
    find capabilities for domaintype=kvm".
    Fix: manual; enable VT-x/AMD-V in the firmware, or nested virtualisation below."""
    flags = cpu_virt_flags(facts)
    evidence = {"cpu": flags, "modules": kvm_modules(facts), "nested": nested_state(facts)}
    hidden = flags["known"] and not (flags["vmx"] or flags["svm"])
    node = facts.stat(KVM_DEVICE)
    try:
        probe = facts.kvm_probe()
    except Exception as exc:
        probe = None
        evidence["probe"] = f"not probed: {exc}"
    if probe is not None:
        evidence["probe"] = {"opened": probe.opened, "api_version": probe.api_version,
                             "vm_created": probe.vm_created, "error": probe.error}
    offered, caps_text = _caps_offer_kvm(facts)
    evidence["capabilities"] = caps_text
    if probe is not None and probe.usable:
        note = ""
        if hidden:
            note = ("; the CPU flags hide vmx/svm" + (" (a virtual machine: 'hypervisor' flag)" if flags["hypervisor"] else "")
                    + ", which virt-host-validate and kvm-ok wrongly report as missing")
        if offered is False:
            return Fail(f"/dev/kvm works (API {probe.api_version}, VM created) but libvirt's {caps_text}: "
                        "KVM domains fail with \"invalid argument: could not find capabilities for "
                        "domaintype=kvm\"; restart the daemon so it probes again", evidence)
        return Pass(f"KVM works: /dev/kvm answered API version {probe.api_version} and created a VM"
                    + (f"; libvirt {caps_text}" if offered else "") + note, evidence)
    if probe is not None and probe.opened:
        return Fail(f"/dev/kvm opens but KVM is not usable: {probe.error}: hardware virtualisation is "
                    "disabled or unavailable (enable VT-x/AMD-V, or nested virtualisation below)", evidence)
    if node is None:
        if flags["known"] and not (flags["vmx"] or flags["svm"]) and not evidence["modules"]["vendor"]:
            return Fail("no /dev/kvm, no KVM vendor module and no vmx/svm CPU flag: "
                        + ("this virtual machine's hypervisor offers no nested virtualisation"
                           if flags["hypervisor"] else "hardware virtualisation is off or absent")
                        + "; guests fall back to TCG", evidence)
        return Skip("/dev/kvm is absent; kvm-device-missing says why", evidence)
    if probe is not None:  # could not open it: permission (kvm-device-permission) or EBUSY...
        return Skip(f"cannot probe /dev/kvm: {probe.error}", evidence)
    if offered:
        return Pass(f"libvirt {caps_text} (/dev/kvm not probed: {evidence['probe']})", evidence)
    if flags["vmx"] or flags["svm"]:
        return Pass(f"the CPU offers {'VT-x' if flags['vmx'] else 'AMD-V'} (/dev/kvm not probed)", evidence)
    return Skip("cannot probe /dev/kvm here and the CPU flags prove nothing (nested hosts hide them)", evidence)


@hookimpl
def virtdoctor_checks():
    return [kvm_device_missing, kvm_device_permission, kvm_hw_virt_missing]
