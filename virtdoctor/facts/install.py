"""What is installed: the distribution (/etc/os-release), the libvirt daemons,
the client, /etc/libvirt and the QEMU emulators, plus the packages and commands
that install them on this distribution.

Package names come from the distributions' own packaging:

- Debian and Ubuntu (debian/control of libvirt and qemu): `libvirt-daemon-system`
  (the daemon, its config, the libvirt-qemu account, the init scripts/units),
  `libvirt-clients` (virsh), and the QEMU system package of the host arch
  (`qemu-system-x86` provides qemu-system-x86_64 and `qemu-kvm`; aarch64 is in
  `qemu-system-arm`), `ovmf` for UEFI guests;
- Fedora, RHEL, CentOS Stream (libvirt.spec, libvirt's docs/kbase/rpm-deployment.rst):
  `libvirt-daemon-kvm` (the daemons and drivers for KVM guests; it pulls `qemu-kvm`),
  `libvirt-client`; the daemons are modular and socket-activated there;
- Arch (its libvirt and qemu PKGBUILDs): `libvirt`, `qemu-base` (headless QEMU),
  `dnsmasq` for NAT networks (an optional dependency of libvirt);
- openSUSE (its libvirt.spec): `libvirt-daemon-qemu`, `libvirt-client`, `qemu-kvm`
  (x86) or the QEMU package of the arch.

>>> parse_os_release('ID=ubuntu\\nID_LIKE=debian\\nVERSION_ID="22.04"\\n').family
'debian'
>>> parse_os_release('ID="rocky"\\nID_LIKE="rhel centos fedora"\\n').family
'fedora'
>>> parse_os_release('ID="opensuse-tumbleweed"\\nID_LIKE="opensuse suse"\\n').family
'suse'
"""
from __future__ import annotations

import os
import shlex
import struct
from dataclasses import dataclass, field

NOT_INSTALLED = "libvirt is not installed on this host (libvirt-not-installed says what to install)"
DAEMONS = ("libvirtd", "virtqemud")
CLIENT = "virsh"
# where distributions put the binaries: Debian /usr/sbin, Fedora /usr/sbin, Arch /usr/bin
# (sbin is a link to bin there), a source build /usr/local/sbin; facts.which searches them all
EMULATOR_GLOBS = ("/usr/bin/qemu-system-*", "/usr/local/bin/qemu-system-*")
EMULATOR_PATHS = ("/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm")  # RHEL's only emulator; Debian's wrapper
ETC_LIBVIRT = "/etc/libvirt"

# ELF e_machine -> uname machine (for a --root whose arch is not this machine's)
_ELF_MACHINE = {3: "i686", 62: "x86_64", 183: "aarch64", 40: "armv7l", 21: "ppc64le", 22: "s390x", 243: "riscv64"}

# the family of an os-release ID (or of one of its ID_LIKE words), first match wins
_FAMILIES = (
    ("debian", ("debian", "ubuntu", "raspbian", "linuxmint", "pop")),
    ("fedora", ("fedora", "rhel", "centos", "rocky", "almalinux", "ol", "amzn")),
    ("arch", ("arch", "archarm", "manjaro", "endeavouros")),
    ("suse", ("opensuse", "suse", "sles", "sled", "opensuse-leap", "opensuse-tumbleweed")),
)


@dataclass(frozen=True)
class OsRelease:
    id: str = ""
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    pretty_name: str = ""

    @property
    def family(self) -> str | None:
        """debian, fedora, arch or suse (the packaging this distribution follows), None when unknown."""
        for word in (self.id, *self.id_like):
            for family, ids in _FAMILIES:
                if word in ids:
                    return family
        return None

    @property
    def name(self) -> str:
        return self.pretty_name or " ".join(p for p in (self.id, self.version_id) if p) or "an unknown distribution"


