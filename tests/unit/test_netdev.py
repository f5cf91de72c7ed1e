"""Catalogue part 2, networks/graphics/TPM/virtiofs/passthrough/session (issue 12):
checks/netconflict.py, session.py, graphics.py, tpm.py, virtiofs.py, passthrough.py and
their facts (virtdoctor/facts/netstate.py, devices.py), on fake roots.

/proc/net files are written in the kernel's formats (net/ipv4/route.c, fib_trie.c,
tcp_ipv4.c, addrconf.c); the sysfs trees for PCI/IOMMU and USB follow
Documentation/ABI/testing/sysfs-bus-pci, sysfs-kernel-iommu_groups and sysfs-bus-usb
(links as on a real host: devices/BDF/iommu_group -> ../../../kernel/iommu_groups/N,
devices/BDF/driver -> ../../../bus/pci/drivers/NAME). VFIO cannot be reproduced on this
machine (no IOMMU), so vfio-group-not-viable is tested on those fake trees only."""
from __future__ import annotations

import ipaddress
import os

import pytest

from test_guest import domain_xml, run
from virtdoctor import engine
from virtdoctor.checks import graphics, netconflict, passthrough, session, tpm, virtiofs
from virtdoctor.facts import HostFacts
from virtdoctor.facts import netstate as ns
from virtdoctor.facts.libvirt import DomainInfo, NetworkInfo, RecordedLibvirt
from virtdoctor.model import Auto, Severity, Status

ROUTE_HEAD = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"


def hex_le(ip: str) -> str:
    return ipaddress.IPv4Address(ip).packed[::-1].hex().upper()


def route_line(iface, dest, mask, gw="0.0.0.0", flags=1):
    return f"{iface}\t{hex_le(dest)}\t{hex_le(gw)}\t{flags:04X}\t0\t0\t0\t{hex_le(mask)}\t0\t0\t0\n"


def fib_trie(*ips):
    out = "Main:\n  +-- 0.0.0.0/0 3 0 5\n"
    for ip in ips:
        out += f"     |-- {ip}\n        /32 host LOCAL\n"
    return out


def sock_line(n, ip, port, state, inode, v6=False):
    if v6:
        raw = ipaddress.IPv6Address(ip).packed
        host = "".join(raw[i:i + 4][::-1].hex().upper() for i in range(0, 16, 4))
        rem = "0" * 32
    else:
        host, rem = hex_le(ip), "00000000"
    return (f"   {n}: {host}:{port:04X} {rem}:0000 {state} 00000000:00000000 00:00000000 00000000     0        0 "
            f"{inode} 1 0000000000000000 100 0 0 10 0\n")


SOCK_HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

NAT = ("<network><name>{name}</name><forward mode='nat'/><bridge name='{br}'/>"
       "<ip address='{ip}' netmask='255.255.255.0'><dhcp><range start='{start}' end='{end}'/></dhcp></ip></network>")


def net(name="default", br="virbr0", ip="192.168.122.1", active=True, autostart=True, xml=None):
    a, b, c, _ = ip.split(".")
    xml = xml or NAT.format(name=name, br=br, ip=ip, start=f"{a}.{b}.{c}.2", end=f"{a}.{b}.{c}.254")
    return NetworkInfo(name, active, autostart, True, xml, br)


def host(root, *, routes=(), addrs=(), networks=(), domains=(), sockets=None, uri="qemu:///system", procs=()):
    root.write("/proc/net/route", ROUTE_HEAD + "".join(route_line(*r) for r in routes))
    root.write("/proc/net/ipv6_route", "")
    root.write("/proc/net/fib_trie", fib_trie("127.0.0.1", *addrs))
    root.write("/proc/net/if_inet6", "")
    for name in ("tcp", "tcp6", "udp", "udp6"):
        root.write(f"/proc/net/{name}", SOCK_HEAD + "".join((sockets or {}).get(name, [])))
    root.mkdir("/sys/bus")
    for pid, comm, cmdline, inodes in procs:
        root.write(f"/proc/{pid}/comm", comm + "\n")
        root.write(f"/proc/{pid}/cmdline", "\0".join(cmdline) + "\0")
        root.write(f"/proc/{pid}/stat", f"{pid} ({comm}) S 1")
        for i, inode in enumerate(inodes):
            root.symlink(f"/proc/{pid}/fd/{i + 3}", f"socket:[{inode}]")
    infos = []
    for i, d in enumerate(domains):
        if isinstance(d, DomainInfo):
            infos.append(d)
        else:
            from lxml import etree
            name = etree.fromstring(d.encode()).findtext("name")
            infos.append(DomainInfo(name, f"00000000-0000-0000-0000-{i:012d}", d))
    return HostFacts(root=str(root), uri=uri,
                     libvirt_facts=RecordedLibvirt(uri=uri, domains=infos, networks=list(networks)))


