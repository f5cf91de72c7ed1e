"""Unit tests of checks/network.py on fake roots and recorded libvirt facts.

Bond detection runs on the fake sysfs trees in tests/roots/bond-* (built like real
/sys/class/net layouts: class symlinks into /sys/devices, bonding/mode "balance-alb 6",
bonding/slaves, master and upper_* links, brif/ entries pointing at brport), because this
kernel has no bonding driver."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from virtdoctor import engine, remedy
from virtdoctor.domxml import from_info, parse_domain
from virtdoctor.facts import HostFacts
from virtdoctor.facts.kvm import KvmProbe
from virtdoctor.facts.libvirt import DomainInfo, NetworkInfo, RecordedLibvirt
from virtdoctor.model import Auto, Severity, Status
from virtdoctor.remedy import DefineDomain, StartNetwork

from virtdoctor.checks import network as net

ROOTS = Path(__file__).resolve().parent.parent / "roots"
DEFAULT_XML = """<network>
  <name>default</name>
  <bridge name='virbr0'/>
  <forward/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>
"""


def domain_xml(name, nics=""):
    return (f"<domain type='kvm'><name>{name}</name><memory>65536</memory>"
            "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
            f"<devices>{nics}</devices></domain>")


def nic_network(name="default"):
    return f"<interface type='network'><source network='{name}'/><model type='virtio'/></interface>"


def nic_bridge(name):
    return f"<interface type='bridge'><source bridge='{name}'/><model type='virtio'/></interface>"


def nic_direct(dev, mode="bridge"):
    return (f"<interface type='direct'><mac address='52:54:00:aa:bb:cc'/>"
            f"<source dev='{dev}' mode='{mode}'/><model type='virtio'/></interface>")


def netinfo(name="default", active=True, autostart=True, persistent=True, xml=DEFAULT_XML):
    return NetworkInfo(name, active, autostart, persistent, xml.replace("<name>default</name>",
                                                                         f"<name>{name}</name>"), "virbr0")


def dominfo(name, nics=""):
    return DomainInfo(name=name, uuid="00000000-0000-0000-0000-%012d" % abs(hash(name) % 10**12),
                      xml=domain_xml(name, nics))


def make_facts(root, domains=(), networks=(), procs=(), libvirt=True):
    lv = RecordedLibvirt(domains=list(domains), networks=list(networks)) if libvirt else None
    return HostFacts(root=str(root), uri="qemu:///system", kvm=KvmProbe("/dev/kvm", True, None, 12, True),
                     libvirt_facts=lv, processes_override=list(procs), offline=not libvirt)


def run(chk, facts, dom=None):
    return engine.run_check(chk, facts, dom)


def one(chk, facts, dom=None):
    out = run(chk, facts, dom)
    assert len(out) == 1, out
    return out[0]


# -- default-network-inactive (host) ---------------------------------------------------------

@pytest.mark.parametrize("networks, domains, status, severity, expect", [
    pytest.param([netinfo()], [dominfo("a", nic_network())], Status.PASS, None, "active and autostarted",
                 id="default-active-autostart"),
    pytest.param([netinfo(active=False)], [dominfo("a", nic_network())], Status.FAIL, Severity.ERROR,
                 "network 'default' is not active", id="default-inactive-used"),
    pytest.param([netinfo(active=False)], [], Status.FAIL, Severity.WARNING,
                 "virt-install's default", id="default-inactive-unused"),
    pytest.param([], [dominfo("a", nic_network())], Status.FAIL, Severity.ERROR,
                 "Network not found: no network with matching name 'default'", id="default-missing-used"),
    pytest.param([netinfo(autostart=False)], [dominfo("a", nic_network())], Status.FAIL, Severity.WARNING,
                 "not autostarted", id="active-no-autostart"),
    pytest.param([netinfo(autostart=False, persistent=False)], [], Status.PASS, None, "",
                 id="transient-needs-no-autostart"),
    pytest.param([netinfo(), netinfo("lab", active=False)], [dominfo("a", nic_network("lab"))],
                 Status.FAIL, Severity.ERROR, "network 'lab' is not active (used by a)", id="other-network-inactive"),
])
def test_default_network_inactive_host(fake_root, networks, domains, status, severity, expect):
    f = one(net.default_network_inactive, make_facts(fake_root, domains, networks))
    assert f.status is status, f.message
    if severity:
        assert f.severity is severity
    assert expect in f.message


def test_default_network_inactive_host_skips_offline(fake_root):
    f = one(net.default_network_inactive, make_facts(fake_root, libvirt=False))
    assert f.status is Status.SKIP and "--offline" in f.message


def test_default_network_inactive_host_fixer_starts_and_defines(fake_root):
    fake_root.write(net.DEFAULT_TEMPLATE, DEFAULT_XML)
    facts = make_facts(fake_root, [dominfo("a", nic_network()), dominfo("b", nic_network("lab"))],
                       [netinfo("lab", active=False, autostart=False)])
    f = one(net.default_network_inactive, facts)
    assert f.status is Status.FAIL and f.fix.auto is Auto.SAFE
    p = f.plan
    kinds = [type(a).__name__ for a in p.actions]
    assert kinds == ["DefineNetwork", "StartNetwork", "StartNetwork"]
    assert p.actions[0].xml == DEFAULT_XML
    assert [a.name for a in p.actions if isinstance(a, StartNetwork)] == ["default", "lab"]
    assert "virsh net-define /usr/share/libvirt/networks/default.xml" in p.commands


def test_default_network_inactive_fixer_manual_for_unknown_network(fake_root):
    facts = make_facts(fake_root, [dominfo("a", nic_network("ghost"))], [netinfo()])
    f = one(net.default_network_inactive, facts)
    p = f.plan
    assert p.auto is Auto.MANUAL and "ghost" in p.notes[0]


def test_default_network_missing_without_template_is_manual(fake_root):
    facts = make_facts(fake_root, [dominfo("a", nic_network())], [])
    f = one(net.default_network_inactive, facts)
    p = f.plan
    assert p.auto is Auto.MANUAL and "libvirt-daemon-config-network" in p.notes[0]


class FakeNet:
    def __init__(self, conn, name, active, persistent=True):
        self.conn, self._name, self.active, self.persistent, self.auto = conn, name, active, persistent, False

    def isActive(self):
        return self.active

    def isPersistent(self):
        return self.persistent

    def create(self):
        self.active = True

    def destroy(self):
        self.active = False

    def setAutostart(self, v):
        self.auto = bool(v)

    def autostart(self):
        return int(self.auto)

    def undefine(self):
        del self.conn.nets[self._name]


class FakeConn:
    """The calls DefineNetwork and StartNetwork make (and their undo)."""

    def __init__(self, nets):
        self.nets = {n: FakeNet(self, n, a) for n, a in nets.items()}

    def networkLookupByName(self, name):
        import libvirt
        if name not in self.nets:
            raise libvirt.libvirtError(f"Network not found: no network with matching name '{name}'")
        return self.nets[name]

    def networkDefineXML(self, xml):
        from lxml import etree
        name = etree.fromstring(xml.encode()).findtext("name")
        self.nets[name] = FakeNet(self, name, False)
        return self.nets[name]


def test_default_network_fix_applies_and_rolls_back(fake_root, tmp_path):
    pytest.importorskip("libvirt")
    fake_root.write(net.DEFAULT_TEMPLATE, DEFAULT_XML)
    facts = make_facts(fake_root, [dominfo("a", nic_network())], [])
    f = one(net.default_network_inactive, facts)
    p = f.plan
    conn = FakeConn({})
    env = remedy.Env(root=str(fake_root), libvirt_open=lambda: conn)
    out = remedy.apply_plan(p, env, f.id, f.subject, lambda: (True, ""), str(tmp_path / "backups"))
    assert out.status == "fixed", out.detail
    assert conn.nets["default"].active and conn.nets["default"].auto
    # a re-check that still fails: the network this fix defined is removed again
    conn2 = FakeConn({})
    env2 = remedy.Env(root=str(fake_root), libvirt_open=lambda: conn2)
    p2 = f.plan
    out2 = remedy.apply_plan(p2, env2, f.id, f.subject, lambda: (False, "still"), str(tmp_path / "backups"))
    assert out2.status == "rolled-back"
    assert "default" not in conn2.nets


# -- default-network-inactive (domain) -----------------------------------------------------------

@pytest.mark.parametrize("networks, nics, status, expect", [
    pytest.param([netinfo()], nic_network(), Status.PASS, "defined and active", id="active"),
    pytest.param([netinfo(active=False)], nic_network(), Status.FAIL,
                 "Requested operation is not valid: network 'default' is not active", id="inactive"),
    pytest.param([], nic_network(), Status.FAIL, "Network not found: no network with matching name 'default'",
                 id="missing"),
    pytest.param([], nic_bridge("br0"), Status.PASS, "no <interface type='network'>", id="no-network-nic"),
    pytest.param([netinfo()], nic_network() + nic_network("lab"), Status.FAIL,
                 "no network with matching name 'lab'", id="second-nic-missing"),
])
def test_domain_networks(fake_root, networks, nics, status, expect):
    info = dominfo("vm", nics)
    facts = make_facts(fake_root, [info], networks)
    f = one(net.domain_networks_inactive, facts, from_info(info))
    assert f.status is status, f.message
    assert expect in f.message
    assert f.subject == "domain:vm"


def test_domain_network_fix_is_safe_start(fake_root):
    info = dominfo("vm", nic_network())
    facts = make_facts(fake_root, [info], [netinfo(active=False)])
    dom = from_info(info)
    f = one(net.domain_networks_inactive, facts, dom)
    p = f.plan
    assert p.auto is Auto.SAFE
    assert p.commands == ["virsh net-start default && virsh net-autostart default"]


# -- dnsmasq-missing -------------------------------------------------------------------------------

def exe(root, path):
    root.write(path, "#!/bin/sh\n", mode=0o755)


NO_DNS = """<network><name>nodns</name><bridge name='virbr9'/><forward mode='nat'/><dns enable='no'/>
<ip address='10.9.0.1' netmask='255.255.255.0'/></network>"""
HOST_BRIDGE = "<network><name>hostbr</name><forward mode='bridge'/><bridge name='br0'/></network>"


@pytest.mark.parametrize("binary, networks, status, severity, expect", [
    pytest.param(True, [netinfo()], Status.PASS, None, "/usr/sbin/dnsmasq", id="installed"),
    pytest.param(False, [netinfo()], Status.FAIL, Severity.ERROR,
                 "Unable to find 'dnsmasq' binary in $PATH", id="missing-nat-network"),
    pytest.param(False, [netinfo("nodns", xml=NO_DNS), netinfo("hostbr", xml=HOST_BRIDGE)], Status.FAIL,
                 Severity.WARNING, "no defined network needs it", id="missing-no-network-needs-it"),
    pytest.param(False, None, Status.FAIL, Severity.ERROR, "NAT and isolated networks", id="missing-offline"),
])
def test_dnsmasq_missing(fake_root, binary, networks, status, severity, expect):
    if binary:
        exe(fake_root, "/usr/sbin/dnsmasq")
    facts = make_facts(fake_root, [], networks or [], libvirt=networks is not None)
    f = one(net.dnsmasq_missing, facts)
    assert f.status is status and expect in f.message, f.message
    if severity:
        assert f.severity is severity


def test_dnsmasq_not_executable_counts_as_missing(fake_root):
    fake_root.write("/usr/sbin/dnsmasq", "", mode=0o644)
    f = one(net.dnsmasq_missing, make_facts(fake_root, [], [netinfo()]))
    assert f.status is Status.FAIL


def test_needs_dnsmasq_rules():
    from lxml import etree
    x = lambda s: etree.fromstring(s)
    assert net.needs_dnsmasq(x(DEFAULT_XML))
    assert not net.needs_dnsmasq(x(NO_DNS))
    assert not net.needs_dnsmasq(x(HOST_BRIDGE))
    assert net.needs_dnsmasq(x(NO_DNS.replace("<ip address='10.9.0.1' netmask='255.255.255.0'/>",
                                              "<ip address='10.9.0.1' netmask='255.255.255.0'><dhcp>"
                                              "<host mac='52:54:00:00:00:01' ip='10.9.0.5'/></dhcp></ip>")))


# -- firewall-ebtables-missing -------------------------------------------------------------------------

@pytest.mark.parametrize("conf, tools, status, expect", [
    pytest.param(None, ["iptables", "ip6tables", "ebtables"], Status.PASS, "present", id="libvirt9-all"),
    pytest.param(None, ["iptables", "ip6tables"], Status.FAIL, "ebtables missing", id="libvirt9-no-ebtables"),
    pytest.param('firewall_backend = "nftables"\n', ["nft"], Status.PASS, "/usr/sbin/nft", id="nftables-ok"),
    pytest.param('firewall_backend = "nftables"\n', ["iptables", "ip6tables", "ebtables"], Status.FAIL,
                 "nft missing", id="nftables-missing-nft"),
    pytest.param('# comment\nfirewall_backend = "iptables"\n', ["iptables", "ip6tables"], Status.PASS,
                 "present", id="iptables-backend-needs-no-ebtables"),
    pytest.param('firewall_backend = "pf"\n', [], Status.FAIL, "unknown firewall_backend", id="unknown-backend"),
])
def test_firewall_tools(fake_root, conf, tools, status, expect):
    if conf is not None:
        fake_root.write(net.NETWORK_CONF, conf)
    for t in tools:
        exe(fake_root, f"/usr/sbin/{t}")
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, [], [netinfo()]))
    assert f.status is status and expect in f.message, f.message


def test_firewall_dangling_alternative_is_missing(fake_root):
    for t in ("ip6tables", "ebtables"):
        exe(fake_root, f"/usr/sbin/{t}")
    fake_root.symlink("/usr/sbin/iptables", "../../etc/alternatives/iptables")  # the alternative is gone
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, [], [netinfo()]))
    assert f.status is Status.FAIL and f.severity is Severity.ERROR
    assert f.evidence["missing"] == ["iptables"]
    assert "network:default cannot start without iptables" in f.message
    assert "cannot execute binary /usr/sbin/iptables: No such file or directory" in f.message
    assert f.fix.auto is Auto.MANUAL and "iptables" in f.fix.commands[0]


V6_NET = """<network><name>v6</name><bridge name='virbr6'/><forward mode='nat'/>
<ip family='ipv6' address='fd00:1::1' prefix='64'/></network>"""
FILTERED = ("<interface type='network'><source network='default'/>"
            "<filterref filter='clean-traffic'/></interface>")


@pytest.mark.parametrize("present, networks, domains, severity, expect", [
    pytest.param(["iptables", "ip6tables"], [netinfo()], [], Severity.WARNING, "nothing defined needs it",
                 id="no-ebtables-nobody-needs-it"),
    pytest.param(["iptables", "ip6tables"], [netinfo()], [dominfo("f", FILTERED)], Severity.ERROR,
                 "domain:f cannot start without ebtables", id="no-ebtables-filterref"),
    pytest.param(["iptables", "ebtables"], [netinfo()], [], Severity.WARNING, "nothing defined needs it",
                 id="no-ip6tables-ipv4-only"),
    pytest.param(["iptables", "ebtables"], [netinfo(), netinfo("v6", xml=V6_NET)], [], Severity.ERROR,
                 "network:v6 cannot start without ip6tables", id="no-ip6tables-ipv6-network"),
])
def test_firewall_tool_needed_by(fake_root, present, networks, domains, severity, expect):
    for t in present:
        exe(fake_root, f"/usr/sbin/{t}")
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, domains, networks))
    assert f.status is Status.FAIL and f.severity is severity, f.message
    assert expect in f.message


def test_firewall_tool_elsewhere_on_path(fake_root):
    for t in ("ip6tables", "ebtables"):
        exe(fake_root, f"/usr/sbin/{t}")
    exe(fake_root, "/usr/local/bin/iptables")
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, [], [netinfo()]))
    assert f.status is Status.FAIL and "/usr/local/bin/iptables, but libvirt runs /usr/sbin/iptables" in f.message


def test_firewall_conf_syntax_error_skips_with_reason(fake_root):
    fake_root.write(net.NETWORK_CONF, 'firewall_backend = "nftables\n')
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, [], [netinfo()]))
    assert f.status is Status.SKIP and "network.conf" in f.message


def test_firewall_missing_unused_is_warning(fake_root):
    f = one(net.firewall_ebtables_missing, make_facts(fake_root, [], [netinfo("hostbr", xml=HOST_BRIDGE)]))
    assert f.status is Status.FAIL and f.severity is Severity.WARNING


# -- bond-mode-unsuitable ---------------------------------------------------------------------------------

def bond_root(name, tmp_path):
    """A copy of tests/roots/NAME (symlinks kept) so a test may add files."""
    dst = tmp_path / name
    shutil.copytree(ROOTS / name, dst, symlinks=True)
    return dst


@pytest.mark.parametrize("tree, domains, status, expect", [
    pytest.param("bond-alb-bridge", [dominfo("vm", nic_bridge("br0"))], Status.FAIL,
                 "bond bond0 is in balance-alb (mode 6) under bridge br0 (used by domain:vm)", id="alb-under-used-bridge"),
    pytest.param("bond-tlb-vlan-bridge", [dominfo("vm", nic_bridge("br0"))], Status.FAIL,
                 "balance-tlb (mode 5) under bridge br0", id="tlb-vlan-under-used-bridge"),
    pytest.param("bond-activebackup-bridge", [dominfo("vm", nic_bridge("br0"))], Status.PASS,
                 "bond0 (active-backup, under br0)", id="active-backup-fine"),
    pytest.param("bond-alb-nobridge", [dominfo("vm", nic_bridge("br0"))], Status.PASS,
                 "bond0 (balance-alb)", id="alb-not-bridged"),
    pytest.param("bond-alb-bridge", [dominfo("vm", nic_network())], Status.PASS,
                 "which no domain or network uses", id="alb-bridge-unused"),
])
def test_bond_mode(tree, domains, status, expect):
    facts = make_facts(ROOTS / tree, domains, [netinfo()])
    f = one(net.bond_mode_unsuitable, facts)
    assert f.status is status, f.message
    assert expect in f.message
    if status is Status.FAIL:
        assert f.severity is Severity.WARNING
        assert f.fix.auto is Auto.MANUAL


def test_bond_mode_without_libvirt_still_reports(fake_root):
    f = one(net.bond_mode_unsuitable, make_facts(ROOTS / "bond-alb-bridge", libvirt=False))
    assert f.status is Status.FAIL and "users unknown" in f.message


def test_bond_mode_unreadable_mode_skips(tmp_path):
    root = bond_root("bond-alb-bridge", tmp_path)
    (root / "sys/devices/virtual/net/bond0/bonding/mode").unlink()
    f = one(net.bond_mode_unsuitable, make_facts(root, [dominfo("vm", nic_bridge("br0"))], []))
    assert f.status is Status.SKIP and "bonding mode of bond0" in f.message


def test_bond_mode_no_sysfs_skips(fake_root):
    f = one(net.bond_mode_unsuitable, make_facts(fake_root, [], []))
    assert f.status is Status.SKIP and "/sys/class/net" in f.message


# -- bridge-source-not-bridge -------------------------------------------------------------------------------

@pytest.mark.parametrize("source, status, expect", [
    pytest.param("br0", Status.PASS, "bridge(s) br0 exist", id="real-bridge"),
    pytest.param("eth2", Status.FAIL, "Unable to add bridge eth2 port vnet0: Operation not supported", id="nic"),
    pytest.param("bond0", Status.FAIL, "bond0 is a bond, not a bridge", id="bond"),
    pytest.param("br-missing", Status.PASS, "no link named br-missing (bridge-missing reports it)",
                 id="missing-is-bridge-missing"),
])
def test_bridge_source(source, status, expect):
    info = dominfo("vm", nic_bridge(source))
    facts = make_facts(ROOTS / "bond-alb-bridge", [info], [])
    f = one(net.bridge_source_not_bridge, facts, from_info(info))
    assert f.status is status and expect in f.message, f.message


def test_bridge_source_openvswitch_virtualport_passes():
    info = dominfo("vm", "<interface type='bridge'><source bridge='eth2'/><virtualport type='openvswitch'/>"
                         "</interface>")
    f = one(net.bridge_source_not_bridge, make_facts(ROOTS / "bond-alb-bridge", [info], []), from_info(info))
    assert f.status is Status.PASS and "Open vSwitch" in f.message


def test_bridge_source_preflight_xml_no_sysfs_skips(fake_root):
    dom = parse_domain(domain_xml("vm", nic_bridge("br0")), "vm.xml")
    f = one(net.bridge_source_not_bridge, make_facts(fake_root, libvirt=False), dom)
    assert f.status is Status.SKIP and f.subject == "xml:vm.xml"


def test_bridge_and_macvtap_sources_skip_offline_even_with_sysfs():
    """preflight --offline judges the XML alone: this host's links say nothing
    about the host the XML is for."""
    dom = parse_domain(domain_xml("vm", nic_bridge("eth2")), "vm.xml")
    f = one(net.bridge_source_not_bridge, make_facts(ROOTS / "bond-alb-bridge", libvirt=False), dom)
    assert f.status is Status.SKIP and "--offline" in f.message
    dom = parse_domain(domain_xml("vm", "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>"),
                       "vm.xml")
    f = one(net.macvtap_source_enslaved, make_facts(ROOTS / "bond-alb-bridge", libvirt=False), dom)
    assert f.status is Status.SKIP and "--offline" in f.message


# -- macvtap-source-enslaved ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tree, dev, status, expect", [
    pytest.param("bond-alb-bridge", "eth2", Status.PASS, "eth2 are free", id="free-nic"),
    pytest.param("bond-activebackup-bridge", "eth0", Status.FAIL,
                 "eth0 is enslaved to bond bond0: \"error creating macvtap interface macvtap0@eth0 "
                 "(52:54:00:aa:bb:cc): Device or resource busy\"", id="bond-slave"),
    pytest.param("bond-alb-bridge", "bond0", Status.FAIL, "bond0 is enslaved to bridge br0", id="bridge-port"),
    pytest.param("bond-alb-nobridge", "bond0", Status.PASS, "bond0 are free", id="bond-itself"),
    pytest.param("bond-alb-bridge", "nope0", Status.FAIL, "nope0 does not exist", id="missing"),
])
def test_macvtap(tree, dev, status, expect):
    info = dominfo("vm", nic_direct(dev))
    f = one(net.macvtap_source_enslaved, make_facts(ROOTS / tree, [info], []), from_info(info))
    assert f.status is status and expect in f.message, f.message


def test_macvtap_fix_uses_the_bond():
    info = dominfo("vm", nic_direct("eth0"))
    facts = make_facts(ROOTS / "bond-alb-nobridge", [info], [])
    dom = from_info(info)
    f = one(net.macvtap_source_enslaved, facts, dom)
    p = f.plan
    assert p.auto is Auto.UNSAFE
    (action,) = p.actions
    assert isinstance(action, DefineDomain) and action.name == "vm" and action.old_xml.rstrip() == info.xml.rstrip()
    assert "<source dev='bond0' mode='bridge'/>" in action.new_xml
    # the edit as data: operations re-applied at fix time to the XML with secrets
    assert [op.op for op in action.ops] == ["set-attribute"] and action.ops[0].value == "bond0"
    assert "52:54:00:aa:bb:cc" in action.new_xml
    # the new XML passes the check
    new = parse_domain(action.new_xml, "new", subject="domain:vm")
    assert one(net.macvtap_source_enslaved, facts, new).status is Status.PASS


def test_macvtap_fix_bridge_chain_becomes_bridge_interface():
    info = dominfo("vm", nic_direct("eth0"))
    facts = make_facts(ROOTS / "bond-alb-bridge", [info], [])
    dom = from_info(info)
    f = one(net.macvtap_source_enslaved, facts, dom)
    p = f.plan
    new = parse_domain(p.actions[0].new_xml, "new", subject="domain:vm")
    iface = new.root.find("devices/interface")
    assert iface.get("type") == "bridge" and iface.find("source").attrib == {"bridge": "br0"}
    assert one(net.bridge_source_not_bridge, facts, new).status is Status.PASS


def test_macvtap_fix_not_offered_for_preflight_xml():
    dom = parse_domain(domain_xml("vm", nic_direct("eth0")), "vm.xml")
    facts = make_facts(ROOTS / "bond-alb-bridge", [], [])
    f = one(net.macvtap_source_enslaved, facts, dom)
    assert f.status is Status.FAIL
    assert not f.plan.actions and f.plan.auto is Auto.MANUAL  # advice only: nothing defined to change


def test_registered_in_report_order():
    assert [c.slug for c in net.virtdoctor_checks()] == [
        "default-network-inactive", "dnsmasq-missing", "firewall-ebtables-missing", "bond-mode-unsuitable",
        "default-network-inactive", "bridge-source-not-bridge", "macvtap-source-enslaved"]


def test_firewall_missing_with_firewalld_running_is_warning(fake_root):
    from virtdoctor.facts.procs import Proc
    for t in ("ip6tables", "ebtables"):
        exe(fake_root, f"/usr/sbin/{t}")
    facts = make_facts(fake_root, [], [netinfo()], procs=[Proc(812, "firewalld", ("/usr/sbin/firewalld",))])
    f = one(net.firewall_ebtables_missing, facts)
    assert f.status is Status.FAIL and f.severity is Severity.WARNING
    assert f.evidence["firewalld_running"] is True and "firewalld runs" in f.message
