"""Live tests of the test harness itself: real guests start, the guards put the host back, the
leftover sweep finds what carries the prefix, and the live-test policy fails unexpected skips."""
from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

import vmhelpers
from vmhelpers import PREFIX, DaemonGuard, FileGuard, daemon_pids, start_and_prove

TESTS = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- guests

def test_tiny_tcg_guest_starts(vm_xml, define_vm):
    dom = define_vm(vm_xml("vdtest-harness-tcg", virt_type="qemu", memory_mib=64))
    proof = start_and_prove(dom)
    assert proof.virt_type == "qemu"
    assert not dom.isActive()  # start_and_prove destroyed it
    print(f"TCG guest running after {proof.seconds:.3f} s")


@pytest.mark.needs_kvm
def test_tiny_kvm_guest_starts_with_kvm_accel(vm_xml, define_vm):
    name = "vdtest-harness-kvm"
    dom = define_vm(vm_xml(name, virt_type="kvm"))
    proof = start_and_prove(dom)
    assert proof.virt_type == "kvm"
    log = (vmhelpers.QEMU_LOG_DIR / f"{name}.log").read_text()
    cmdline = log[log.rindex("starting up"):]   # this start's command line
    assert "accel=kvm" in cmdline or "-accel kvm" in cmdline, cmdline[:400]
    print(f"KVM guest running after {proof.seconds:.3f} s")


def test_default_guest_type_follows_kvm_probe(live_host, vm_xml):
    root = ET.fromstring(vm_xml("vdtest-harness-default"))
    assert root.get("type") == ("kvm" if live_host.kvm else "qemu")
    assert int(root.findtext("memory")) <= 128
    assert root.find("devices/graphics") is None


def test_efi_q35_guest_with_disk_and_network_starts_and_undefines_with_nvram(
        vm_xml, define_vm, libvirt_conn):
    name = "vdtest-harness-efi"
    # TCG: on this (nested) host OVMF under KVM stops with "KVM internal error. Suberror: 1"
    dom = define_vm(vm_xml(name, virt_type="qemu", machine="q35", firmware="efi", disk_mib=16,
                           network="default"))
    disk = vmhelpers.IMAGES_DIR / f"{name}.qcow2"
    assert disk.exists()
    start_and_prove(dom)
    nvram = vmhelpers.NVRAM_DIR / f"{name}_VARS.fd"   # libvirt's name for auto-selected firmware
    assert nvram.exists(), sorted(vmhelpers.NVRAM_DIR.iterdir())

    assert vmhelpers.undefine_domain(libvirt_conn, name) is True
    with pytest.raises(libvirt.libvirtError):
        libvirt_conn.lookupByName(name)
    assert not nvram.exists()
    assert vmhelpers.undefine_domain(libvirt_conn, name) is False


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent on this host")
@pytest.mark.parametrize("mode, group, usable", [
    pytest.param(0o660, "kvm", True, id="group-kvm-0660"),
    pytest.param(0o600, "root", False, id="root-only-0600"),
    pytest.param(0o666, "root", True, id="world-0666"),
])
def test_kvm_probe_judges_as_qemus_account(file_guard, mode, group, usable):
    node = vmhelpers.IMAGES_DIR / "vdtest-harness-kvm-node"   # a twin of /dev/kvm, same device
    file_guard(node)
    os.mknod(node, 0o600 | stat.S_IFCHR, os.stat("/dev/kvm").st_rdev)
    os.chown(node, 0, grp.getgrnam(group).gr_gid)
    os.chmod(node, mode)

    ok, reason = vmhelpers.kvm_usable_by_qemu(str(node))

    assert ok is usable, reason
    assert ("cannot open" in reason) is not usable
    assert vmhelpers.kvm_usable_by_qemu(str(node) + "-absent") == (False, f"{node}-absent is absent")


def test_vm_xml_refuses_names_without_prefix(vm_xml):
    with pytest.raises(ValueError, match=PREFIX):
        vm_xml("harness-unprefixed")


# --------------------------------------------------------------------------- daemon guard

def test_daemon_guard_restarts_daemons_a_test_stopped(daemon_guard, live_host):
    guard = DaemonGuard(live_host.uri)   # the fixture behind it is the safety net
    assert guard.before["libvirtd"] and guard.before["virtlogd"], "make test starts both"
    old_libvirtd = guard.stop("libvirtd")
    old_virtlogd = guard.stop("virtlogd")
    assert old_libvirtd == guard.before["libvirtd"]
    assert not daemon_pids("libvirtd") and not daemon_pids("virtlogd")
    with pytest.raises(RuntimeError):
        vmhelpers.open_with_timeout(live_host.uri, timeout=5)

    done = guard.restore()

    assert done == ["started virtlogd", "started libvirtd"]
    assert daemon_pids("libvirtd") and daemon_pids("libvirtd").isdisjoint(old_libvirtd)
    assert daemon_pids("virtlogd") and daemon_pids("virtlogd").isdisjoint(old_virtlogd)
    conn = vmhelpers.open_with_timeout(live_host.uri, timeout=5)
    assert conn.getLibVersion() > 0
    conn.close()
    assert guard.restore() == []   # nothing left to do