def results(chk, facts, xml=None):
    if chk.scope == "domain":
        return run(chk, facts, xml)
    return engine.run_check(chk, facts)


def one(chk, facts, xml=None):
    [f] = results(chk, facts, xml)
    return f


def one_defined(chk, facts, xml):
    """As `one`, for a domain defined on the connection (its plan redefines it)."""
    from lxml import etree

    from virtdoctor import domxml
    name = etree.fromstring(xml.encode()).findtext("name")
    [f] = engine.run_check(chk, facts, domxml.from_info(DomainInfo(name, "99999999-0000-0000-0000-000000000000", xml)))
    return f


UPLINK = [("eth0", "0.0.0.0", "0.0.0.0", "192.0.2.1", 3), ("eth0", "192.0.2.0", "255.255.255.0")]


# -- facts: parsers --------------------------------------------------------------------------
def test_proc_net_parsers_read_the_kernel_formats():
    routes = ns.parse_route(ROUTE_HEAD + route_line("eth0", "0.0.0.0", "0.0.0.0", "192.0.2.1", 3)
                            + route_line("virbr0", "192.168.122.0", "255.255.255.0"))
    assert routes[0].is_default and routes[0].gateway == "192.0.2.1"
    assert routes[1].dest == ipaddress.IPv4Network("192.168.122.0/24") and routes[1].iface == "virbr0"
    text = SOCK_HEAD + sock_line(0, "192.168.122.1", 53, "0A", 111) + sock_line(1, "0.0.0.0", 22, "01", 112)
    [s] = ns.parse_sockets(text, "tcp", False)
    assert (str(s.ip), s.port, s.inode, s.wildcard) == ("192.168.122.1", 53, 111, False)
    [s6] = ns.parse_sockets(SOCK_HEAD + sock_line(0, "::", 53, "07", 7, v6=True), "udp", True)
    assert s6.wildcard and s6.endpoint == "[::]:53/udp"
    assert [str(i) for i in ns.parse_fib_trie_locals(fib_trie("10.0.0.5", "10.0.0.5"))] == ["10.0.0.5"]
    [a] = ns.parse_if_inet6("fd000000000000000000000000000002 02 40 00 80     eth0\n")
    assert str(a.interface) == "fd00::2/64" and a.iface == "eth0"


def test_bridge_conf_includes_and_deny():
    files = {"/etc/qemu/bridge.conf": "allow virbr0\ninclude /etc/qemu/more.conf\n# allow br9\n",
             "/etc/qemu/more.conf": "allow br1\ndeny br2\n"}
    allowed, denied, seen, unreadable = ns.parse_bridge_conf(files.get, "/etc/qemu/bridge.conf")
    assert allowed == ["virbr0", "br1"] and denied == ["br2"] and not unreadable
    assert len(seen) == 2


def test_capability_xattr_decoding():
    import struct
    raw = struct.pack("<5I", 0x02000001, 1 << 12, 0, 0, 0)  # VFS_CAP_REVISION_2, cap_net_admin permitted
    assert ns.capability_has(raw, 12) and not ns.capability_has(raw, 21)
    assert not ns.capability_has(None, 12)


def test_renumber_moves_address_range_and_hosts():
    xml = ("<network><name>n</name><ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>"
           "<range start='192.168.122.2' end='192.168.122.254'/><host mac='52:54:00:00:00:01' ip='192.168.122.9'/>"
           "</dhcp></ip></network>")
    out = ns.renumber_xml(xml, ipaddress.IPv4Network("192.168.122.0/24"), ipaddress.IPv4Network("192.168.100.0/24"))
    assert "192.168.100.1" in out and "192.168.100.254" in out and "192.168.100.9" in out and "122" not in out


# -- network-subnet-conflict -----------------------------------------------------------------
def test_subnet_exact_route_on_another_link_blocks_an_inactive_network(fake_root):
    f = host(fake_root, routes=UPLINK + [("vd0", "192.168.122.0", "255.255.255.0")],
             networks=[net(active=False)])
    r = one(netconflict.network_subnet_conflict, f)
    assert r.status is Status.FAIL and r.severity is Severity.ERROR
    assert "Network is already in use by interface vd0" in r.message
    assert r.plan.auto is Auto.UNSAFE and "192.168.100.0/24" in r.plan.summary
    assert any("net-define" in c for c in r.plan.commands)


def test_subnet_own_bridge_route_is_fine_and_overlap_warns(fake_root):
    f = host(fake_root, routes=UPLINK + [("virbr0", "192.168.122.0", "255.255.255.0")], networks=[net()])
    assert one(netconflict.network_subnet_conflict, f).status is Status.PASS
    f2 = host(fake_root, routes=UPLINK + [("tun0", "192.168.0.0", "255.255.0.0")], networks=[net(active=False)])
    r = one(netconflict.network_subnet_conflict, f2)
    assert r.status is Status.FAIL and r.severity is Severity.WARNING and "overlaps route 192.168.0.0/16" in r.message


