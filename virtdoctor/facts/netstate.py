"""The host's network state as libvirt's networks and guests meet it: routes,
local addresses, listening sockets and their owners, the forwarding and
router-advertisement sysctls, br_netfilter and the FORWARD policy, and the
session-mode bridge helper (its privilege and /etc/qemu/bridge.conf).

Everything is read from files below the facts' root where a file answers:
/proc/net/route and /proc/net/ipv6_route (routes), /proc/net/fib_trie and
/proc/net/if_inet6 (addresses), /proc/net/{tcp,udp}{,6} plus /proc/PID/fd
(listeners and their processes), /proc/sys (sysctls). Only the FORWARD policy
and RA-learned routes need a command (`iptables -S FORWARD`, `ip -6 -j route
show proto ra`), run with a timeout and only when a check asks.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from virtdoctor.model import FactUnavailable

if TYPE_CHECKING:  # pragma: no cover
    from virtdoctor.facts import HostFacts

RTF_GATEWAY = 0x2
RTF_UP = 0x1
TCP_LISTEN = "0A"
CAP_NET_ADMIN = 12
DEFAULT_BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"  # Debian 12's build (strings of the QEMU driver)
BRIDGE_CONF = "/etc/qemu/bridge.conf"
SYSCTL_FILES = ("/etc/sysctl.conf", "/etc/sysctl.d/*.conf", "/run/sysctl.d/*.conf", "/usr/local/lib/sysctl.d/*.conf",
                "/usr/lib/sysctl.d/*.conf", "/lib/sysctl.d/*.conf")


@dataclass(frozen=True)
class Route:
    iface: str
    dest: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: str | None
    metric: int

    @property
    def is_default(self) -> bool:
        return self.dest.prefixlen == 0


@dataclass(frozen=True)
class Address:
    iface: str
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface

    @property
    def ip(self):
        return self.interface.ip


@dataclass(frozen=True)
class Socket:
    proto: str  # "tcp" | "udp"
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    inode: int

    @property
    def wildcard(self) -> bool:
        return self.ip.is_unspecified

    @property
    def endpoint(self) -> str:
        host = f"[{self.ip}]" if self.ip.version == 6 else str(self.ip)
        return f"{host}:{self.port}/{self.proto}"


@dataclass(frozen=True)
class Owner:
    pid: int
    name: str
    cmdline: tuple[str, ...]

    @property
    def command(self) -> str:
        return shlex.join(self.cmdline) if self.cmdline else self.name


@dataclass(frozen=True)
class SysctlSetting:
    file: str
    line: int
    key: str
    value: str


@dataclass(frozen=True)
class BridgeHelper:
    path: str
    exists: bool
    setuid_root: bool
    cap_net_admin: bool
    acl_file: str
    acl_exists: bool
    allowed: tuple[str, ...]  # bridges named by `allow` (with "all"), includes followed
    denied: tuple[str, ...]
    acl_files: tuple[str, ...]  # every file read (bridge.conf and its includes)
    unreadable: tuple[str, ...]

    @property
    def privileged(self) -> bool:
        return self.setuid_root or self.cap_net_admin

    def allows(self, bridge: str) -> bool:
        """As qemu-bridge-helper decides: a deny (or deny all) wins over allow."""
        if bridge in self.denied or "all" in self.denied:
            return False
        return bridge in self.allowed or "all" in self.allowed


def _hex_ipv4(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int.from_bytes(bytes.fromhex(text), "little"))


def _hex_ipv6(text: str) -> ipaddress.IPv6Address:
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order
    raw = bytes.fromhex(text)
    return ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def parse_route(text: str) -> list[Route]:
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            flags = int(f[3], 16)
            dest = _hex_ipv4(f[1])
            mask = _hex_ipv4(f[7])
            gw = _hex_ipv4(f[2])
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
            metric = int(f[6])
        except ValueError:
            continue
        if not flags & RTF_UP:
            continue
        out.append(Route(f[0], net, str(gw) if flags & RTF_GATEWAY else None, metric))
    return out


def parse_ipv6_route(text: str) -> list[Route]:
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            dest = ipaddress.IPv6Address(bytes.fromhex(f[0]))
            plen = int(f[1], 16)
            gw = ipaddress.IPv6Address(bytes.fromhex(f[4]))
            metric = int(f[5], 16)
            flags = int(f[8], 16)
            net = ipaddress.IPv6Network(f"{dest}/{plen}", strict=False)
        except ValueError:
            continue
        iface = f[9]
        if iface == "lo" or not flags & RTF_UP or net.is_link_local or net.is_multicast:
            continue
        out.append(Route(iface, net, None if gw.is_unspecified else str(gw), metric))
    return out


def parse_fib_trie_locals(text: str) -> list[ipaddress.IPv4Address]:
    """The local IPv4 addresses of /proc/net/fib_trie ("|-- A.B.C.D" followed by
    "/32 host LOCAL")."""
    found: list[ipaddress.IPv4Address] = []
    last = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|-- "):
            last = s[4:].strip()
        elif last and s.startswith("/32 host LOCAL"):
            try:
                ip = ipaddress.IPv4Address(last)
            except ValueError:
                continue
            if ip not in found:
                found.append(ip)
    return found


def parse_if_inet6(text: str) -> list[Address]:
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 6:
            continue
        try:
            ip = ipaddress.IPv6Address(bytes.fromhex(f[0]))
            plen = int(f[2], 16)
        except ValueError:
            continue
        out.append(Address(f[5], ipaddress.IPv6Interface(f"{ip}/{plen}")))
    return out


def parse_sockets(text: str, proto: str, v6: bool) -> list[Socket]:
    """Listening TCP sockets, bound UDP sockets (no remote peer)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        local, remote, state = f[1], f[2], f[3]
        if proto == "tcp" and state != TCP_LISTEN:
            continue
        if proto == "udp" and not remote.endswith(":0000"):
            continue
        try:
            host, port = local.split(":")
            ip = _hex_ipv6(host) if v6 else _hex_ipv4(host)
            inode = int(f[9])
        except ValueError:
            continue
        if v6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        out.append(Socket(proto, ip, int(port, 16), inode))
    return out


