"""Host devices and helper binaries guests depend on: the swtpm tools on the
daemon's PATH and the TPM state directories, the virtiofsd of the vhost-user
descriptors, PCI devices with their IOMMU group and driver binding
(/sys/bus/pci, /sys/kernel/iommu_groups), USB devices (/sys/bus/usb), and which
defined or running domains claim each host device (<hostdev>).

Layouts follow the kernel's Documentation/ABI (sysfs-bus-pci, sysfs-kernel-iommu_groups,
sysfs-bus-usb); every read goes through the facts' root, so a fake sysfs tree
works the same as the real one.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from virtdoctor.model import FactUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from virtdoctor.facts import HostFacts

SWTPM_TOOLS = ("swtpm", "swtpm_setup", "swtpm_ioctl")
DAEMONS = ("virtqemud", "libvirtd")
# libvirt's compiled-in PATH for the daemon when its environment has none (virCommand's default)
FALLBACK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VHOST_USER_DIRS = ("/usr/share/qemu/vhost-user", "/etc/qemu/vhost-user")  # later overrides by file name
SWTPM_STATE_DIR = "/var/lib/libvirt/swtpm"
SWTPM_LOG_DIR = "/var/log/swtpm/libvirt/qemu"
# PCI classes that may stay with a host driver inside a group: bridges (0x0604, 0x0600 host bridge)
BRIDGE_CLASSES = ("0x0600", "0x0604")
VFIO_DRIVERS = ("vfio-pci", "pci-stub")


@dataclass(frozen=True)
class PciDevice:
    address: str  # 0000:01:00.0
    driver: str | None
    group: str | None
    pci_class: str  # "0x030000"
    vendor: str
    device: str

    @property
    def is_bridge(self) -> bool:
        return self.pci_class[:6] in BRIDGE_CLASSES

    @property
    def nodedev(self) -> str:
        dom, bus, slotfn = self.address.split(":")
        slot, fn = slotfn.split(".")
        return f"pci_{dom}_{bus}_{slot}_{fn}"


@dataclass(frozen=True)
class UsbDevice:
    sysname: str
    vendor: str  # 4 hex digits, lower-case
    product: str
    busnum: int
    devnum: int
    name: str = ""


@dataclass(frozen=True)
class Claim:
    domain: str
    active: bool
    autostart: bool
    label: str  # "PCI 0000:01:00.0", "USB 0627:0001", "USB bus 1 device 2", "mdev <uuid>"


@dataclass
class VhostUserDescriptor:
    path: str
    type: str
    binary: str


def pci_address(src) -> str | None:
    """The BDF of a <hostdev type='pci'><source><address .../>."""
    a = src.find("address") if src is not None else None
    if a is None:
        return None
    try:
        dom = int(a.get("domain", "0"), 0)
        bus = int(a.get("bus", "0"), 0)
        slot = int(a.get("slot", "0"), 0)
        fn = int(a.get("function", "0"), 0)
    except ValueError:
        return None
    return f"{dom:04x}:{bus:02x}:{slot:02x}.{fn:x}"


def _hex4(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return f"{int(text, 0) if text.lower().startswith('0x') else int(text, 16):04x}"
    except ValueError:
        return None


def hostdev_keys(hostdev) -> list[str]:
    """Identities of a <hostdev>: what two claims of the same device share."""
    kind = hostdev.get("type")
    src = hostdev.find("source")
    if src is None:
        return []
    if kind == "pci":
        a = pci_address(src)
        return [f"PCI {a}"] if a else []
    if kind == "usb":
        keys = []
        ven, prod = src.find("vendor"), src.find("product")
        v = _hex4(ven.get("id")) if ven is not None else None
        p = _hex4(prod.get("id")) if prod is not None else None
        if v and p:
            keys.append(f"USB {v}:{p}")
        addr = src.find("address")
        if addr is not None and addr.get("bus") and addr.get("device"):
            try:
                keys.append(f"USB bus {int(addr.get('bus'), 0)} device {int(addr.get('device'), 0)}")
            except ValueError:
                pass
        return keys
    if kind == "mdev":
        a = src.find("address")
        return [f"mdev {a.get('uuid')}"] if a is not None and a.get("uuid") else []
    return []


class Devices:
    """Lazily read device and helper facts (see the module docstring)."""

    def __init__(self, facts: "HostFacts"):
        self.facts = facts

    # -- the daemon's PATH and the swtpm tools -----------------------------------------
    @cached_property
    def daemon_path(self) -> tuple[str, str]:
        """(PATH, where it came from): the running daemon's environment, else
        libvirt's fallback."""
        for name in DAEMONS:
            for p in self.facts.process_named(name):
                try:
                    env = self.facts.read_bytes(f"/proc/{p.pid}/environ")
                except FactUnavailable:
                    continue
                for item in (env or b"").split(b"\0"):
                    if item.startswith(b"PATH="):
                        return item[5:].decode("utf-8", "replace"), f"{name} (pid {p.pid})"
                if env is not None:
                    return FALLBACK_PATH, f"{name} (pid {p.pid}, no PATH: libvirt's default)"
        return FALLBACK_PATH, "default PATH (no daemon process found)"

    def which_on_daemon_path(self, name: str) -> str | None:
        path, _ = self.daemon_path
        dirs = tuple(d for d in path.split(":") if d.startswith("/"))
        for d in dirs:
            candidate = f"{d.rstrip('/')}/{name}"
            if self.facts.which(candidate):
                return candidate
        return None

    @cached_property
    def swtpm_tools(self) -> dict[str, str | None]:
        return {t: self.which_on_daemon_path(t) for t in SWTPM_TOOLS}

    def swtpm_account(self) -> tuple[str, str]:
        """qemu.conf swtpm_user/swtpm_group (libvirt's default tss:tss)."""
        conf = "/etc/libvirt/qemu.conf"
        return (str(self.facts.conf_value(conf, "swtpm_user", "tss")),
                str(self.facts.conf_value(conf, "swtpm_group", "tss")))

    def swtpm_state_dir(self, uuid: str) -> str:
        return f"{SWTPM_STATE_DIR}/{uuid}"

    def swtpm_log(self, name: str) -> str:
        return f"{SWTPM_LOG_DIR}/{name}-swtpm.log"

    # -- virtiofsd ---------------------------------------------------------------
    @cached_property
    def vhost_user(self) -> list[VhostUserDescriptor]:
        """Descriptors by file name, /etc overriding /usr/share (QEMU's
        firmware-style interop rules)."""
        by_name: dict[str, str] = {}
        for d in VHOST_USER_DIRS:
            for name in self.facts.listdir(d):
                if name.endswith(".json"):
                    by_name[name] = f"{d}/{name}"
        out = []
        for name in sorted(by_name):
            path = by_name[name]
            try:
                data = json.loads(self.facts.read_text(path) or "{}")
            except (ValueError, FactUnavailable):
                continue
            if isinstance(data, dict):
                out.append(VhostUserDescriptor(path, str(data.get("type", "")), str(data.get("binary", ""))))
        return out

    @property
    def virtiofsd_candidates(self) -> list[str]:
        """The binaries of the fs descriptors, in libvirt's order."""
        return [d.binary for d in self.vhost_user if d.type == "fs" and d.binary]

    def virtiofsd(self) -> tuple[str | None, list[str]]:
        """(the first usable virtiofsd, problems with the other candidates)."""
        problems = []
        for d in self.vhost_user:
            if d.type != "fs":
                continue
            if not d.binary.startswith("/"):
                problems.append(f"{d.path}: no absolute 'binary'")
            elif self.facts.which(d.binary):
                return d.binary, problems
            elif self.facts.exists(d.binary):
                problems.append(f"{d.path}: {d.binary} is not executable")
            else:
                problems.append(f"{d.path}: {d.binary} does not exist")
        return None, problems

    def executable(self, path: str) -> bool:
        return self.facts.which(path) is not None

    # -- PCI and IOMMU groups ----------------------------------------------------
    def pci_device(self, address: str) -> PciDevice | None:
        base = f"/sys/bus/pci/devices/{address}"
        if not self.facts.exists(base):
            return None
        return self._pci(base, address)

    def _link_name(self, host_path: str) -> str | None:
        if not self.facts.exists(host_path):
            return None
        real = self.facts.realpath(host_path)
        return posixpath.basename(real) if real else None

    def _pci(self, base: str, address: str) -> PciDevice:
        def attr(name):
            try:
                return (self.facts.read_text(f"{base}/{name}") or "").strip()
            except FactUnavailable:
                return ""
        return PciDevice(address, self._link_name(f"{base}/driver"), self._link_name(f"{base}/iommu_group"),
                         attr("class"), attr("vendor"), attr("device"))

    def iommu_group(self, group: str) -> list[PciDevice]:
        base = f"/sys/kernel/iommu_groups/{group}/devices"
        return [self._pci(f"/sys/bus/pci/devices/{a}", a) for a in self.facts.listdir(base)]

    def vfio_group_node(self, group: str) -> bool:
        return self.facts.exists(f"/dev/vfio/{group}")

    # -- USB ------------------------------------------------------------------------
    @property
    def usb_bus(self) -> bool:
        """Whether /sys/bus/usb exists (libvirt lists /sys/bus/usb/devices to find a device)."""
        return self.facts.exists("/sys/bus/usb/devices")

    @cached_property
    def usb_devices(self) -> list[UsbDevice]:
        base = "/sys/bus/usb/devices"
        if not self.facts.exists(base):
            if self.facts.exists("/sys/bus"):
                return []  # sysfs without a USB bus: no USB device can be found
            raise FactUnavailable("/sys is not mounted below the root: USB devices are unknown")
        out = []
        for name in self.facts.listdir(base):
            if ":" in name:  # interfaces (1-1:1.0), not devices
                continue

            def attr(a):
                try:
                    return (self.facts.read_text(f"{base}/{name}/{a}") or "").strip()
                except FactUnavailable:
                    return ""
            v, p = attr("idVendor"), attr("idProduct")
            if not v or not p:
                continue
            try:
                bus, dev = int(attr("busnum")), int(attr("devnum"))
            except ValueError:
                continue
            out.append(UsbDevice(name, v.lower(), p.lower(), bus, dev, attr("product")))
        return out

    # -- who claims which host device ----------------------------------------------------
    @staticmethod
    def keys_of(hostdev) -> list[str]:
        """Identities of a <hostdev> element (see hostdev_keys)."""
        return hostdev_keys(hostdev)

    @staticmethod
    def pci_address_of(hostdev) -> str | None:
        return pci_address(hostdev.find("source"))

    @cached_property
    def claims(self) -> dict[str, list[Claim]]:
        """Device key (see hostdev_keys) -> defined/running domains claiming it."""
        from virtdoctor.facts.libvirt import parse_xml

        out: dict[str, list[Claim]] = {}
        for info in self.facts.libvirt.domains():
            try:
                root = parse_xml(info.live_xml if info.active and info.live_xml else info.xml)
            except Exception:
                continue
            for hd in root.iterfind("devices/hostdev"):
                if hd.get("mode", "subsystem") != "subsystem":
                    continue
                for k in hostdev_keys(hd):
                    lst = out.setdefault(k, [])
                    if all(c.domain != info.name for c in lst):
                        lst.append(Claim(info.name, info.active, info.autostart, k))
        return out

    @cached_property
    def tpm_domains(self) -> list[str]:
        """Defined domains with an emulated TPM (<tpm><backend type='emulator'>)."""
        from virtdoctor.facts.libvirt import parse_xml

        out = []
        for info in self.facts.libvirt.domains():
            try:
                root = parse_xml(info.xml)
            except Exception:
                continue
            if any(b.get("type") == "emulator" for b in root.iterfind("devices/tpm/backend")):
                out.append(info.name)
        return out

    # -- fixed display ports of every defined domain --------------------------------------
    @cached_property
    def display_ports(self) -> dict[int, list[tuple[str, bool]]]:
        """TCP port -> (domain, active) of every domain's graphics with a fixed
        port (autoport='no' or a port without autoport), tlsPort and websocket."""
        from virtdoctor.facts.libvirt import parse_xml

        out: dict[int, list[tuple[str, bool]]] = {}
        for info in self.facts.libvirt.domains():
            try:
                root = parse_xml(info.live_xml if info.active and info.live_xml else info.xml)
            except Exception:
                continue
            for port in fixed_display_ports(root, live=info.active):
                lst = out.setdefault(port, [])
                if (info.name, info.active) not in lst:
                    lst.append((info.name, info.active))
        return out


def fixed_display_ports(root, live: bool = False) -> list[int]:
    """Fixed TCP ports of a domain's <graphics type='vnc|spice'> (for a
    running domain's live XML, the ports it actually holds)."""
    ports = []
    for g in root.iterfind("devices/graphics"):
        if g.get("type") not in ("vnc", "spice"):
            continue
        auto = g.get("autoport")
        for attr in ("port", "tlsPort", "websocket"):
            try:
                value = int(g.get(attr) or "0")
            except ValueError:
                continue
            if value > 0 and (live or auto == "no" or (auto is None and attr != "websocket")):
                ports.append(value)
    return ports