def test_subnet_move_refused_while_a_running_guest_uses_it(fake_root):
    guest = DomainInfo("g", "u", domain_xml("g", devices="<interface type='network'><source network='default'/>"
                                                         "</interface>"), active=True)
    f = host(fake_root, routes=UPLINK + [("vd0", "192.168.122.0", "255.255.255.0")],
             networks=[net(active=True)], domains=[guest])
    r = one(netconflict.network_subnet_conflict, f)
    assert r.plan.auto is Auto.MANUAL and "running guest(s) g" in r.plan.notes[0]


def test_two_networks_on_one_subnet(fake_root):
    f = host(fake_root, routes=UPLINK, networks=[net(active=False), net("other", "virbr9", active=False)])
    rs = results(netconflict.network_subnet_conflict, f)
    assert {r.status for r in rs} == {Status.FAIL} and "network 'other'" in rs[0].message


# -- dnsmasq-port-conflict -------------------------------------------------------------------
DNSMASQ_SYS = (4242, "dnsmasq", ["/usr/sbin/dnsmasq", "--keep-in-foreground"], [901, 902])


def test_wildcard_port_53_held_by_a_system_dnsmasq(fake_root):
    socks = {"udp": [sock_line(0, "0.0.0.0", 53, "07", 901)], "tcp": [sock_line(0, "0.0.0.0", 53, "0A", 902)]}
    f = host(fake_root, routes=UPLINK, networks=[net(active=False)], sockets=socks, procs=[DNSMASQ_SYS])
    r = one(netconflict.dnsmasq_port_conflict, f)
    assert r.status is Status.FAIL and "dnsmasq (pid 4242: /usr/sbin/dnsmasq --keep-in-foreground)" in r.message
    assert "failed to create listening socket for 192.168.122.1: Address already in use" in r.message
    assert r.plan.auto is Auto.MANUAL and "held by pid 4242" in r.plan.summary
    assert any("bind-interfaces" in c and "00_libvirtd.conf" in c for c in r.plan.commands)
    assert r.plan.commands[-1] == "virsh -c qemu:///system net-start default"


def test_resolved_stub_and_libvirt_dnsmasq_do_not_conflict(fake_root):
    lv = (77, "dnsmasq", ["/usr/sbin/dnsmasq", "--conf-file=/var/lib/libvirt/dnsmasq/other.conf"], [905])
    socks = {"udp": [sock_line(0, "127.0.0.53", 53, "07", 903), sock_line(1, "0.0.0.0", 67, "07", 905)]}
    f = host(fake_root, routes=UPLINK, networks=[net(active=False)], sockets=socks, procs=[lv])
    assert one(netconflict.dnsmasq_port_conflict, f).status is Status.PASS


def test_dhcp_port_held_by_another_server(fake_root):
    isc = (55, "dhcpd", ["/usr/sbin/dhcpd", "-4"], [906])
    f = host(fake_root, routes=UPLINK, networks=[net(active=False)],
             sockets={"udp": [sock_line(0, "0.0.0.0", 67, "07", 906)]}, procs=[isc])
    r = one(netconflict.dnsmasq_port_conflict, f)
    assert r.status is Status.FAIL and "failed to bind DHCP server socket" in r.message and "dhcpd (pid 55" in r.message


# -- ip-forward-disabled -------------------------------------------------------------------------
def test_forwarding_off_under_an_active_nat_network(fake_root):
    fake_root.write("/proc/sys/net/ipv4/ip_forward", "0\n")
    fake_root.write("/etc/sysctl.d/99-hardening.conf", "# hardening\nnet.ipv4.ip_forward = 0\n")
    f = host(fake_root, routes=UPLINK, networks=[net()])
    r = one(netconflict.ip_forward_disabled, f)
    assert r.status is Status.FAIL and r.plan.auto is Auto.SAFE
    assert r.plan.commands == ["sysctl -w net.ipv4.ip_forward=1"]
    assert "/etc/sysctl.d/99-hardening.conf line 2" in r.plan.notes[0]


def test_forwarding_on_but_a_sysctl_file_turns_it_off(fake_root):
    fake_root.write("/proc/sys/net/ipv4/ip_forward", "1\n")
    fake_root.write("/etc/sysctl.conf", "net/ipv4/ip_forward=0\n")
    f = host(fake_root, routes=UPLINK, networks=[net()])
    r = one(netconflict.ip_forward_disabled, f)
    assert r.severity is Severity.WARNING and r.plan.auto is Auto.MANUAL
    fake_root.write("/etc/sysctl.conf", "net.ipv4.ip_forward=1\n")
    assert one(netconflict.ip_forward_disabled, host(fake_root, routes=UPLINK, networks=[net()])).status is Status.PASS