def parse_bridge_conf(read, path: str, depth: int = 0, seen=None):
    """(allowed, denied, files read, unreadable) of qemu-bridge-helper's ACL
    file: `allow NAME|all`, `deny NAME|all`, `include FILE`, `#` comments."""
    seen = seen if seen is not None else []
    allowed: list[str] = []
    denied: list[str] = []
    unreadable: list[str] = []
    if depth > 10 or path in seen:
        return allowed, denied, seen, unreadable
    seen.append(path)
    try:
        text = read(path)
    except FactUnavailable:
        unreadable.append(path)
        return allowed, denied, seen, unreadable
    if text is None:
        unreadable.append(path)
        return allowed, denied, seen, unreadable
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) != 2:
            continue
        cmd, arg = words
        if cmd == "allow":
            allowed.append(arg)
        elif cmd == "deny":
            denied.append(arg)
        elif cmd == "include":
            a, d, _, u = parse_bridge_conf(read, arg, depth + 1, seen)
            allowed += a
            denied += d
            unreadable += u
    return allowed, denied, seen, unreadable


def capability_has(raw: bytes | None, cap: int) -> bool:
    """Whether a security.capability xattr (vfs_cap_data) permits `cap`."""
    if not raw or len(raw) < 12:
        return False
    import struct

    words = struct.unpack_from(f"<{len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    permitted = words[1] | ((words[3] << 32) if len(words) > 3 else 0)
    return bool(permitted >> cap & 1)


class NetState:
    """Lazily read network facts of one host (see the module docstring)."""

    def __init__(self, facts: "HostFacts"):
        self.facts = facts

    # -- routes and addresses ------------------------------------------------
    @cached_property
    def routes(self) -> list[Route]:
        v4 = self.facts.read_text("/proc/net/route")
        if v4 is None:
            raise FactUnavailable("/proc/net/route is absent: no routing table to compare with")
        return parse_route(v4) + parse_ipv6_route(self.facts.read_text("/proc/net/ipv6_route") or "")

    @cached_property
    def addresses(self) -> list[Address]:
        """Local addresses with their prefix and link. IPv4 from fib_trie's
        LOCAL entries, placed on the link whose connected route covers them."""
        out: list[Address] = []
        trie = self.facts.read_text("/proc/net/fib_trie")
        if trie is None:
            raise FactUnavailable("/proc/net/fib_trie is absent: the host's addresses are unknown")
        connected = sorted((r for r in self.routes if r.gateway is None and r.dest.version == 4 and not r.is_default),
                           key=lambda r: -r.dest.prefixlen)
        for ip in parse_fib_trie_locals(trie):
            if ip.is_loopback:
                out.append(Address("lo", ipaddress.IPv4Interface(f"{ip}/8")))
                continue
            r = next((r for r in connected if ip in r.dest), None)
            out.append(Address(r.iface if r else "?", ipaddress.IPv4Interface(f"{ip}/{r.dest.prefixlen if r else 32}")))
        out += parse_if_inet6(self.facts.read_text("/proc/net/if_inet6") or "")
        return out

    def has_address(self, ip) -> bool:
        ip = ipaddress.ip_address(ip)
        if ip.is_unspecified or ip.is_loopback:
            return True
        return any(a.ip == ip for a in self.addresses)

    # -- sockets ----------------------------------------------------------------
    @cached_property
    def sockets(self) -> list[Socket]:
        out = []
        for name, proto, v6 in (("tcp", "tcp", False), ("tcp6", "tcp", True), ("udp", "udp", False),
                                ("udp6", "udp", True)):
            text = self.facts.read_text(f"/proc/net/{name}")
            if text is None:
                if name == "tcp":
                    raise FactUnavailable("/proc/net/tcp is absent: listening sockets are unknown")
                continue
            out += parse_sockets(text, proto, v6)
        return out

    def listeners(self, port: int, proto: str | None = None) -> list[Socket]:
        return [s for s in self.sockets if s.port == port and (proto is None or s.proto == proto)]

    def owners(self, inodes) -> dict[int, list[Owner]]:
        """Socket inode -> processes holding it, from /proc/PID/fd links."""
        want = {int(i) for i in inodes if i}
        found: dict[int, list[Owner]] = {}
        if not want:
            return found
        for proc in self.facts.processes:
            fds = self.facts.path(f"/proc/{proc.pid}/fd")
            try:
                names = os.listdir(fds)
            except OSError:
                continue
            for fd in names:
                try:
                    target = os.readlink(os.path.join(fds, fd))
                except OSError:
                    continue
                m = re.fullmatch(r"socket:\[(\d+)\]", target)
                if m and int(m.group(1)) in want:
                    lst = found.setdefault(int(m.group(1)), [])
                    if all(o.pid != proc.pid for o in lst):
                        lst.append(Owner(proc.pid, proc.name, proc.cmdline))
        return found

    # -- sysctls ----------------------------------------------------------------
    def sysctl(self, key: str) -> str | None:
        """A sysctl's current value (dotted key), None when the file is absent."""
        text = self.facts.read_text("/proc/sys/" + key.replace(".", "/"))
        return None if text is None else text.strip()

    def sysctl_settings(self, key: str) -> list[SysctlSetting]:
        """Lines of the sysctl.d files setting `key` (dots or slashes), in file order."""
        want = key.replace("/", ".")
        out = []
        for pattern in SYSCTL_FILES:
            files = self.facts.glob(pattern) if "*" in pattern else [pattern]
            for path in files:
                try:
                    text = self.facts.read_text(path)
                except FactUnavailable:
                    continue
                for n, line in enumerate((text or "").splitlines(), 1):
                    s = line.strip().lstrip("-")
                    if not s or s[0] in "#;" or "=" not in s:
                        continue
                    k, v = (p.strip() for p in s.split("=", 1))
                    if k.replace("/", ".") == want:
                        out.append(SysctlSetting(path, n, want, v))
        return out

    def accept_ra(self) -> dict[str, str]:
        out = {}
        for name in self.facts.listdir("/proc/sys/net/ipv6/conf"):
            if name in ("all", "default"):
                continue
            value = self.sysctl(f"net/ipv6/conf/{name}/accept_ra")
            if value is not None:
                out[name] = value
        return out

    @cached_property
    def ra_route_links(self) -> list[str]:
        """Links with IPv6 routes learned from router advertisements (proto ra),
        as libvirt's virNetDevIPCheckIPv6Forwarding finds them by netlink."""
        cmd = self.facts.run(["ip", "-6", "-j", "route", "show", "proto", "ra"], timeout=3)
        if cmd.returncode != 0:
            raise FactUnavailable(f"ip -6 route show proto ra failed: {cmd.stderr.strip()}")
        try:
            rows = json.loads(cmd.stdout or "[]")
        except ValueError as exc:
            raise FactUnavailable("ip -6 -j route printed no JSON") from exc
        out = []
        for r in rows:
            dev = r.get("dev")
            if dev and dev not in out:
                out.append(dev)
        return out

    # -- bridge netfilter ----------------------------------------------------
    @property
    def br_netfilter(self) -> bool:
        """br_netfilter loaded and bridged IPv4 frames sent through iptables."""
        return self.sysctl("net.bridge.bridge-nf-call-iptables") == "1"

    @cached_property
    def forward_policy(self) -> str:
        """The filter table's FORWARD policy (ACCEPT/DROP), from `iptables -S FORWARD`."""
        cmd = self.facts.run(["iptables", "-w", "2", "-S", "FORWARD"], timeout=5)
        if cmd.returncode != 0:
            raise FactUnavailable(f"iptables -S FORWARD failed: {(cmd.stderr or cmd.stdout).strip()[:200]}")
        m = re.search(r"^-P FORWARD (\S+)", cmd.stdout, re.M)
        if not m:
            raise FactUnavailable("iptables -S FORWARD printed no policy")
        return m.group(1)

    @cached_property
    def forward_rules(self) -> list[str]:
        self.forward_policy
        cmd = self.facts.run(["iptables", "-w", "2", "-S"], timeout=5)
        return [l for l in cmd.stdout.splitlines() if l.startswith("-A ")]

    # -- session bridge helper -------------------------------------------------
    def bridge_helper(self, path: str | None = None) -> BridgeHelper:
        path = path or DEFAULT_BRIDGE_HELPER
        st = self.facts.stat(path)
        exists = st is not None
        setuid = bool(st and st.mode & 0o4000 and st.uid == 0)
        caps = False
        if exists:
            try:
                raw = os.getxattr(self.facts._real(path), "security.capability")
            except OSError:
                raw = None
            caps = capability_has(raw, CAP_NET_ADMIN)
        acl_exists = self.facts.exists(BRIDGE_CONF)
        allowed, denied, files, unreadable = parse_bridge_conf(self.facts.read_text, BRIDGE_CONF)
        return BridgeHelper(path, exists, setuid, caps, BRIDGE_CONF, acl_exists, tuple(allowed), tuple(denied),
                            tuple(files), tuple(unreadable))


# -- libvirt's networks and the guests' NICs, parsed ------------------------------------------
@dataclass(frozen=True)
class VirtNet:
    """One libvirt network as the host checks need it."""

    name: str
    active: bool
    autostart: bool
    persistent: bool
    bridge: str | None
    forward: str | None  # None: isolated; else nat/route/open/bridge/passthrough/...
    ips: tuple  # IPv4Interface / IPv6Interface of each <ip>
    ranges: tuple  # (start, end) of each <dhcp><range>
    dhcp: bool
    dns: bool  # dnsmasq answers DNS (<dns enable='no'/> not given)

    @property
    def managed_bridge(self) -> bool:
        """A bridge libvirt creates and serves (dnsmasq, firewall rules)."""
        return self.forward in (None, "nat", "route", "open")

    @property
    def forwards(self) -> bool:
        return self.forward in ("nat", "route", "open")


@dataclass(frozen=True)
class Nic:
    type: str
    network: str | None
    bridge: str | None
    dev: str | None
    mode: str | None  # macvtap mode


@dataclass(frozen=True)
class Guest:
    name: str
    uuid: str
    active: bool
    autostart: bool
    nics: tuple[Nic, ...]


def _interface_of(text: str):
    try:
        return ipaddress.ip_interface(text)
    except ValueError:
        return None


def parse_network(info) -> VirtNet | None:
    from virtdoctor.facts.libvirt import parse_xml

    try:
        root = parse_xml(info.xml)
    except Exception:
        return None
    fwd = root.find("forward")
    forward = None if fwd is None else (fwd.get("mode") or "nat")
    ips, ranges, dhcp = [], [], False
    for ip in root.iterfind("ip"):
        addr = ip.get("address")
        if not addr:
            continue
        prefix = ip.get("prefix")
        if prefix is None and ip.get("netmask"):
            iface = _interface_of(f"{addr}/{ip.get('netmask')}")
        else:
            default = "64" if ":" in addr else "24"
            iface = _interface_of(f"{addr}/{prefix or default}")
        if iface is None:
            continue
        ips.append(iface)
        d = ip.find("dhcp")
        if d is not None and (d.find("range") is not None or d.find("host") is not None):
            dhcp = True
        for r in ip.iterfind("dhcp/range"):
            ranges.append((r.get("start"), r.get("end")))
    dns_el = root.find("dns")
    br = root.find("bridge")
    return VirtNet(info.name, info.active, info.autostart, info.persistent,
                   (br.get("name") if br is not None else None) or info.bridge, forward, tuple(ips),
                   tuple(ranges), dhcp, dns_el is None or dns_el.get("enable") != "no")


def parse_guest(info) -> Guest | None:
    from virtdoctor.facts.libvirt import parse_xml

    try:
        root = parse_xml(info.live_xml if info.active and info.live_xml else info.xml)
    except Exception:
        return None
    nics = []
    for iface in root.iterfind("devices/interface"):
        src = iface.find("source")
        get = (lambda k: src.get(k)) if src is not None else (lambda k: None)
        nics.append(Nic(iface.get("type") or "", get("network"), get("bridge"), get("dev"), get("mode")))
    return Guest(info.name, info.uuid, info.active, info.autostart, tuple(nics))


class LibvirtNets:
    """The connection's networks and guests, parsed once."""

    def __init__(self, facts: "HostFacts"):
        self.facts = facts

    @cached_property
    def networks(self) -> list[VirtNet]:
        return [n for n in (parse_network(i) for i in self.facts.libvirt.networks()) if n is not None]

    @cached_property
    def guests(self) -> list[Guest]:
        return [g for g in (parse_guest(i) for i in self.facts.libvirt.domains()) if g is not None]

    def users(self, net: VirtNet) -> list[Guest]:
        """Guests with a NIC on `net` (by network name or its bridge)."""
        return [g for g in self.guests
                if any(n.network == net.name or (net.bridge and n.bridge == net.bridge) for n in g.nics)]

    def xml(self, name: str) -> str:
        info = self.facts.libvirt.network(name)
        if info is None:
            raise FactUnavailable(f"network {name} is not defined")
        return info.xml

    def renumbered_xml(self, name: str, old: ipaddress.IPv4Network, new: ipaddress.IPv4Network) -> str:
        """The network's XML with every address in `old` (the <ip>, DHCP ranges
        and hosts) moved to the same offset in `new` (same prefix length)."""
        return renumber_xml(self.xml(name), old, new)


def renumber_xml(xml: str, old, new) -> str:
    from lxml import etree

    from virtdoctor.facts.libvirt import parse_xml

    root = parse_xml(xml)

    def move(value):
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return value
        if ip not in old:
            return value
        return str(new.network_address + (int(ip) - int(old.network_address)))

    for ip in root.iterfind("ip"):
        for el in (ip, *ip.iterfind("dhcp/range"), *ip.iterfind("dhcp/host")):
            for attr in ("address", "start", "end", "ip"):
                if el.get(attr):
                    el.set(attr, move(el.get(attr)))
    return etree.tostring(root, encoding="unicode")