# --------------------------------------------------------------------------- file guard

def _describe(path: Path) -> dict:
    """Everything FileGuard promises to restore, for every node below `path`."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]:
        st = os.lstat(p)
        entry = (st.st_mode, st.st_uid, st.st_gid,
                 os.readlink(p) if p.is_symlink() else None,
                 p.read_bytes() if p.is_file() and not p.is_symlink() else None,
                 vmhelpers._xattrs(str(p)) if not p.is_symlink() else None)
        out[str(p.relative_to(path))] = entry
    return out


def test_file_guard_restores_a_changed_tree(file_guard, tmp_path):
    top = vmhelpers.IMAGES_DIR / "vdtest-harness-tree"
    file_guard(top)                       # safety net; the test drives its own guard
    shutil.rmtree(top, ignore_errors=True)
    (top / "sub").mkdir(parents=True)
    (top / "conf").write_text("key = 1\n")
    (top / "sub" / "kept").write_text("unchanged\n")
    (top / "gone").write_text("deleted by the test\n")
    os.symlink("conf", top / "link")
    os.chmod(top / "conf", 0o640)
    os.chown(top / "conf", 0, 107 if _group_exists(107) else 0)
    subprocess.run(["setfacl", "-m", "u:nobody:r", str(top / "conf")], check=True)
    before = _describe(top)
    kept_inode = (top / "sub" / "kept").stat().st_ino

    guard = FileGuard(top, tmp_path / "inner")
    (top / "conf").write_text("key = 2\n")
    os.chmod(top / "conf", 0o600)
    os.chown(top / "conf", 65534, 65534)
    subprocess.run(["setfacl", "-b", str(top / "conf")], check=True)
    (top / "gone").unlink()
    (top / "added").write_text("new\n")
    os.unlink(top / "link")
    os.symlink("elsewhere", top / "link")
    os.chmod(top / "sub", 0o700)
    assert _describe(top) != before

    guard.restore()

    assert _describe(top) == before
    assert (top / "sub" / "kept").stat().st_ino == kept_inode
    assert "system.posix_acl_access" in before["conf"][5]


def test_file_guard_restores_a_deleted_dir_and_an_absent_path(file_guard, tmp_path):
    top = vmhelpers.IMAGES_DIR / "vdtest-harness-dir"
    absent = vmhelpers.IMAGES_DIR / "vdtest-harness-absent"
    file_guard(top)
    file_guard(absent)
    shutil.rmtree(top, ignore_errors=True)
    (top / "a" / "b").mkdir(parents=True, mode=0o750)
    (top / "a" / "b" / "f").write_text("x")
    before = _describe(top)
    dir_guard = FileGuard(top, tmp_path / "d")
    absent_guard = FileGuard(absent, tmp_path / "a")
    assert dir_guard.existed and not absent_guard.existed

    shutil.rmtree(top)
    absent.mkdir()
    (absent / "junk").write_text("y")
    dir_guard.restore()
    absent_guard.restore()

    assert _describe(top) == before
    assert not os.path.lexists(absent)
    shutil.rmtree(top)


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent on this host")
def test_file_guard_restores_dev_kvm_mode_group_and_acl(file_guard, tmp_path):
    file_guard("/dev/kvm")
    before = _describe(Path("/dev/kvm"))
    guard = FileGuard("/dev/kvm", tmp_path / "kvm")
    os.chown("/dev/kvm", 0, 0)
    os.chmod("/dev/kvm", 0o600)
    subprocess.run(["setfacl", "-m", "u:nobody:rw", "/dev/kvm"], check=True)
    assert _describe(Path("/dev/kvm")) != before

    guard.restore()

    assert _describe(Path("/dev/kvm")) == before
    assert os.path.exists("/dev/kvm") and Path("/dev/kvm").is_char_device()


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


# --------------------------------------------------------------------------- leftovers

def test_cleanup_leftovers_removes_only_prefixed_objects(libvirt_conn, vm_xml):
    libvirt_conn.defineXML(vm_xml("vdtest-harness-leftover", virt_type="qemu"))
    net = libvirt_conn.networkDefineXML(
        "<network><name>vdtest-harness-net</name><bridge name='vdtest-br1'/></network>")
    net.create()
    subprocess.run(["ip", "link", "add", "vdtest-br9", "type", "bridge"], check=True)
    image = vmhelpers.IMAGES_DIR / "vdtest-harness-leftover.img"
    image.write_bytes(b"\0" * 512)
    other = {d.name() for d in libvirt_conn.listAllDomains()} - {"vdtest-harness-leftover"}

    removed = vmhelpers.cleanup_leftovers(libvirt_conn)

    assert "domain vdtest-harness-leftover" in removed
    assert "network vdtest-harness-net" in removed
    assert "link vdtest-br9" in removed
    assert f"file {image}" in removed
    assert not os.path.exists("/sys/class/net/vdtest-br1")   # the network's bridge went with it
    assert not os.path.exists("/sys/class/net/vdtest-br9")
    assert not image.exists()
    assert {d.name() for d in libvirt_conn.listAllDomains()} == other
    assert libvirt_conn.networkLookupByName("default").isActive()
    assert vmhelpers.cleanup_leftovers(libvirt_conn) == []


# --------------------------------------------------------------------------- virtdoctor CLI

def test_run_virtdoctor_runs_this_interpreters_package(run_virtdoctor):
    import virtdoctor

    rc, out, err = run_virtdoctor("--version")
    assert rc == 0, err
    assert virtdoctor.__version__ in out


# --------------------------------------------------------------------------- the live policy

INNER_TESTS = '''
import pytest

@pytest.mark.live
def test_body_skip():
    pytest.skip("skipped from the body")

@pytest.mark.live
@pytest.mark.skip(reason="declared by a marker")
def test_declared_skip():
    pass

@pytest.mark.live
def test_runs():
    pass

def test_unit_skip():
    pytest.skip("unit tests may skip")
'''


def _inner_pytest(tmp_path: Path, env: dict) -> tuple[dict, str]:
    """Run a small suite under a copy of tests/conftest.py; {test name: outcome}, output."""
    (tmp_path / "live").mkdir(exist_ok=True)
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    shutil.copy(TESTS / "live" / "vmhelpers.py", tmp_path / "live" / "vmhelpers.py")
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    junit = tmp_path / "junit.xml"
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("VIRTDOCTOR_REQUIRE_LIVE", "VIRTDOCTOR_TEST_URI", "PYTEST_ADDOPTS")}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", f"--junitxml={junit}",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**full_env, **env})
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        kinds = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
        outcomes[case.get("name")] = kinds[0] if kinds else "passed"
    return outcomes, proc.stdout + proc.stderr


def test_policy_turns_an_unexpected_live_skip_into_a_failure(tmp_path):
    outcomes, out = _inner_pytest(tmp_path, {"VIRTDOCTOR_REQUIRE_LIVE": "1"})
    assert outcomes == {"test_body_skip": "failure", "test_declared_skip": "skipped",
                        "test_runs": "passed", "test_unit_skip": "skipped"}, out
    assert "live test skipped although its prerequisites are present" in out
    section = out[out.index("virtdoctor live tests"):]
    assert "ran 2, skipped 1" in section
    assert "test_declared_skip: declared by a marker" in section


def test_policy_lets_live_tests_skip_when_not_required(tmp_path):
    outcomes, out = _inner_pytest(tmp_path, {})
    assert outcomes == {"test_body_skip": "skipped", "test_declared_skip": "skipped",
                        "test_runs": "passed", "test_unit_skip": "skipped"}, out


@pytest.mark.parametrize("required, expected", [
    pytest.param("1", "error", id="required-fails"),
    pytest.param("", "skipped", id="not-required-skips"),
])
def test_policy_when_the_daemon_is_unreachable(tmp_path, required, expected):
    outcomes, out = _inner_pytest(tmp_path, {
        "VIRTDOCTOR_REQUIRE_LIVE": required,
        "VIRTDOCTOR_TEST_URI": "qemu+unix:///system?socket=/nonexistent/vdtest-sock"})
    assert outcomes["test_runs"] == expected, out
    assert "/nonexistent/vdtest-sock" in out
    assert outcomes["test_unit_skip"] == "skipped"


# --------------------------------------------------------------------------- fake_root (tests/conftest.py)

def test_fake_root_builds_a_host_tree(fake_root):
    conf = fake_root.write("/etc/libvirt/qemu.conf", 'user = "libvirt-qemu"\n', mode=0o600)
    fake_root.mkdir("/var/log/libvirt", mode=0o700)
    fake_root.symlink("/etc/libvirt/qemu/autostart/vdtest.xml", "/etc/libvirt/qemu/vdtest.xml")
    fake_root.passwd([("root", 0, 0, "/root", "/bin/bash"), ("libvirt-qemu", 64055, 107),
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"])
    fake_root.group([("root", 0), ("kvm", 107, ["libvirt-qemu"]), ("libvirt", 998, "alice")])

    assert conf == fake_root.path("/etc/libvirt/qemu.conf") == Path(str(fake_root)) / "etc/libvirt/qemu.conf"
    assert fake_root.read("/etc/libvirt/qemu.conf") == 'user = "libvirt-qemu"\n'
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert oct(fake_root.path("/var/log/libvirt").stat().st_mode & 0o777) == "0o700"
    assert os.readlink(fake_root.path("/etc/libvirt/qemu/autostart/vdtest.xml")) == "/etc/libvirt/qemu/vdtest.xml"
    assert fake_root.read("/etc/passwd").splitlines() == [
        "root:x:0:0::/root:/bin/bash",
        "libvirt-qemu:x:64055:107::/nonexistent:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    assert fake_root.read("/etc/group") == "root:x:0:\nkvm:x:107:libvirt-qemu\nlibvirt:x:998:alice\n"
    assert fake_root.path("/") == Path(os.fspath(fake_root))
    assert fake_root.path("/../etc/x") == fake_root.path("/etc/x")   # cannot escape the root