def test_isolated_network_needs_no_forwarding(fake_root):
    fake_root.write("/proc/sys/net/ipv4/ip_forward", "0\n")
    iso = net(xml="<network><name>iso</name><bridge name='virbr5'/><ip address='10.5.5.1' prefix='24'/></network>")
    assert one(netconflict.ip_forward_disabled, host(fake_root, networks=[iso])).status is Status.PASS


# -- bridge-netfilter-forward-drop ---------------------------------------------------------------
BRIDGED = "<interface type='bridge'><source bridge='br0'/></interface>"


def test_br_netfilter_on_without_guests_on_host_bridges_passes(fake_root):
    fake_root.write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n")
    f = host(fake_root, networks=[net()], domains=[domain_xml("g")])
    assert one(netconflict.bridge_netfilter_forward_drop, f).status is Status.PASS


def test_br_netfilter_off_passes_before_iptables_is_asked(fake_root):
    fake_root.write("/proc/sys/net/bridge/bridge-nf-call-iptables", "0\n")
    f = host(fake_root, networks=[net()], domains=[domain_xml("g", devices=BRIDGED)])
    r = one(netconflict.bridge_netfilter_forward_drop, f)
    assert r.status is Status.PASS and "not 1" in r.message


def test_forward_drop_policy_with_bridged_guests(fake_root):
    fake_root.write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1\n")
    f = host(fake_root, networks=[net()], domains=[domain_xml("g", devices=BRIDGED)])
    f.netstate.__dict__["forward_policy"] = "DROP"  # recorded `iptables -S` (a --root runs no command)
    f.netstate.__dict__["forward_rules"] = ["-A FORWARD -j LIBVIRT_FWX", "-A DOCKER-USER -j RETURN"]
    r = one(netconflict.bridge_netfilter_forward_drop, f)
    assert r.status is Status.FAIL and "br0: g" in r.message
    assert r.plan.commands == ["iptables -I DOCKER-USER -i br0 -o br0 -j ACCEPT"]
    f.netstate.__dict__["forward_rules"] = ["-A FORWARD -m physdev --physdev-is-bridged -j ACCEPT"]
    assert one(netconflict.bridge_netfilter_forward_drop, f).status is Status.PASS


# -- ipv6-accept-ra-conflict --------------------------------------------------------------------
V6NET = ("<network><name>v6</name><forward mode='nat'/><bridge name='virbr6'/>"
         "<ip family='ipv6' address='fd00:6::1' prefix='64'/></network>")


def test_ra_routes_on_a_link_with_accept_ra_1(fake_root):
    fake_root.write("/proc/sys/net/ipv6/conf/eth0/accept_ra", "1\n")
    f = host(fake_root, networks=[net(xml=V6NET, active=False)])
    f.netstate.__dict__["ra_route_links"] = ["eth0"]  # recorded `ip -6 -j route show proto ra`
    r = one(netconflict.ipv6_accept_ra_conflict, f)
    assert r.status is Status.FAIL and "interface eth0 has kernel autoconfigured IPv6 routes" in r.message
    assert r.plan.auto is Auto.SAFE and r.plan.commands == ["sysctl -w net.ipv6.conf.eth0.accept_ra=2"]
    fake_root.write("/proc/sys/net/ipv6/conf/eth0/accept_ra", "2\n")
    assert one(netconflict.ipv6_accept_ra_conflict, f).status is Status.PASS


def test_no_ipv6_network_runs_no_command(fake_root):
    f = host(fake_root, networks=[net()])
    assert one(netconflict.ipv6_accept_ra_conflict, f).status is Status.PASS


# -- bridge-missing / macvtap-host-isolation ----------------------------------------------------
def test_bridge_missing_tells_configured_from_typo(fake_root):
    fake_root.mkdir("/sys/class/net/virbr0/bridge")
    fake_root.write("/etc/network/interfaces", "auto br0\niface br0 inet dhcp\n  bridge_ports eth0\n")
    f = host(fake_root)
    r = one(netconflict.bridge_missing, f, domain_xml(devices=BRIDGED))
    assert r.status is Status.FAIL and "configured in /etc/network/interfaces but not up" in r.message
    assert r.plan.commands == ["ifup br0"]
    r2 = one(netconflict.bridge_missing, f, domain_xml(devices=BRIDGED.replace("br0", "brr0")))
    assert "no ifupdown file declares it" in r2.message and "virbr0" in r2.plan.notes[0]
    assert r2.plan.commands == ["ip link add brr0 type bridge", "ip link set brr0 up"]
    ok = one(netconflict.bridge_missing, f, domain_xml(devices=BRIDGED.replace("br0", "virbr0")))
    assert ok.status is Status.PASS


