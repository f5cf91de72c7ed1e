"""checks/nics.py: mac-prefix and mac-duplicate (within a domain, across the defined
domains of the connection, preflight XML against defined domains)."""
from __future__ import annotations

import pytest
from lxml import etree

from test_guest import define, domain_xml, facts_for, fix_on_test_driver, libvirt_test_conn, one, unique
from virtdoctor import domxml, engine
from virtdoctor.checks import nics
from virtdoctor.facts.libvirt import DomainInfo
from virtdoctor.model import Severity, Status


def nic(mac, kind="network", source="default", extra=""):
    src = {"network": f"<source network='{source}'/>", "bridge": f"<source bridge='{source}'/>",
           "user": ""}[kind]
    return (f"    <interface type='{kind}'>\n      <mac address='{mac}'/>\n      {src}\n"
            f"      <model type='virtio'/>\n{extra}    </interface>\n")


# -- mac-prefix -----------------------------------------------------------------------------
@pytest.mark.parametrize("devices, virt, status, severity", [
    pytest.param(nic("52:54:00:12:34:56"), "kvm", Status.PASS, None, id="qemu-prefix"),
    pytest.param(nic("52:54:00:AB:CD:EF"), "kvm", Status.PASS, None, id="upper-case"),
    pytest.param(nic("00:16:3e:12:34:56"), "kvm", Status.FAIL, Severity.WARNING, id="xen-prefix-on-kvm"),
    pytest.param(nic("01:00:5e:00:00:01"), "qemu", Status.FAIL, Severity.ERROR, id="multicast"),
    pytest.param(nic("00:16:3e:12:34:56"), "xen", Status.PASS, None, id="xen-domain"),
    pytest.param("    <interface type='network'><source network='default'/></interface>\n", "kvm", Status.PASS,
                 None, id="no-mac-libvirt-generates"),
])
def test_mac_prefix(fake_root, devices, virt, status, severity):
    f = one(nics.mac_prefix, facts_for(fake_root, offline=True), domain_xml(virt=virt, devices=devices))
    assert f.status is status, f.message
    if severity:
        assert f.severity is severity


def test_mac_prefix_fix_is_unique_on_the_connection(fake_root, tmp_path):
    conn = libvirt_test_conn()
    name = unique("pfx")
    define(conn, domain_xml(name, devices=nic("00:11:22:33:44:55", "user")))
    p, out, new = fix_on_test_driver(nics.mac_prefix, conn, tmp_path, name,
                                     lambda infos: facts_for(fake_root, domains=infos))
    assert out.status == "fixed", out.detail
    mac = etree.fromstring(new.encode()).find("devices/interface/mac").get("address")
    assert mac.startswith("52:54:00:") and mac in p.summary


def test_new_mac_avoids_used_ones():
    first = nics.new_mac("seed", set())
    second = nics.new_mac("seed", {first})
    assert first != second and second.startswith("52:54:00:")
    assert nics.new_mac("seed", set()) == first  # deterministic: the plan shows what it writes


# -- mac-duplicate -------------------------------------------------------------------------------
A = "52:54:00:aa:bb:cc"


def test_duplicate_inside_one_domain(fake_root):
    f = one(nics.mac_duplicate, facts_for(fake_root), domain_xml(devices=nic(A) + nic(A, "bridge", "br0")))
    assert f.status is Status.FAIL and f.severity is Severity.ERROR
    assert "interface 2 (bridge br0) has 52:54:00:aa:bb:cc" in f.message


def test_duplicate_across_defined_domains(fake_root):
    other = domain_xml("other", devices=nic(A.upper()))
    f = one(nics.mac_duplicate, facts_for(fake_root, domains=[other]), domain_xml("vm", devices=nic(A)))
    assert f.status is Status.FAIL and "of domain other" in f.message


def test_preflight_xml_is_compared_with_defined_domains_but_not_itself(fake_root):
    defined = DomainInfo("vm", "11111111-2222-3333-4444-555555555555",
                         domain_xml("vm", devices=nic(A)))
    facts = facts_for(fake_root, domains=[defined])
    redefinition = domain_xml("vm", devices=nic(A))  # the same domain, edited: no clash with itself
    assert one(nics.mac_duplicate, facts, redefinition).status is Status.PASS
    newcomer = domain_xml("new", devices=nic(A))
    f = one(nics.mac_duplicate, facts, newcomer)
    assert f.status is Status.FAIL and f.subject == "xml:vm.xml"


def test_unique_macs_pass_and_offline_skips(fake_root):
    other = domain_xml("other", devices=nic("52:54:00:00:00:01"))
    assert one(nics.mac_duplicate, facts_for(fake_root, domains=[other]),
               domain_xml(devices=nic(A))).status is Status.PASS
    f = one(nics.mac_duplicate, facts_for(fake_root, offline=True), domain_xml(devices=nic(A)))
    assert f.status is Status.SKIP and "offline" in f.message
    # a duplicate inside the XML is found offline too
    f = one(nics.mac_duplicate, facts_for(fake_root, offline=True), domain_xml(devices=nic(A) + nic(A)))
    assert f.status is Status.FAIL


def test_virtio_failover_pair_shares_its_mac_on_purpose(fake_root):
    pair = (nic(A, "bridge", "br0", "      <teaming type='persistent'/>\n      <alias name='ua-backup0'/>\n")
            + nic(A, "bridge", "br1", "      <teaming type='transient' persistent='ua-backup0'/>\n"))
    assert one(nics.mac_duplicate, facts_for(fake_root), domain_xml(devices=pair)).status is Status.PASS


def test_user_mode_duplicates_are_a_warning(fake_root):
    f = one(nics.mac_duplicate, facts_for(fake_root), domain_xml(devices=nic(A, "user") + nic(A, "user")))
    assert f.status is Status.FAIL and f.severity is Severity.WARNING


def test_mac_duplicate_fix_changes_the_stopped_later_domain(fake_root, tmp_path):
    conn = libvirt_test_conn()
    first, second = unique("dupa"), unique("dupb")
    define(conn, domain_xml(first, devices=nic(A, "user")))
    define(conn, domain_xml(second, devices=nic(A, "user")))
    make = lambda infos: facts_for(fake_root, domains=infos)  # noqa: E731
    # the first name keeps the MAC: its plan is empty, the other one's changes it
    assert fix_on_test_driver(nics.mac_duplicate, conn, tmp_path, first, make, plan_only=True)[0] is None
    p, out, new = fix_on_test_driver(nics.mac_duplicate, conn, tmp_path, second, make)
    assert out.status == "fixed", out.detail
    mac = etree.fromstring(new.encode()).find("devices/interface/mac").get("address")
    assert mac != A and mac.startswith("52:54:00:")
    import libvirt
    kept = conn.lookupByName(first).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert A in kept


def test_running_domain_keeps_its_mac(fake_root):
    running = DomainInfo("zz-running", "u1", domain_xml("zz-running", devices=nic(A)), active=True)
    stopped = DomainInfo("aa-stopped", "u2", domain_xml("aa-stopped", devices=nic(A)))
    facts = facts_for(fake_root, domains=[running, stopped])
    dom_running = domxml.from_info(running)
    [f] = engine.run_check(nics.mac_duplicate, facts, dom_running)
    assert f.status is Status.FAIL
    assert nics.regenerate_duplicate(facts, dom_running) is None
    p = nics.regenerate_duplicate(facts, domxml.from_info(stopped))
    assert p is not None and A in p.summary
