"""libvirt-not-installed on fake roots of a bare Debian 12 and a bare Fedora 40 (tests/roots/bare-*:
os-release, passwd/group, a CPU with VT-x/AMD-V, no libvirt, no QEMU), the distribution's
install plan, and the engine's `libvirt-installed` need (one skip reason for every check that
needs libvirt)."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from virtdoctor import engine
from virtdoctor.checkdef import check
from virtdoctor.checks import install as I
from virtdoctor.cli import main
from virtdoctor.facts import HostFacts
from virtdoctor.facts.install import NOT_INSTALLED, elf_machine, install_plan, parse_os_release
from virtdoctor.facts.libvirt import RecordedLibvirt
from virtdoctor.model import Auto, Pass, Status

ROOTS = Path(__file__).parent.parent / "roots"


def bare(tmp_path, name) -> Path:
    dst = tmp_path / name
    shutil.copytree(ROOTS / name, dst, symlinks=True)
    return dst


def elf(machine: int) -> bytes:
    head = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack("<HHI", 2, machine, 1)
    return head + b"\0" * (64 - len(head))


def finding(root, slug="libvirt-not-installed"):
    facts = HostFacts(root=str(root), uri="qemu:///system",
                      libvirt_facts=RecordedLibvirt(error="Failed to connect socket to '/run/libvirt/libvirt-sock': "
                                                          "No such file or directory"))
    [f] = engine.run_check(I.libvirt_not_installed, facts)
    return f, facts


def test_bare_debian_plans_debians_own_packages(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    f, facts = finding(root)
    assert f.status is Status.FAIL
    assert "libvirt is not installed on Debian GNU/Linux 12 (bookworm)" in f.message
    assert "no /dev/kvm" in f.message  # whether KVM works here, in the same finding
    assert f.plan.auto is Auto.UNSAFE and f.fix.auto is Auto.UNSAFE
    assert f.fix.commands == ("apt-get update",
                              "apt-get install -y libvirt-daemon-system libvirt-clients qemu-system-x86 ovmf",
                              "virtlogd -d", "libvirtd -d")  # no systemd in this root
    assert f.evidence["family"] == "debian" and f.evidence["arch"] == "x86_64"


def test_bare_debian_with_systemd_enables_the_unit(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "run/systemd/system").mkdir(parents=True)
    f, _ = finding(root)
    assert f.fix.commands[-1] == "systemctl enable --now libvirtd.service"


def test_bare_debian_on_arm64_names_the_arm_emulator(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "usr/bin/sh").write_bytes(elf(183))
    f, _ = finding(root)
    assert "apt-get install -y libvirt-daemon-system libvirt-clients qemu-system-arm qemu-efi-aarch64" in f.fix.commands


def test_bare_fedora_plans_dnf_and_the_modular_sockets(tmp_path):
    root = bare(tmp_path, "bare-fedora40")
    (root / "run/systemd/system").mkdir(parents=True)
    f, _ = finding(root)
    assert f.status is Status.FAIL and "Fedora Linux 40 (Server Edition)" in f.message
    assert f.fix.commands == ("dnf install -y libvirt-daemon-kvm libvirt-client",
                              "systemctl enable --now virtqemud.socket",
                              "systemctl enable --now virtnetworkd.socket",
                              "systemctl enable --now virtstoraged.socket")


def test_leftover_etc_libvirt_and_client_are_not_an_installation(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "etc/libvirt").mkdir()
    vs = root / "usr/bin/virsh"
    vs.write_text("#!/bin/sh\n")
    vs.chmod(0o755)
    f, _ = finding(root)
    assert f.status is Status.FAIL
    assert "/etc/libvirt (left by a removed package?)" in f.message and "/usr/bin/virsh" in f.message


@pytest.mark.parametrize("where", ["/usr/sbin/libvirtd", "/usr/bin/libvirtd", "/usr/sbin/virtqemud"])
def test_a_daemon_binary_means_installed(tmp_path, where):
    root = bare(tmp_path, "bare-fedora40")
    daemon = root / where.lstrip("/")
    daemon.parent.mkdir(parents=True, exist_ok=True)
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    f, _ = finding(root)
    assert f.status is Status.PASS and where in f.message
    assert "no QEMU system emulator found" in f.message


def test_a_non_executable_daemon_file_is_not_installed(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/libvirtd").write_text("")
    f, _ = finding(root)
    assert f.status is Status.FAIL


def test_unknown_distribution_gets_manual_advice(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "etc/os-release").write_text('ID=gentoo\nPRETTY_NAME="Gentoo Linux"\n')
    f, _ = finding(root)
    assert f.status is Status.FAIL and f.fix.auto is Auto.MANUAL and f.fix.commands == ()
    assert "Gentoo Linux" in f.fix.summary


@pytest.mark.parametrize("text, family, first", [
    ('ID=ubuntu\nID_LIKE=debian\nVERSION_ID="24.04"\n', "debian", "apt-get"),
    ('ID="centos"\nID_LIKE="rhel fedora"\nVERSION_ID="9"\n', "fedora", "dnf"),
    ('ID="rhel"\nID_LIKE="fedora"\nVERSION_ID="9.4"\n', "fedora", "dnf"),
    ('ID=arch\n', "arch", "pacman"),
    ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "suse", "zypper"),
])
def test_families_and_their_package_managers(text, family, first):
    osr = parse_os_release(text)
    assert osr.family == family
    p = install_plan(osr.family, "x86_64", True)
    assert p.install[0] == first


def test_package_names_per_family():
    assert install_plan("arch", "x86_64", True).packages == ("libvirt", "qemu-base", "dnsmasq")
    assert install_plan("suse", "x86_64", True).packages == ("libvirt-daemon-qemu", "libvirt-client", "qemu-kvm")
    assert install_plan(None, "x86_64", True) is None


def test_elf_machine():
    assert elf_machine(elf(62)) == "x86_64" and elf_machine(elf(183)) == "aarch64"
    assert elf_machine(b"#!/bin/sh\n") is None and elf_machine(None) is None


# -- the engine's need ----------------------------------------------------------------------
def test_need_libvirt_installed_skips_with_one_reason(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    chk = check("needs-it", scope="host", area="t", title="t", needs=("libvirt-installed",))(lambda f: Pass())
    [f] = engine.run_check(chk, HostFacts(root=str(root), uri="qemu:///system"))
    assert f.status is Status.SKIP and f.message == NOT_INSTALLED
    assert "libvirt-not-installed" in f.message
    # a libvirt connection that fails on a host without libvirt: the same one reason
    chk2 = check("needs-conn", scope="host", area="t", title="t", needs=("libvirt",))(lambda f: Pass())
    _, facts = finding(root)
    [f2] = engine.run_check(chk2, facts)
    assert f2.message == NOT_INSTALLED


def test_need_libvirt_installed_met_runs_the_check(tmp_path):
    root = bare(tmp_path, "bare-debian12")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/libvirtd").write_text("#!/bin/sh\n")
    (root / "usr/sbin/libvirtd").chmod(0o755)
    chk = check("needs-it", scope="host", area="t", title="t", needs=("libvirt-installed",))(lambda f: Pass("ran"))
    [f] = engine.run_check(chk, HostFacts(root=str(root), uri="qemu:///system"))
    assert f.status is Status.PASS and f.message == "ran"
    # a remote URI's failed connection says so, not "not installed"
    chk2 = check("needs-conn", scope="host", area="t", title="t", needs=("libvirt",))(lambda f: Pass())
    shutil.rmtree(root / "usr/sbin")
    facts = HostFacts(root=str(root), uri="qemu+ssh://h/system", libvirt_facts=RecordedLibvirt(error="no route"))
    [f2] = engine.run_check(chk2, facts)
    assert f2.message == "libvirt not reachable: no route"


def test_check_json_on_bare_debian(tmp_path, capsys):
    root = bare(tmp_path, "bare-debian12")
    rc = main(["--root", str(root), "--format", "json", "check"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 2
    by_id = {f["id"]: f for f in doc["findings"] if f["subject"] == "host"}
    assert by_id["libvirt-not-installed"]["status"] == "fail"
    assert by_id["libvirt-not-installed"]["fix"]["auto"] == "unsafe"
    # KVM readiness still judged: this root has VT-x in cpuinfo but no /dev/kvm
    assert by_id["kvm-device-missing"]["status"] == "fail"
    assert "kvm_intel" in by_id["kvm-device-missing"]["message"]
    # every check that needs libvirt skips with the same one reason, none gives its own advice
    gated = [f for f in doc["findings"] if f["message"] == NOT_INSTALLED]
    for f in gated:
        assert f["status"] == "skip" and f["fix"] is None
    for slug in GATED:
        if slug in by_id:
            assert by_id[slug]["message"] == NOT_INSTALLED, (slug, by_id[slug]["message"])


# host checks that judge an installed libvirt: they skip on a host without it
GATED = ("daemon-socket-missing", "daemon-log-dir-missing", "config-syntax-error", "qemu-user-missing",
         "dbus-unavailable", "non-root-access", "tcp-listen-disabled", "tls-ca-missing", "tls-server-cert-missing",
         "tls-client-cert-missing", "tls-cert-invalid", "kvm-device-permission", "romfile-missing",
         "uefi-firmware-missing", "dnsmasq-missing", "firewall-ebtables-missing", "qemu-emulator-missing",
         "default-network-inactive")


def test_a_copied_etc_is_not_judged_missing(tmp_path):
    root = tmp_path / "copied"
    (root / "etc/libvirt").mkdir(parents=True)
    (root / "etc/libvirt/qemu.conf").write_text('user = "qemu"\n')
    f, facts = finding(root)
    assert f.status is Status.SKIP and "copied /etc" in f.message
    chk = check("needs-it", scope="host", area="t", title="t", needs=("libvirt-installed",))(lambda f: Pass("ran"))
    [g] = engine.run_check(chk, facts)
    assert g.message == "ran"