def test_a_link_that_is_not_a_bridge_is_not_bridge_missing(fake_root):
    fake_root.write("/sys/class/net/eth0/operstate", "up\n")
    r = one(netconflict.bridge_missing, host(fake_root), domain_xml(devices=BRIDGED.replace("br0", "eth0")))
    assert r.status is Status.PASS  # bridge-source-not-bridge's case


def test_macvtap_on_a_lower_device_with_a_host_address(fake_root):
    f = host(fake_root, routes=UPLINK, addrs=["192.0.2.2"])
    direct = "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>"
    r = one(netconflict.macvtap_host_isolation, f, domain_xml(devices=direct))
    assert r.status is Status.FAIL and "192.0.2.2" in r.message and r.severity is Severity.INFO
    other = direct.replace("eth0", "eth1")
    assert one(netconflict.macvtap_host_isolation, f, domain_xml(devices=other)).status is Status.PASS


# -- session-bridge-helper ----------------------------------------------------------------------------
def test_session_bridge_helper_without_privilege_or_acl(fake_root):
    fake_root.write("/usr/lib/qemu/qemu-bridge-helper", "#!/bin/sh\n", 0o755)
    f = host(fake_root, networks=[net()], uri="qemu:///session")
    r = one(session.session_bridge_helper, f, domain_xml(devices=BRIDGED.replace("br0", "virbr0")))
    assert r.status is Status.FAIL and "failed to parse default acl file `/etc/qemu/bridge.conf'" in r.message
    assert r.plan.commands == ["setcap cap_net_admin+ep /usr/lib/qemu/qemu-bridge-helper", "mkdir -p /etc/qemu",
                               "sh -c 'echo '\"'\"'allow virbr0'\"'\"' >> /etc/qemu/bridge.conf'",
                               "chmod 0644 /etc/qemu/bridge.conf"]


def test_session_bridge_helper_setuid_and_allowed(fake_root):
    fake_root.write("/usr/lib/qemu/qemu-bridge-helper", "#!/bin/sh\n", 0o4755)
    fake_root.write("/etc/qemu/bridge.conf", "allow virbr0\n")
    f = host(fake_root, networks=[net()], uri="qemu:///session")
    xml = domain_xml(devices="<interface type='network'><source network='default'/></interface>")
    if os.geteuid() == 0:
        assert one(session.session_bridge_helper, f, xml).status is Status.PASS
    deny = one(session.session_bridge_helper, f, domain_xml(devices=BRIDGED))
    assert "does not allow br0: \"access denied by acl file\"" in deny.message


def test_system_uri_needs_no_bridge_helper(fake_root):
    assert one(session.session_bridge_helper, host(fake_root), domain_xml(devices=BRIDGED)).status is Status.PASS


# -- graphics ----------------------------------------------------------------------------------------
VNC = "<graphics type='vnc' port='{port}' autoport='no' listen='{listen}'/>"


def test_fixed_port_held_by_another_domain_and_by_a_process(fake_root):
    other = domain_xml("other", devices=VNC.format(port=5905, listen="127.0.0.1"))
    srv = (31, "python3", ["python3", "-m", "http.server", "5906"], [990])
    f = host(fake_root, domains=[other], sockets={"tcp": [sock_line(0, "0.0.0.0", 5906, "0A", 990)]}, procs=[srv])
    r = one_defined(graphics.graphics_port_conflict, f,
                    domain_xml("vm", devices=VNC.format(port=5905, listen="127.0.0.1")))
    assert r.status is Status.FAIL and "domain other" in r.message and "Failed to reserve port 5905" in r.message
    assert r.plan.auto is Auto.UNSAFE
    r2 = one(graphics.graphics_port_conflict, f, domain_xml("vm", devices=VNC.format(port=5906, listen="0.0.0.0")))
    assert "python3 (pid 31: python3 -m http.server 5906)" in r2.message
    assert "Failed to bind socket: Address already in use" in r2.message
    ok = one(graphics.graphics_port_conflict, f, domain_xml("vm", devices="<graphics type='vnc' autoport='yes'/>"))
    assert ok.status is Status.PASS


def test_autoport_edit():
    from virtdoctor import domxml
    dom = domxml.parse_domain(domain_xml(devices=VNC.format(port=5905, listen="127.0.0.1")), "x.xml")
    tree, _ = domxml.edit_copy(dom, graphics._use_autoport)
    g = tree.getroot().find("devices/graphics") if hasattr(tree, "getroot") else tree.find("devices/graphics")
    assert g.get("autoport") == "yes" and g.get("port") is None


