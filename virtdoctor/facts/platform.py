"""Platform facts for the virt-host-validate parity checks: cgroup controllers
(v1, v2, hybrid), IOMMU, secure-guest support, kernel modules and misc device
nodes. Every function takes `facts` first and reads only through HostFacts
(files below --root), so a fake tree in a test is a host like any other.

The parsers are pure functions, text in and data out:

>>> parse_mounts("cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\\n")[0].options
('rw', 'relatime', 'memory')
>>> sorted(parse_proc_cgroups("#subsys_name\\thierarchy\\tnum_cgroups\\tenabled\\nmemory\\t4\\t50\\t0\\n").items())
[('memory', False)]
>>> cmdline_param("quiet intel_iommu=on iommu=pt", "intel_iommu")
'on'
"""
from __future__ import annotations

from dataclasses import dataclass, field

from virtdoctor.model import FactUnavailable

# proc/sysfs files: a 16 MiB read() of /proc/sys/* fails with ENOMEM
SMALL = 65536

# virt-host-validate's list (tools/virt-host-validate-qemu.c), in its order
VALIDATE_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "blkio")
# the cgroup v2 name of a v1 controller, where they differ
V2_NAME = {"blkio": "io"}


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field_: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    return (field_.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


def parse_mounts(text: str) -> list[Mount]:
    """/proc/self/mounts lines: source target fstype options dump pass."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        out.append(Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2], tuple(parts[3].split(","))))
    return out


def parse_proc_cgroups(text: str) -> dict[str, bool]:
    """/proc/cgroups: controller -> enabled (the kernel knows every listed one;
    `enabled` 0 means switched off, e.g. cgroup_disable=memory)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 4:
            out[parts[0]] = parts[3] == "1"
    return out


def cmdline_param(cmdline: str, name: str) -> str | None:
    """The value of the first `name=value` (or "" for a bare `name`) on a
    kernel command line; None when absent. Stops at `--` (init's arguments)."""
    for word in cmdline.split():
        if word == "--":
            break
        key, sep, value = word.partition("=")
        if key == name:
            return value if sep else ""
    return None


@dataclass(frozen=True)
class Controller:
    name: str
    available: bool
    how: str  # where it comes from, or why it is missing


@dataclass(frozen=True)
class Cgroups:
    mode: str  # "v1", "v2", "hybrid", "none"
    controllers: dict[str, Controller]
    v1_mounts: dict[str, str]  # controller -> mount point
    v2_mount: str | None
    v2_controllers: tuple[str, ...]
    kernel: dict[str, bool] = field(default_factory=dict)  # /proc/cgroups


def cgroups(facts) -> Cgroups:
    """Which of virt-host-validate's controllers libvirt can use, decided as
    libvirt's vircgroup.c does: v1 controllers are the options of `cgroup`
    mounts; v2 controllers are listed in the root's cgroup.controllers, with
    cpuacct provided by cpu and devices by eBPF; in hybrid mode v1 wins.
    Raises FactUnavailable when no mount table can be read."""
    mounts_text = None
    for path in ("/proc/self/mounts", "/proc/mounts"):
        mounts_text = facts.read_text(path)
        if mounts_text is not None:
            break
    if mounts_text is None:
        raise FactUnavailable("no /proc/self/mounts (or /proc/mounts) here: cannot tell which cgroup "
                              "controllers are mounted")
    mounts = parse_mounts(mounts_text)
    v1: dict[str, str] = {}
    v2_mount = None
    for m in mounts:
        if m.fstype == "cgroup":
            for opt in m.options:
                if opt in VALIDATE_CONTROLLERS or opt in ("net_cls", "net_prio", "freezer", "pids",
                                                          "perf_event", "hugetlb", "rdma", "misc"):
                    v1.setdefault(opt, m.target)
        elif m.fstype == "cgroup2" and v2_mount is None:
            v2_mount = m.target
    v2_list: tuple[str, ...] = ()
    if v2_mount is not None:
        text = facts.read_text(f"{v2_mount.rstrip('/')}/cgroup.controllers", limit=SMALL)
        v2_list = tuple((text or "").split())
    kernel_text = facts.read_text("/proc/cgroups")
    kernel = parse_proc_cgroups(kernel_text) if kernel_text is not None else {}
    mode = ("hybrid" if v1 and v2_mount else "v1" if v1 else "v2" if v2_mount else "none")
    controllers = {}
    for name in VALIDATE_CONTROLLERS:
        v2name = V2_NAME.get(name, name)
        if name in v1:
            controllers[name] = Controller(name, True, f"cgroup v1 at {v1[name]}")
        elif v2_mount and name == "cpuacct" and "cpu" in v2_list:
            controllers[name] = Controller(name, True, f"cgroup v2 at {v2_mount} (cpu.stat of cpu)")
        elif v2_mount and name == "devices":
            # v2 has no devices controller file; libvirt attaches an eBPF program
            controllers[name] = Controller(name, True, f"cgroup v2 at {v2_mount} (eBPF device filter)")
        elif v2_mount and v2name in v2_list:
            controllers[name] = Controller(name, True, f"cgroup v2 at {v2_mount} ({v2name})")
        else:
            controllers[name] = Controller(name, False, _why_missing(name, v2name, kernel, kernel_text,
                                                                       mode, v2_mount))
    return Cgroups(mode, controllers, v1, v2_mount, v2_list, kernel)


def _why_missing(name, v2name, kernel, kernel_text, mode, v2_mount) -> str:
    if mode == "none":
        return "no cgroup file system is mounted"
    if kernel_text is not None and name not in kernel and v2name not in kernel:
        return "the kernel has no such controller (not in /proc/cgroups)"
    if kernel.get(name) is False or kernel.get(v2name) is False:
        return "switched off in the kernel (enabled 0 in /proc/cgroups: cgroup_disable= on the command line?)"
    if mode == "v2":
        return f"not in {v2_mount}/cgroup.controllers"
    if mode == "hybrid":
        return f"neither mounted as cgroup v1 nor listed in {v2_mount}/cgroup.controllers"
    return "not mounted (no cgroup v1 mount carries it)"


# -- CPU, arch -------------------------------------------------------------------
@dataclass(frozen=True)
class CpuInfo:
    arch_family: str  # "x86", "s390", "ppc64", "arm", "unknown"
    vendor: str  # "AuthenticAMD", "GenuineIntel", "IBM/S390", ""
    flags: frozenset[str]
    facilities: frozenset[str]  # s390 facilities


def cpuinfo(facts) -> CpuInfo:
    """Arch family, vendor and flags from /proc/cpuinfo (the first CPU), parsed once per
    run (facts.memo): the one /proc/cpuinfo parser. Raises FactUnavailable when it is
    absent (a container root, a bare /etc)."""
    return facts.memo("cpuinfo", lambda: _cpuinfo(facts))


def _cpuinfo(facts) -> CpuInfo:
    text = facts.read_text("/proc/cpuinfo", limit=4 << 20)
    if text is None:
        raise FactUnavailable("no /proc/cpuinfo here: cannot tell the CPU")
    vendor, flags, facilities, family = "", set(), set(), "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "vendor_id" and not vendor:
            vendor = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "facilities" and not facilities:
            facilities = set(value.split())
        elif key == "CPU implementer":
            family = "arm"
        elif key == "cpu" and value.upper().startswith("POWER"):
            family = "ppc64"
    if vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls"):
        family = "x86"
    elif vendor.startswith("IBM/S390"):
        family = "s390"
    return CpuInfo(family, vendor, frozenset(flags), frozenset(facilities))


def kernel_cmdline(facts) -> str | None:
    return facts.read_text("/proc/cmdline", limit=SMALL)


# -- IOMMU ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Iommu:
    groups: int | None  # None: /sys/kernel/iommu_groups absent
    dmar: bool  # Intel VT-d ACPI table
    ivrs: bool  # AMD-Vi ACPI table
    acpi_tables: bool  # /sys/firmware/acpi/tables readable at all
    cmdline: dict[str, str | None]


IOMMU_PARAMS = ("intel_iommu", "amd_iommu", "iommu")


def iommu(facts) -> Iommu:
    """IOMMU groups, the DMAR/IVRS ACPI tables and the kernel arguments about it.
    Raises FactUnavailable when /sys/kernel is not there at all (a container
    without sysfs, a root tree without /sys)."""
    if not facts.is_dir("/sys/kernel"):
        raise FactUnavailable("no /sys/kernel here (no sysfs): cannot tell whether the IOMMU is on")
    groups = len(facts.listdir("/sys/kernel/iommu_groups")) if facts.is_dir("/sys/kernel/iommu_groups") else None
    tables = "/sys/firmware/acpi/tables"
    cmd = kernel_cmdline(facts) or ""
    return Iommu(groups=groups, dmar=facts.exists(f"{tables}/DMAR"), ivrs=facts.exists(f"{tables}/IVRS"),
                 acpi_tables=facts.is_dir(tables),
                 cmdline={p: cmdline_param(cmd, p) for p in IOMMU_PARAMS})


# -- secure guests -----------------------------------------------------------------------
TRUE_VALUES = ("1", "y", "Y", "on", "ON", "On", "oN")


@dataclass(frozen=True)
class SecureGuest:
    kind: str  # "sev", "sev-es", "sev-snp", "tdx", "s390-pv"
    supported: bool
    why: str


def module_param(facts, module: str, param: str) -> str | None:
    """/sys/module/MODULE/parameters/PARAM stripped; None when absent."""
    text = facts.read_text(f"/sys/module/{module}/parameters/{param}", limit=SMALL)
    return None if text is None else text.strip()


def secure_guests(facts, cpu: CpuInfo) -> list[SecureGuest]:
    """What this host offers for confidential guests, from the kernel's view
    (module parameters, /dev/sev, /sys/firmware/uv, the command line), with the
    reason when it does not; virt-host-validate's logic, per technology."""
    out: list[SecureGuest] = []
    if cpu.arch_family == "s390":
        if "158" not in cpu.facilities:
            out.append(SecureGuest("s390-pv", False, "Hardware or firmware does not provide support for "
                                                     "IBM Secure Execution"))
        elif not facts.is_dir("/sys/firmware/uv"):
            out.append(SecureGuest("s390-pv", False, "IBM Secure Execution not supported by the currently "
                                                     "used kernel"))
        else:
            value = cmdline_param(kernel_cmdline(facts) or "", "prot_virt")
            ok = value is not None and any(value.startswith(v) for v in TRUE_VALUES)
            out.append(SecureGuest("s390-pv", ok, "prot_virt is set on the kernel command line" if ok else
                                   "IBM Secure Execution appears to be disabled in kernel. Add prot_virt=1 "
                                   "to kernel cmdline arguments"))
        return out
    sev = module_param(facts, "kvm_amd", "sev")
    if "sev" in cpu.flags or sev is not None:
        if sev is None:
            out.append(SecureGuest("sev", False, "AMD Secure Encrypted Virtualization not supported by the "
                                                 "currently used kernel (no /sys/module/kvm_amd/parameters/sev)"))
        elif sev[:1] not in ("1", "Y", "y"):
            out.append(SecureGuest("sev", False, "AMD Secure Encrypted Virtualization appears to be disabled "
                                                 "in kernel. Add kvm_amd.sev=1 to the kernel cmdline arguments"))
        elif not facts.exists("/dev/sev"):
            out.append(SecureGuest("sev", False, "AMD Secure Encrypted Virtualization appears to be disabled "
                                                 "in firmware (no /dev/sev)"))
        else:
            out.append(SecureGuest("sev", True, "kvm_amd.sev is on and /dev/sev exists"))
            for kind, param in (("sev-es", "sev_es"), ("sev-snp", "sev_snp")):
                value = module_param(facts, "kvm_amd", param)
                if value is not None:
                    on = value[:1] in ("1", "Y", "y")
                    out.append(SecureGuest(kind, on, f"kvm_amd.{param}={value}"))
    tdx = module_param(facts, "kvm_intel", "tdx")
    if "tdx_host_platform" in cpu.flags or tdx is not None:
        on = tdx is not None and tdx[:1] in ("1", "Y", "y")
        out.append(SecureGuest("tdx", on, "kvm_intel.tdx is on" if on else
                               "Intel TDX is not enabled in KVM (kvm_intel.tdx is "
                               f"{tdx if tdx is not None else 'absent'}); add kvm_intel.tdx=1"))
    return out


# -- kernel modules and misc device nodes --------------------------------------------------
@dataclass(frozen=True)
class ModuleState:
    name: str
    loaded: bool  # /sys/module/NAME exists
    builtin: bool  # listed in modules.builtin of the running kernel
    loadable: bool  # listed in modules.dep of the running kernel
    modules_supported: bool  # /proc/modules exists (CONFIG_MODULES)
    release: str | None
    misc_dev: str | None  # "10:238" from /sys/class/misc/<node>/dev when the driver is there


def kernel_module(facts, name: str, misc_node: str | None = None) -> ModuleState:
    """What the running kernel offers for module `name` (e.g. vhost_net) and
    the misc device it registers (e.g. vhost-net)."""
    release = (facts.read_text("/proc/sys/kernel/osrelease", limit=SMALL) or "").strip() or None
    builtin = loadable = False
    if release:
        base = f"/lib/modules/{release}"
        pattern = f"/{name}.ko"
        alt = f"/{name.replace('_', '-')}.ko"
        try:
            for line in (facts.read_text(f"{base}/modules.builtin") or "").splitlines():
                if pattern in line or alt in line:
                    builtin = True
                    break
            for line in (facts.read_text(f"{base}/modules.dep") or "").splitlines():
                head = line.split(":", 1)[0]
                if pattern in head or alt in head:
                    loadable = True
                    break
        except FactUnavailable:
            pass
    misc = None
    if misc_node:
        dev = facts.read_text(f"/sys/class/misc/{misc_node}/dev", limit=SMALL)
        misc = dev.strip() if dev and dev.strip() else None
    return ModuleState(name, facts.is_dir(f"/sys/module/{name}"), builtin, loadable,
                       facts.exists("/proc/modules"), release, misc)


def devnum(rdev: int) -> str:
    """"major:minor" of a device number, as /sys/class/misc/*/dev writes it.

    >>> devnum(2760)
    '10:200'
    """
    major = ((rdev >> 8) & 0xFFF) | ((rdev >> 32) & ~0xFFF)
    minor = (rdev & 0xFF) | ((rdev >> 12) & ~0xFF)
    return f"{major}:{minor}"
