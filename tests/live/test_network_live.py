"""Live tests of the network checks on the real daemon: each breaks the host the way the
catalogue says, shows libvirt's real error, shows virtdoctor's finding, fixes what can be
fixed, proves it with a real guest or network, and puts the host back in fixtures. Guests are
TCG (virt_type qemu): networking does not need KVM, and another test may be changing /dev/kvm."""
from __future__ import annotations

import json
import os
import subprocess

import libvirt
import pytest

import vmhelpers
from vmhelpers import start_and_prove

DNSMASQ = "/usr/sbin/dnsmasq"


def vd_json(run_virtdoctor, *args) -> tuple[int, dict]:
    """(exit status, JSON document) of `virtdoctor --format json ARGS`; stderr in the failure."""
    rc, out, err = run_virtdoctor("--format", "json", *args)
    assert out.strip(), f"virtdoctor {' '.join(args)} printed no JSON (exit {rc}): {err.strip()}"
    return rc, json.loads(out)


def findings(doc: dict, slug: str, subject: str | None = None) -> list[dict]:
    return [f for f in doc["findings"] if f["id"] == slug and (subject is None or f["subject"] == subject)]


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def default_network(libvirt_conn):
    """The 'default' network as the test found it, put back afterwards (active, autostart)."""
    net = libvirt_conn.networkLookupByName("default")
    before = (bool(net.isActive()), bool(net.autostart()))
    yield net
    conn = vmhelpers.wait_for_uri(None, 30)
    try:
        net = conn.networkLookupByName("default")
        if before[0] and not net.isActive():
            net.create()
        net.setAutostart(1 if before[1] else 0)
    finally:
        conn.close()


@pytest.fixture
def links():
    """Creates links named vdtest-*; deletes every one of them afterwards."""
    made = []

    def add(*args):
        ip("link", "add", *args)
        made.append(args[0])

    yield add
    for name in reversed(made):
        if os.path.lexists(f"/sys/class/net/{name}"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)


class Hidden:
    """Renames PATH aside (PATH.vdtest-hidden) inside a `with` block and always puts it back;
    the rename keeps a symlink a symlink (Debian's alternatives)."""

    def __init__(self, path: str):
        self.path, self.aside = path, path + ".vdtest-hidden"
        self.restore()  # a previous run that died with it hidden

    def restore(self):
        if os.path.lexists(self.aside) and not os.path.lexists(self.path):
            os.rename(self.aside, self.path)

    def __enter__(self):
        os.rename(self.path, self.aside)
        return self

    def __exit__(self, *exc):
        self.restore()


@pytest.fixture
def hidden():
    made = []

    def hide(path):
        made.append(Hidden(path))
        return made[-1]

    yield hide
    for h in made:
        h.restore()
        assert os.path.lexists(h.path), f"{h.path} was not put back"


@pytest.fixture
def nat_network(libvirt_conn):
    xml = ("<network><name>vdtest-nat</name><bridge name='vdtest-nat0'/><forward mode='nat'/>"
           "<ip address='10.252.77.1' netmask='255.255.255.0'><dhcp>"
           "<range start='10.252.77.2' end='10.252.77.9'/></dhcp></ip></network>")
    net = libvirt_conn.networkDefineXML(xml)  # vdtest-*: removed by the leftover sweep too
    yield net
    try:
        if net.isActive():
            net.destroy()
        net.undefine()
    except libvirt.libvirtError:
        pass


def test_inactive_default_network_found_fixed_and_guest_starts(default_network, vm_xml, define_vm,
                                                               run_virtdoctor, libvirt_conn):
    name = "vdtest-net-default"
    dom = define_vm(vm_xml(name, network="default", virt_type="qemu", memory_mib=64))
    if default_network.isActive():
        default_network.destroy()
    default_network.setAutostart(0)

    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    assert "network 'default' is not active" in str(err.value)

    rc, out = vd_json(run_virtdoctor, "check", "--only", "default-network-inactive",
                                "--domain", name)
    host = findings(out, "default-network-inactive", "host")
    domf = findings(out, "default-network-inactive", f"domain:{name}")
    assert host[0]["status"] == "fail" and host[0]["severity"] == "error", host
    assert "default" in host[0]["evidence"]["inactive"] and name in host[0]["evidence"]["used_by"]["default"]
    assert domf[0]["status"] == "fail"
    assert "Requested operation is not valid: network 'default' is not active" in domf[0]["message"]
    assert domf[0]["fix"]["auto"] == "safe"
    assert rc == 2

    rc, out = vd_json(run_virtdoctor, "fix", "--yes", "--only", "default-network-inactive",
                                       "--domain", name, "--backup-dir", "/tmp/vdtest-backups")
    statuses = {(a["subject"], a["status"]) for a in out["actions"]}
    assert ("host", "fixed") in statuses, out["actions"]

    net = libvirt_conn.networkLookupByName("default")
    assert net.isActive() and net.autostart()
    proof = start_and_prove(dom)
    assert proof.cpu_time_ns > 0
    rc, out = vd_json(run_virtdoctor, "check", "--only", "default-network-inactive", "--domain", name)
    assert {f["status"] for f in findings(out, "default-network-inactive")} == {"pass"}