def test_listen_address_not_on_this_host(fake_root):
    f = host(fake_root, routes=UPLINK, addrs=["192.0.2.2"], networks=[net()])
    r = one(graphics.graphics_listen_address_missing, f,
            domain_xml(devices=VNC.format(port=5905, listen="192.0.2.123")))
    assert r.status is Status.FAIL and "192.0.2.123 is not an address of this host" in r.message
    for good in ("192.0.2.2", "0.0.0.0", "127.0.0.1", "::"):
        assert one(graphics.graphics_listen_address_missing, f,
                   domain_xml(devices=VNC.format(port=5905, listen=good))).status is Status.PASS
    netlisten = "<graphics type='spice' autoport='yes'><listen type='network' network='gone'/></graphics>"
    r2 = one(graphics.graphics_listen_address_missing, f, domain_xml(devices=netlisten))
    assert "network 'gone', which is not defined" in r2.message


# -- TPM ----------------------------------------------------------------------------------------------
TPM = "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>"


def libvirtd(root, path):
    root.write("/proc/700/comm", "libvirtd\n")
    root.write("/proc/700/cmdline", "/usr/sbin/libvirtd\0")
    root.write("/proc/700/environ", f"HOME=/root\0PATH={path}\0")


def test_swtpm_missing_on_the_daemons_path(fake_root):
    libvirtd(fake_root, "/opt/bin:/usr/bin")
    fake_root.write("/usr/bin/swtpm", "", 0o755)
    fake_root.write("/usr/sbin/swtpm_setup", "", 0o755)  # not on the daemon's PATH
    f = host(fake_root, domains=[domain_xml("w11", devices=TPM)])
    r = one(tpm.swtpm_missing, f, domain_xml(devices=TPM))
    assert r.status is Status.FAIL and "Unable to find 'swtpm_setup' binary in $PATH" in r.message
    assert "libvirtd (pid 700)" in r.message and r.plan.commands == ["apt-get install -y swtpm swtpm-tools"]
    h = one(tpm.swtpm_missing_host, f)
    assert h.status is Status.FAIL and "w11" in h.message
    fake_root.write("/usr/bin/swtpm_setup", "", 0o755)
    fake_root.write("/usr/bin/swtpm_ioctl", "", 0o755)
    assert one(tpm.swtpm_missing, host(fake_root), domain_xml(devices=TPM)).status is Status.PASS
    assert one(tpm.swtpm_missing, f, domain_xml()).status is Status.PASS


def test_swtpm_state_dir_with_the_wrong_owner(fake_root):
    libvirtd(fake_root, "/usr/bin")
    for t in ("swtpm", "swtpm_setup", "swtpm_ioctl"):
        fake_root.write(f"/usr/bin/{t}", "", 0o755)
    me = os.geteuid()
    fake_root.passwd([("tss", 64000, 64000)])
    fake_root.group([("tss", 64000)])
    fake_root.write("/etc/swtpm_setup.conf", "")
    fake_root.write("/etc/swtpm-localca.conf", "")
    uuid = "11111111-2222-3333-4444-555555555555"
    fake_root.mkdir(f"/var/lib/libvirt/swtpm/{uuid}/tpm2", 0o700)
    fake_root.write("/var/log/swtpm/libvirt/qemu/vm-swtpm.log", "swtpm_setup: Permission denied\n")
    xml = domain_xml(devices=TPM).replace("<name>vm</name>", f"<name>vm</name><uuid>{uuid}</uuid>")
    r = one(tpm.swtpm_setup_failed, host(fake_root), xml)
    assert me != 64000
    assert r.status is Status.FAIL and "not tss:tss" in r.message and "Permission denied" in r.message
    assert r.plan.auto is Auto.SAFE and r.plan.commands == [f"chown -R tss:tss /var/lib/libvirt/swtpm/{uuid}"]
    os.unlink(fake_root.path("/etc/swtpm_setup.conf"))
    r2 = one(tpm.swtpm_setup_failed, host(fake_root), xml)
    assert "/etc/swtpm_setup.conf is missing" in r2.message and r2.plan.auto is Auto.MANUAL


# -- virtiofs --------------------------------------------------------------------------------------------
FS = ("<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>{binary}"
      "<source dir='/srv'/><target dir='share'/></filesystem>")
SHARED = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"


def test_virtiofsd_found_through_the_descriptor(fake_root):
    fake_root.write("/usr/share/qemu/vhost-user/50-qemu-virtiofsd.json",
                    '{"description": "QEMU virtiofsd vhost-user-fs", "type": "fs", "binary": "/usr/lib/qemu/virtiofsd"}')
    f = host(fake_root)
    r = one(virtiofs.virtiofsd_missing, f, domain_xml(devices=FS.format(binary="")))
    assert r.status is Status.FAIL and "virtiofsd binary '/usr/lib/qemu/virtiofsd' is not executable" in r.message
    assert "/usr/lib/qemu/virtiofsd does not exist" in r.message
    fake_root.write("/usr/lib/qemu/virtiofsd", "", 0o755)
    assert one(virtiofs.virtiofsd_missing, host(fake_root), domain_xml(devices=FS.format(binary=""))).status \
        is Status.PASS
    bad = FS.format(binary="<binary path='/nonexistent/virtiofsd'/>")
    r2 = one(virtiofs.virtiofsd_missing, host(fake_root), domain_xml(devices=bad))
    assert "virtiofsd binary '/nonexistent/virtiofsd' is not executable" in r2.message