def parse_os_release(text: str) -> OsRelease:
    """os-release(5): KEY=value lines, values shell-quoted."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            parts = [raw.strip("\"'")]
        values[key.strip()] = parts[0] if parts else ""
    return OsRelease(id=values.get("ID", "").lower(), id_like=tuple(values.get("ID_LIKE", "").lower().split()),
                     version_id=values.get("VERSION_ID", ""), pretty_name=values.get("PRETTY_NAME", ""))


@dataclass(frozen=True)
class InstallPlan:
    """The commands that install libvirt and QEMU here, and start the daemon."""

    family: str
    packages: tuple[str, ...]
    install: tuple[str, ...]  # argv
    start: tuple[tuple[str, ...], ...]  # argvs, after the install
    notes: tuple[str, ...] = ()

    @property
    def install_text(self) -> str:
        return shlex.join(self.install)


@dataclass(frozen=True)
class Installation:
    os: OsRelease
    arch: str
    daemons: tuple[str, ...]  # host paths of the libvirt daemons found
    client: str | None  # host path of virsh
    etc_libvirt: bool
    emulators: tuple[str, ...]  # host paths of QEMU system emulators
    systemd: bool
    evidence: dict = field(default_factory=dict, compare=False)

    # the binaries of this tree can be seen: the running machine, or a --root that is a whole
    # system (os-release and /usr/bin or /usr/sbin), not a copied /etc or a partial test tree
    judged: bool = True

    @property
    def libvirt_installed(self) -> bool:
        """A daemon binary is what makes libvirt usable; /etc/libvirt alone is what
        `apt remove` (without purge) leaves behind. A tree whose binaries cannot be seen
        is not judged missing (`unknown`)."""
        return bool(self.daemons) or self.unknown

    @property
    def unknown(self) -> bool:
        return not self.daemons and not self.judged

    @property
    def qemu_installed(self) -> bool:
        return bool(self.emulators)

    def plan(self) -> InstallPlan | None:
        return install_plan(self.os.family, self.arch, self.systemd)


def qemu_package(family: str, arch: str) -> str:
    if family == "debian":
        return {"x86_64": "qemu-system-x86", "i686": "qemu-system-x86", "aarch64": "qemu-system-arm",
                "armv7l": "qemu-system-arm", "ppc64le": "qemu-system-ppc", "s390x": "qemu-system-s390x",
                "riscv64": "qemu-system-misc"}.get(arch, "qemu-system")
    if family == "suse":
        return {"x86_64": "qemu-kvm", "aarch64": "qemu-arm", "ppc64le": "qemu-ppc",
                "s390x": "qemu-s390x"}.get(arch, "qemu")
    if family == "fedora":
        return "qemu-kvm"
    return "qemu-base"


# no init system that starts services (a container): QEMU's log daemon, then libvirtd
_BY_HAND = (("virtlogd", "-d"), ("libvirtd", "-d"))


def install_plan(family: str | None, arch: str, systemd: bool) -> InstallPlan | None:
    if family is None:
        return None
    qemu = qemu_package(family, arch)
    if family == "debian":
        pkgs = ("libvirt-daemon-system", "libvirt-clients", qemu)
        if arch in ("x86_64", "i686"):
            pkgs += ("ovmf",)
        elif arch == "aarch64":
            pkgs += ("qemu-efi-aarch64",)
        start = (("systemctl", "enable", "--now", "libvirtd.service"),) if systemd else _BY_HAND
        return InstallPlan(family, pkgs, ("apt-get", "install", "-y", *pkgs), start,
                           ("the package's postinst creates the libvirt-qemu account and the libvirt group, "
                            "and starts libvirtd where an init system runs",))
    if family == "fedora":
        pkgs = ("libvirt-daemon-kvm", "libvirt-client")
        start = tuple(("systemctl", "enable", "--now", f"{d}.socket") for d in
                      ("virtqemud", "virtnetworkd", "virtstoraged")) if systemd else \
            (("virtlogd", "-d"), ("virtqemud", "-d"), ("virtnetworkd", "-d"), ("virtstoraged", "-d"))
        return InstallPlan(family, pkgs, ("dnf", "install", "-y", *pkgs), start,
                           ("libvirt-daemon-kvm pulls qemu-kvm; the modular daemons start on demand "
                            "through their sockets",))
    if family == "arch":
        pkgs = ("libvirt", "qemu-base", "dnsmasq")
        start = (("systemctl", "enable", "--now", "libvirtd.service"),) if systemd else _BY_HAND
        return InstallPlan(family, pkgs, ("pacman", "-S", "--needed", "--noconfirm", *pkgs), start,
                           ("dnsmasq serves DHCP/DNS on libvirt's NAT network 'default'",))
    if family == "suse":
        pkgs = ("libvirt-daemon-qemu", "libvirt-client", qemu)
        start = (("systemctl", "enable", "--now", "libvirtd.service"),) if systemd else _BY_HAND
        return InstallPlan(family, pkgs, ("zypper", "--non-interactive", "install", *pkgs), start)
    return None


def elf_machine(data: bytes | None) -> str | None:
    """The uname machine of an ELF binary's header, None when it is not ELF."""
    if not data or len(data) < 20 or data[:4] != b"\x7fELF":
        return None
    endian = "<" if data[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", data[18:20])
    return _ELF_MACHINE.get(machine)


def read_installation(facts) -> Installation:
    text = facts.read_text("/etc/os-release")
    if text is None:
        text = facts.read_text("/usr/lib/os-release") or ""
    osr = parse_os_release(text)
    daemons = tuple(p for p in (facts.which(d) for d in DAEMONS) if p)
    emulators = [p for g in EMULATOR_GLOBS for p in facts.glob(g) if not p.endswith((".so", "-microvm"))]
    emulators += [p for p in EMULATOR_PATHS if facts.which(p)]
    arch = None
    if not facts.is_live:
        for probe in ("/bin/sh", "/usr/bin/sh", "/usr/bin/env"):
            try:
                arch = elf_machine(facts.read_bytes(probe, limit=64))
            except Exception:
                arch = None
            if arch:
                break
    arch = arch or os.uname().machine
    inst = Installation(os=osr, arch=arch, daemons=daemons, client=facts.which(CLIENT),
                        etc_libvirt=facts.is_dir(ETC_LIBVIRT), emulators=tuple(sorted(set(emulators))),
                        systemd=facts.is_dir("/run/systemd/system"),
                        judged=facts.is_live or (bool(text) and (facts.is_dir("/usr/bin") or facts.is_dir("/usr/sbin"))))
    inst.evidence.update({"os": osr.id, "os_like": list(osr.id_like), "os_version": osr.version_id,
                          "family": osr.family, "arch": arch, "daemons": list(daemons), "virsh": inst.client,
                          "etc_libvirt": inst.etc_libvirt, "emulators": list(inst.emulators)})
    return inst