def test_missing_dnsmasq_nat_network_fails_and_is_found(hidden, nat_network, run_virtdoctor):
    with hidden(DNSMASQ):
        with pytest.raises(libvirt.libvirtError) as err:
            nat_network.create()
        rc, out = vd_json(run_virtdoctor, "check", "--only", "dnsmasq-missing")
    assert "Unable to find 'dnsmasq' binary in $PATH: No such file or directory" in str(err.value)
    (f,) = findings(out, "dnsmasq-missing")
    assert f["status"] == "fail" and f["severity"] == "error", f
    assert "vdtest-nat" in f["evidence"]["networks_needing_dnsmasq"]
    assert "Unable to find 'dnsmasq' binary in $PATH" in f["message"]
    assert f["fix"]["auto"] == "manual" and "dnsmasq" in " ".join(f["fix"]["commands"])
    # dnsmasq back: the network starts and the check passes
    nat_network.create()
    assert nat_network.isActive()
    rc, out = vd_json(run_virtdoctor, "check", "--only", "dnsmasq-missing")
    assert findings(out, "dnsmasq-missing")[0]["status"] == "pass"


def test_missing_iptables_nat_network_fails_and_is_found(hidden, nat_network, run_virtdoctor):
    """libvirt 9.0 has no firewall backend check: the network start fails when its rules run."""
    with hidden("/usr/sbin/iptables"):
        with pytest.raises(libvirt.libvirtError) as err:
            nat_network.create()
        rc, out = vd_json(run_virtdoctor, "check", "--only", "firewall-ebtables-missing")
    text = str(err.value)
    assert "Failed to apply firewall rules /usr/sbin/iptables" in text
    assert "cannot execute binary /usr/sbin/iptables: No such file or directory" in text
    (f,) = findings(out, "firewall-ebtables-missing")
    assert f["status"] == "fail" and f["severity"] == "error", f
    assert f["evidence"]["missing"] == ["iptables"]
    assert "network:vdtest-nat" in f["evidence"]["needed_by"]["iptables"]
    assert "cannot execute binary /usr/sbin/iptables: No such file or directory" in f["message"]
    nat_network.create()
    assert nat_network.isActive()


def test_missing_ebtables_does_not_stop_a_nat_network(hidden, nat_network, run_virtdoctor):
    """Measured: without ebtables a libvirt 9.0 NAT network still starts, so virtdoctor only
    warns (nwfilter's <filterref> would need it)."""
    with hidden("/usr/sbin/ebtables"):
        nat_network.create()
        rc, out = vd_json(run_virtdoctor, "check", "--only", "firewall-ebtables-missing")
    assert nat_network.isActive()
    (f,) = findings(out, "firewall-ebtables-missing")
    assert f["status"] == "fail" and f["severity"] == "warning", f