def test_virtiofs_needs_shared_memory_and_the_fix_adds_it(fake_root):
    r = one_defined(virtiofs.virtiofs_shared_memory_missing, host(fake_root), domain_xml(devices=FS.format(binary="")))
    assert r.status is Status.FAIL and "'virtiofs' requires shared memory" in r.message
    assert r.plan.auto is Auto.UNSAFE
    from virtdoctor import domxml
    dom = domxml.parse_domain(domain_xml(devices=FS.format(binary="")), "x.xml")
    tree, _ = domxml.edit_copy(dom, virtiofs._add_shared_memory)
    text = domxml.serialise(tree)
    assert "<access mode=\"shared\"/>" in text.replace("'", '"') and "memfd" in text
    fixed = domxml.parse_domain(text, "y.xml")
    assert one(virtiofs.virtiofs_shared_memory_missing, host(fake_root), text).status is Status.PASS
    assert fixed.root.find("memoryBacking") is not None


def test_virtiofs_on_session_with_libvirt_9(fake_root):
    f = host(fake_root, uri="qemu:///session")
    r = one(virtiofs.virtiofs_session_unsupported, f, domain_xml(devices=FS.format(binary="")))
    assert r.status is Status.FAIL and "virtiofs is not yet supported in session mode" in r.message
    ext = FS.format(binary="").replace("<source dir='/srv'/>", "<source socket='/run/user/1000/fs.sock'/>")
    assert one(virtiofs.virtiofs_session_unsupported, f, domain_xml(devices=ext)).status is Status.PASS
    assert one(virtiofs.virtiofs_session_unsupported, host(fake_root), domain_xml(devices=FS.format(binary=""))) \
        .status is Status.PASS


# -- passthrough ---------------------------------------------------------------------------------------
def pci(root, bdf, group, driver=None, cls="0x030000"):
    base = f"/sys/bus/pci/devices/{bdf}"
    root.write(f"{base}/class", cls + "\n")
    root.write(f"{base}/vendor", "0x10de\n")
    root.write(f"{base}/device", "0x1b80\n")
    root.mkdir(f"/sys/kernel/iommu_groups/{group}/devices")
    root.symlink(f"/sys/kernel/iommu_groups/{group}/devices/{bdf}", f"../../../../bus/pci/devices/{bdf}")
    root.symlink(f"{base}/iommu_group", f"../../../../kernel/iommu_groups/{group}")
    if driver:
        root.mkdir(f"/sys/bus/pci/drivers/{driver}")
        root.symlink(f"{base}/driver", f"../../../../bus/pci/drivers/{driver}")


GPU = ("<hostdev mode='subsystem' type='pci' managed='yes'><source>"
       "<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source></hostdev>")


def test_vfio_group_with_the_audio_function_on_a_host_driver(fake_root):
    pci(fake_root, "0000:01:00.0", 1, "nouveau")
    pci(fake_root, "0000:01:00.1", 1, "snd_hda_intel", "0x040300")
    pci(fake_root, "0000:00:01.0", 1, "pcieport", "0x060400")  # a root port: fine
    f = host(fake_root)
    r = one(passthrough.vfio_group_not_viable, f, domain_xml(devices=GPU))
    assert r.status is Status.FAIL and "0000:01:00.1" in r.message and "snd_hda_intel" in r.message
    assert "group 1 is not viable" in r.message and "0000:00:01.0" not in r.message
    assert r.plan.commands == ["virsh nodedev-detach pci_0000_01_00_1"]
    assert "0000:01:00.1 (pci_0000_01_00_1) is now on snd_hda_intel" in r.plan.notes
    both = GPU + GPU.replace("function='0x0'", "function='0x1'")
    assert one(passthrough.vfio_group_not_viable, f, domain_xml(devices=both)).status is Status.PASS


def test_vfio_unmanaged_device_must_be_on_vfio_pci(fake_root):
    pci(fake_root, "0000:01:00.0", 4, "nouveau")
    r = one(passthrough.vfio_group_not_viable, host(fake_root), domain_xml(devices=GPU.replace("'yes'", "'no'")))
    assert "managed='no') is bound to nouveau" in r.message
    pci(fake_root, "0000:02:00.0", 5, "vfio-pci")
    ok = GPU.replace("'yes'", "'no'").replace("bus='0x01'", "bus='0x02'")
    assert one(passthrough.vfio_group_not_viable, host(fake_root), domain_xml(devices=ok)).status is Status.PASS


USB = ("<hostdev mode='subsystem' type='usb'><source{policy}><vendor id='0x{v}'/><product id='0x{p}'/></source>"
       "</hostdev>")


def usb(root, name, v, p, bus, dev):
    for k, val in (("idVendor", v), ("idProduct", p), ("busnum", bus), ("devnum", dev)):
        root.write(f"/sys/bus/usb/devices/{name}/{k}", f"{val}\n")


def test_usb_hostdev_missing_and_the_optional_fix(fake_root):
    usb(fake_root, "1-1", "0627", "0001", 1, 2)
    f = host(fake_root)
    r = one_defined(passthrough.usb_hostdev_missing, f, domain_xml(devices=USB.format(policy="", v="1234", p="5678")))
    assert r.status is Status.FAIL and "Did not find USB device 1234:5678" in r.message
    assert r.plan.auto is Auto.UNSAFE
    assert one(passthrough.usb_hostdev_missing, f,
               domain_xml(devices=USB.format(policy="", v="0627", p="0001"))).status is Status.PASS
    assert one(passthrough.usb_hostdev_missing, f, domain_xml(
        devices=USB.format(policy=" startupPolicy='optional'", v="1234", p="5678"))).status is Status.PASS


def test_hostdev_claimed_by_a_running_and_a_defined_domain(fake_root):
    assert passthrough.hostdev_in_use.slug == "hostdev-in-use"
    dev = USB.format(policy="", v="0627", p="0001")
    running = DomainInfo("holder", "u1", domain_xml("holder", devices=dev), active=True)
    f = host(fake_root, domains=[running])
    r = one(passthrough.hostdev_in_use, f, domain_xml("vm", devices=dev))
    assert r.status is Status.FAIL and r.severity is Severity.ERROR
    assert "USB device 0627:0001 is in use by driver QEMU, domain holder" in r.message
    idle = DomainInfo("spare", "u2", domain_xml("spare", devices=GPU), autostart=True)
    r2 = one(passthrough.hostdev_in_use, host(fake_root, domains=[idle]), domain_xml("vm", devices=GPU))
    assert r2.severity is Severity.WARNING and "PCI 0000:01:00.0 is also assigned to domain spare (autostart)" \
        in r2.message
    assert one(passthrough.hostdev_in_use, f, domain_xml("holder", devices=dev)).status is Status.PASS


def test_usb_hostdev_on_a_host_without_usb_bus_is_dropped(fake_root):
    f = host(fake_root)  # /sys/bus without usb: as on this test machine
    r = one_defined(passthrough.usb_hostdev_missing, f, domain_xml(devices=USB.format(policy="", v="1234", p="5678")))
    assert r.status is Status.FAIL and "cannot open directory '/sys/bus/usb/devices'" in r.message
    assert r.plan.auto is Auto.UNSAFE and "Remove the USB hostdev" in r.plan.summary
    from virtdoctor import domxml
    dom = domxml.parse_domain(domain_xml(devices=USB.format(policy="", v="1234", p="5678")), "x.xml")
    tree, _ = domxml.edit_copy(dom, passthrough._drop([0]))
    assert "hostdev" not in domxml.serialise(tree)


# -- host/uri twins: the domain checks over every defined domain ----------------------------------------
def test_twins_name_the_failing_domains(fake_root):
    pci(fake_root, "0000:01:00.0", 1, "nouveau")
    pci(fake_root, "0000:01:00.1", 1, "snd_hda_intel", "0x040300")
    fs = domain_xml("share", devices=FS.format(binary=""))
    gpu = domain_xml("gaming", devices=GPU)
    plain = domain_xml("plain")
    bridged = domain_xml("lan", devices=BRIDGED.replace("br0", "virbr0"))
    f = host(fake_root, domains=[fs, gpu, plain, bridged])
    r = one(virtiofs.virtiofsd_missing_host, f)
    assert r.status is Status.FAIL and r.message.startswith("domain share: ") and r.evidence["domains"] == ["share"]
    r = one(passthrough.vfio_group_not_viable_host, f)
    assert r.status is Status.FAIL and "domain gaming: " in r.message and r.plan.commands
    assert one(session.session_bridge_helper_uri, f).status is Status.PASS  # qemu:///system
    s = host(fake_root, domains=[fs, plain, bridged], uri="qemu:///session")
    r = one(session.session_bridge_helper_uri, s)
    assert r.status is Status.FAIL and r.evidence["domains"] == ["lan"]
    r = one(virtiofs.virtiofs_session_unsupported_uri, s)
    assert r.status is Status.FAIL and r.evidence["domains"] == ["share"]
    clean = host(fake_root, domains=[plain])
    assert one(virtiofs.virtiofsd_missing_host, clean).status is Status.PASS
    assert one(passthrough.vfio_group_not_viable_host, clean).status is Status.PASS