def test_bridge_source_that_is_a_veth_and_macvtap_on_a_bridge_port(links, vm_xml, define_vm, run_virtdoctor,
                                                                    libvirt_conn):
    links("vdtest-br0", "type", "bridge")
    links("vdtest-v0", "type", "veth", "peer", "name", "vdtest-v1")
    ip("link", "set", "vdtest-v1", "master", "vdtest-br0")
    for dev in ("vdtest-br0", "vdtest-v0", "vdtest-v1"):
        ip("link", "set", dev, "up")

    # a veth where a bridge belongs
    bad_bridge = define_vm(vm_xml("vdtest-net-notbr", virt_type="qemu", memory_mib=64, devices=(
        "    <interface type='bridge'><source bridge='vdtest-v0'/><model type='virtio'/></interface>")))
    with pytest.raises(libvirt.libvirtError) as err:
        bad_bridge.create()
    assert "Unable to add bridge vdtest-v0 port vnet" in str(err.value)
    assert "Operation not supported" in str(err.value)
    rc, out = vd_json(run_virtdoctor, "check", "--only", "bridge-source-not-bridge",
                                "--domain", "vdtest-net-notbr")
    (f,) = findings(out, "bridge-source-not-bridge")
    assert f["status"] == "fail" and "Unable to add bridge vdtest-v0 port vnet0: Operation not supported" in f["message"]

    # macvtap on a device that is a bridge port
    mac = "52:54:00:7d:00:01"
    direct = define_vm(vm_xml("vdtest-net-macvtap", virt_type="qemu", memory_mib=64, devices=(
        f"    <interface type='direct'><mac address='{mac}'/><source dev='vdtest-v1' mode='bridge'/>"
        "<model type='virtio'/></interface>")))
    with pytest.raises(libvirt.libvirtError) as err:
        direct.create()
    assert "error creating macvtap interface macvtap" in str(err.value)
    assert f"@vdtest-v1 ({mac}): Device or resource busy" in str(err.value)
    rc, out = vd_json(run_virtdoctor, "check", "--only", "macvtap-source-enslaved",
                                "--domain", "vdtest-net-macvtap")
    (f,) = findings(out, "macvtap-source-enslaved")
    assert f["status"] == "fail" and f["severity"] == "error"
    assert f"error creating macvtap interface macvtap0@vdtest-v1 ({mac}): Device or resource busy" in f["message"]
    assert f["fix"]["auto"] == "unsafe"

    # the unsafe fix turns the NIC into a port of the bridge that owns vdtest-v1; the guest starts
    rc, out = vd_json(run_virtdoctor, "fix", "--yes", "--unsafe", "--only",
                                       "macvtap-source-enslaved", "--domain", "vdtest-net-macvtap",
                                       "--backup-dir", "/tmp/vdtest-backups")
    actions = out["actions"]
    assert [a["status"] for a in actions] == ["fixed"], actions
    fixed = libvirt_conn.lookupByName("vdtest-net-macvtap")
    xml = fixed.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<source bridge='vdtest-br0'/>" in xml and mac in xml
    start_and_prove(fixed)

    # and a free device takes a macvtap: the check passes where libvirt succeeds
    ok = define_vm(vm_xml("vdtest-net-macvtap-ok", virt_type="qemu", memory_mib=64, devices=(
        "    <interface type='direct'><source dev='vdtest-v0' mode='bridge'/><model type='virtio'/></interface>")))
    rc, out = vd_json(run_virtdoctor, "check", "--only", "macvtap-source-enslaved",
                                "--domain", "vdtest-net-macvtap-ok")
    assert findings(out, "macvtap-source-enslaved")[0]["status"] == "pass"
    start_and_prove(ok)


def test_missing_macvtap_lower_device_text(vm_xml, define_vm, run_virtdoctor):
    dom = define_vm(vm_xml("vdtest-net-nodev", virt_type="qemu", memory_mib=64, devices=(
        "    <interface type='direct'><source dev='vdtest-nodev0' mode='bridge'/><model type='virtio'/></interface>")))
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    assert "Unable to get index for interface vdtest-nodev0: No such device" in str(err.value)
    rc, out = vd_json(run_virtdoctor, "check", "--only", "macvtap-source-enslaved",
                                "--domain", "vdtest-net-nodev")
    (f,) = findings(out, "macvtap-source-enslaved")
    assert f["status"] == "fail"
    assert "Unable to get index for interface vdtest-nodev0: No such device" in f["message"]


def test_missing_tun_node_found_recreated_and_guest_starts(file_guard, vm_xml, define_vm, run_virtdoctor):
    """tun-missing (virt-host-validate parity), live: the tun driver is built in here, so the
    node can vanish (no udev) while /sys/class/misc/tun/dev still says 10:200; the safe fix
    recreates it with mknod and a guest with a NIC starts again."""
    node = "/dev/net/tun"
    st = os.stat(node)
    assert os.path.exists("/sys/class/misc/tun/dev")
    file_guard(node)  # puts the original node back (type, rdev, mode, owner) whatever happens
    dom = define_vm(vm_xml("vdtest-net-tun", network="default", virt_type="qemu", memory_mib=64))
    os.unlink(node)
    with pytest.raises(libvirt.libvirtError) as err:
        dom.create()
    assert "Unable to open /dev/net/tun, is tun module loaded?: No such file or directory" in str(err.value)

    rc, out = vd_json(run_virtdoctor, "check", "--only", "tun-missing")
    (f,) = findings(out, "tun-missing")
    assert f["status"] == "fail" and f["severity"] == "error"
    assert "Unable to open /dev/net/tun, is tun module loaded?" in f["message"]
    assert f["fix"]["auto"] == "safe" and "mknod -m 0666 /dev/net/tun c 10 200" in f["fix"]["commands"]

    rc, out = vd_json(run_virtdoctor, "fix", "--yes", "--only", "tun-missing",
                                       "--backup-dir", "/tmp/vdtest-backups")
    actions = out["actions"]
    assert [a["status"] for a in actions] == ["fixed"], actions
    new = os.stat(node)
    assert new.st_rdev == st.st_rdev and (new.st_mode & 0o7777) == 0o666
    start_and_prove(dom)
