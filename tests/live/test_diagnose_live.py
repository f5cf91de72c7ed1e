"""`virtdoctor diagnose NAME --start` on the real daemon: a VM broken the way the catalogue
says, libvirt's real error, the right slug ranked first, and the fix diagnose prints makes
the VM start.

Each test: break, show libvirt's own error (a start through libvirt-python), run
`diagnose NAME --start --format json`, assert the first cause, apply the fix it prints
(`virtdoctor fix --only SLUG ... --yes` when it prints one, else the manual step its fix
names), and prove the VM starts (vmhelpers.start_and_prove). Guards put the host back.

Other developers' live tests restart libvirtd on this host while these run, and a restart
kills every open connection: each libvirt step here runs on a fresh connection and is
repeated when the connection was lost (`Lv.call`), never when libvirt answered.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import subprocess
import time

import pytest

import vmhelpers

pytestmark = pytest.mark.live
MINE = "vdtest-diag-"
LOST = ("End of file while reading data", "Cannot write data", "client socket is closed",
        "Failed to connect socket", "Cannot recv data", "Broken pipe", "did not answer",
        "internal error: client socket is closed", "libvirtd quit during handshake")


def _lost(exc: BaseException) -> bool:
    return any(s in str(exc) for s in LOST)


class Vanished(Exception):
    """Another developer's session-wide sweep removed this test's vdtest-* objects mid-test."""


GONE = ("no domain with matching name", "no network with matching name", "no domain named",
        "is not defined")


def _gone(text: str) -> bool:
    return any(s in text for s in GONE)


def scenario(body, tries: int = 6) -> None:
    """Run a test body again from the start when its objects vanished under it."""
    for attempt in range(tries):
        try:
            return body()
        except Vanished as exc:
            last = exc
            print(f"\nretrying: {exc}")
    pytest.fail(f"other live tests removed this test's objects {tries} times: {last}")


class Lv:
    """libvirt steps on fresh connections, repeated when the daemon went away under them."""

    def __init__(self, uri: str):
        self.uri = uri
        self.names: list[str] = []

    def call(self, fn, tries: int = 5):
        for attempt in range(tries):
            conn = vmhelpers.wait_for_uri(self.uri, 90)
            try:
                return fn(conn)
            except Exception as exc:
                if _gone(str(exc)):
                    raise Vanished(str(exc)) from exc
                if not _lost(exc) or attempt == tries - 1:
                    raise
                time.sleep(1)
            finally:
                try:
                    conn.close()
                except Exception:
                    pass

    def define(self, xml: str, fresh: bool = True) -> str:
        """Define the domain; `fresh`: remove a leftover of the same name first (a scenario
        run again after a sweep may find its domain half gone)."""
        name = re.search(r"<name>([^<]+)</name>", xml).group(1)
        assert name.startswith(MINE), name
        self.names.append(name)
        if fresh:
            self.call(lambda c: vmhelpers.undefine_domain(c, name))
        return self.call(lambda c: c.defineXML(xml).name())

    def xml(self, name: str) -> str:
        return self.call(lambda c: c.lookupByName(name).XMLDesc(2))  # VIR_DOMAIN_XML_INACTIVE

    def start_error(self, name: str) -> str:
        """libvirt's own error of one start (what `virsh start` shows after `error: `)."""
        def attempt(conn):
            dom = conn.lookupByName(name)
            try:
                dom.create()
            except Exception as exc:
                if _lost(exc) or _gone(str(exc)):
                    raise
                return exc.get_error_message()
            dom.destroy()
            raise AssertionError(f"{name} started although it is broken")

        return self.call(attempt)

    def prove(self, name: str, timeout: float = 60.0) -> vmhelpers.Proof:
        def attempt(conn):
            dom = conn.lookupByName(name)
            if dom.isActive():  # left running by a start the daemon's restart interrupted
                dom.destroy()
            return vmhelpers.start_and_prove(dom, timeout=timeout)

        return self.call(attempt)

    def cleanup(self) -> None:
        def undefine(conn):
            for name in self.names:
                vmhelpers.undefine_domain(conn, name)

        self.call(undefine)


@pytest.fixture
def lv(live_host):
    helper = Lv(live_host.uri)
    yield helper
    helper.cleanup()


@pytest.fixture(scope="module", autouse=True)
def _vdtest_leftovers(live_host):
    """Overrides the session-wide sweep of tests/live/conftest.py for this module: several
    developers run live tests on this daemon at once, and that sweep removes every vdtest-*
    object, theirs included. Only this module's own leftovers (vdtest-diag-*) are removed."""
    def sweep(conn):
        for dom in conn.listAllDomains():
            if dom.name().startswith(MINE):
                vmhelpers.undefine_domain(conn, dom.name())
        for net in conn.listAllNetworks():
            if net.name().startswith(MINE):
                if net.isActive():
                    net.destroy()
                net.undefine()
        for path in vmhelpers.IMAGES_DIR.glob(MINE + "*"):
            path.unlink(missing_ok=True)

    if live_host.ok:
        Lv(live_host.uri).call(sweep)
    yield
    if live_host.ok:
        Lv(live_host.uri).call(sweep)


def diagnose(run_virtdoctor, name: str) -> tuple[int, dict]:
    """`diagnose NAME --start --format json`; run again (up to 4 times) when the daemon was
    restarted under it by someone else's test."""
    for _ in range(4):
        rc, out, err = run_virtdoctor("--format", "json", "diagnose", name, "--start")
        if rc == 3 and _gone(err):
            raise Vanished(err.strip())
        assert out.strip(), f"diagnose printed nothing (rc {rc}): {err}"
        doc = json.loads(out)
        if "error" not in doc["domain"] and not _lost(doc.get("start", {}).get("error", "")):
            return rc, doc
        vmhelpers.wait_for_uri(vmhelpers.live_uri(), 90).close()
    return rc, doc


def first_cause(doc: dict, slug: str) -> dict:
    causes = doc["causes"]
    assert causes, f"no causes: {json.dumps(doc['start'])} {doc['logs']}"
    assert causes[0]["id"] == slug, (
        f"start: {doc.get('start')}; first cause {causes[0]['id']} ({causes[0]['tier']}), expected {slug}: "
        + "; ".join(f"{c['id']}={c['score']}({c['tier']})" for c in causes))
    scores = [c["score"] for c in causes]
    assert scores == sorted(scores, reverse=True)
    return causes[0]


def apply_printed_fix(run_virtdoctor, cause: dict) -> str | None:
    """Run the `virtdoctor fix ...` command diagnose printed, with --yes; the command, or None
    when it printed none."""
    cmd = (cause.get("fix") or {}).get("command")
    if not cmd:
        return None
    argv = shlex.split(cmd)
    assert argv[:4] == ["virtdoctor", "fix", "--only", cause["id"]], cmd
    for _ in range(4):
        rc, out, err = run_virtdoctor("--format", "json", *argv[1:], "--yes")
        if rc != 0 and _gone(out + err):
            raise Vanished((out + err).strip().splitlines()[0])
        if rc == 0 or not _lost(out + err):
            break
        vmhelpers.wait_for_uri(vmhelpers.live_uri(), 90).close()
    assert out.strip(), f"{cmd} --yes printed nothing ({rc}): {err}"
    actions = json.loads(out)["actions"]
    mine = [a for a in actions if a["id"] == cause["id"]]
    # status 1 is fine when only a failure no plan covers remains (a host without SMM stays so)
    # (a twin finding that the first action repaired too is skipped as "passes now")
    assert rc in (0, 1) and any(a["status"] == "fixed" for a in mine), f"{cmd} --yes ({rc}): {actions}"
    assert all(a["status"] == "fixed" or a.get("passes") for a in mine), f"{cmd} --yes ({rc}): {actions}"
    return cmd


def report(name: str, doc: dict, cause: dict, fixed_by: str) -> None:
    print(f"\n{name}: start error {doc['start']['error']!r}\n  first cause {cause['id']} ({cause['tier']}, "
          f"score {cause['score']}); fixed by: {fixed_by}")


# --------------------------------------------------------------------------- KVM permission

@pytest.mark.needs_kvm
def test_kvm_device_permission(vm_xml, lv, file_guard, run_virtdoctor):
    name = "vdtest-diag-kvm"
    file_guard("/dev/kvm")
    file_guard("/etc/udev/rules.d/65-kvm.rules")

    def body():
        lv.define(vm_xml(name, virt_type="kvm"))
        os.chmod("/dev/kvm", 0o600)
        err = lv.start_error(name)
        # QEMU's own text, or libvirt's when its probe of /dev/kvm (re-run on a ctime change) saw it first
        assert ("Could not access KVM kernel module: Permission denied" in err
                or "does not support virt type 'kvm'" in err), err

        rc, doc = diagnose(run_virtdoctor, name)
        assert rc == 2
        assert doc["start"]["attempted"] and not doc["start"]["started"]
        cause = first_cause(doc, "kvm-device-permission")
        assert cause["confirmed"], (doc["start"], cause)  # the message and the check agree
        assert cause["fix"]["command"] == "virtdoctor fix --only kvm-device-permission"
        fixed_by = apply_printed_fix(run_virtdoctor, cause)
        assert os.stat("/dev/kvm").st_mode & 0o777 == 0o660
        proof = lv.prove(name)
        assert proof.virt_type == "kvm"
        report(name, doc, cause, fixed_by)

    scenario(body)


# --------------------------------------------------------------------------- emulator

def test_qemu_emulator_missing(vm_xml, lv, file_guard, run_virtdoctor):
    name = "vdtest-diag-emu"
    # RHEL's /usr/libexec/qemu-kvm, in a folder of this test's own: other live tests may
    # create and remove /usr/libexec/qemu-kvm itself at the same time
    folder = "/usr/libexec/vdtest-diag"
    old = f"{folder}/qemu-kvm"
    guard = file_guard(folder)
    assert not guard.existed, f"{folder} exists on this host: the test would remove it"

    def body():
        os.makedirs(folder, exist_ok=True)
        # libvirt refuses to define a domain whose emulator is absent: define it while the
        # old path exists, then take the path away, as after moving the XML to a Debian host
        os.symlink(vmhelpers.EMULATOR, old)
        try:
            lv.define(vm_xml(name, virt_type="qemu").replace(vmhelpers.EMULATOR, old))
        finally:
            os.unlink(old)
        err = lv.start_error(name)
        assert err == f"Cannot check QEMU binary {old}: No such file or directory"

        rc, doc = diagnose(run_virtdoctor, name)
        assert rc == 2
        assert doc["start"]["error"] == err
        cause = first_cause(doc, "qemu-emulator-missing")
        assert cause["evidence"]["message"]["source"] == "start"
        fixed_by = apply_printed_fix(run_virtdoctor, cause)
        if fixed_by is None:  # message only: the manual step (what the printed virt-xml command does)
            lv.define(lv.xml(name).replace(f"<emulator>{old}</emulator>",
                                           f"<emulator>{vmhelpers.EMULATOR}</emulator>"), fresh=False)
            fixed_by = "manual: <emulator> pointed at " + vmhelpers.EMULATOR
        else:
            assert "--unsafe" in fixed_by  # a guest-visible change
        assert f"<emulator>{old}</emulator>" not in lv.xml(name)
        lv.prove(name)
        report(name, doc, cause, fixed_by)

    scenario(body)


# --------------------------------------------------------------------------- disk

def test_disk_source_missing(vm_xml, lv, run_virtdoctor):
    name = "vdtest-diag-disk"
    image = vmhelpers.IMAGES_DIR / f"{name}.qcow2"

    def body():
        lv.define(vm_xml(name, disk_mib=16))
        image.unlink(missing_ok=True)  # (a sweep of another session may have done it)
        err = lv.start_error(name)
        assert re.fullmatch(rf"Cannot access storage file '{re.escape(str(image))}'"
                            r"(?: \(as uid:\d+, gid:\d+\))?: No such file or directory", err), err

        rc, doc = diagnose(run_virtdoctor, name)
        assert rc == 2
        cause = first_cause(doc, "disk-source-missing")
        fixed_by = apply_printed_fix(run_virtdoctor, cause)
        if fixed_by is None:  # the fix is manual: its first option is to restore the image
            assert "restore" in cause["fix"]["summary"].lower(), cause["fix"]
            vmhelpers.create_disk(name, 16)
            fixed_by = f"manual: restored {image}"
        lv.prove(name)
        report(name, doc, cause, fixed_by)

    try:
        scenario(body)
    finally:
        image.unlink(missing_ok=True)


# --------------------------------------------------------------------------- network

NET = "vdtest-diag-net"
NET_XML = f"""<network>
  <name>{NET}</name>
  <bridge name='vdtest-dbr0' stp='off'/>
</network>
"""


def _drop_network(conn):
    import libvirt

    try:
        net = conn.networkLookupByName(NET)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
            return
        raise
    if net.isActive():
        net.destroy()
    net.undefine()


def test_network_inactive(vm_xml, lv, run_virtdoctor):
    name = "vdtest-diag-net"

    def body():
        lv.call(_drop_network)
        lv.call(lambda c: c.networkDefineXML(NET_XML).name())
        lv.define(vm_xml(name, network=NET))
        assert not lv.call(lambda c: c.networkLookupByName(NET).isActive())
        err = lv.start_error(name)
        assert err == f"Requested operation is not valid: network '{NET}' is not active"

        rc, doc = diagnose(run_virtdoctor, name)
        lv.call(lambda c: c.networkLookupByName(NET).name())  # Vanished when a sweep took it
        assert rc == 2
        cause = first_cause(doc, "default-network-inactive")
        fixed_by = apply_printed_fix(run_virtdoctor, cause)
        if fixed_by is None:  # the printed manual step: net-start (and autostart) the network
            fix = cause["fix"]
            assert (any(c.startswith("virsh net-start") for c in fix["commands"])
                    or fix["summary"].startswith("Start")), fix
            lv.call(lambda c: c.networkLookupByName(NET).create())
            fixed_by = f"manual: virsh net-start {NET}"
        assert lv.call(lambda c: c.networkLookupByName(NET).isActive())
        lv.prove(name)
        report(name, doc, cause, fixed_by)

    try:
        scenario(body)
    finally:
        lv.call(_drop_network)


# --------------------------------------------------------------------------- UEFI firmware

DESCRIPTOR = "/usr/share/qemu/firmware/60-edk2-x86_64.json"  # OVMF without secure boot


def _reinstall_ovmf() -> str:
    """Install the firmware package again (the fix: the package's files are gone)."""
    debs = sorted(glob.glob("/var/cache/apt/archives/ovmf_*.deb"))
    argv = ["dpkg", "--install", debs[-1]] if debs else ["apt-get", "install", "-y", "--reinstall", "ovmf"]
    for _ in range(30):  # another apt/dpkg run may hold the lock for a moment
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if proc.returncode == 0 or "lock" not in (proc.stderr + proc.stdout):
            break
        time.sleep(2)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr}"
    return " ".join(argv)


def test_uefi_firmware_missing(vm_xml, lv, file_guard, run_virtdoctor):
    name = "vdtest-diag-efi"
    assert os.path.exists(DESCRIPTOR), f"{DESCRIPTOR} is not installed (package ovmf)"
    file_guard(DESCRIPTOR)

    def body():
        # OVMF under KVM fails on this nested host (emulation failure): TCG
        lv.define(vm_xml(name, virt_type="qemu", machine="q35", firmware="efi"))
        os.unlink(DESCRIPTOR)  # OVMF's plain descriptor is gone, as when the package is half removed
        try:
            err = lv.start_error(name)
            assert err == "operation failed: Unable to find any firmware to satisfy 'efi'", err
            rc, doc = diagnose(run_virtdoctor, name)
            assert rc == 2
            cause = first_cause(doc, "uefi-firmware-missing")
            fixed_by = apply_printed_fix(run_virtdoctor, cause)
            if fixed_by is None:
                fix_text = (cause["fix"]["summary"] + " " + " ".join(cause["fix"]["commands"])).lower()
                assert "ovmf" in fix_text or "firmware" in fix_text, cause["fix"]
                fixed_by = "manual: " + _reinstall_ovmf()
        finally:
            if not os.path.exists(DESCRIPTOR):  # keep the window without OVMF short for others
                _reinstall_ovmf()
        assert os.path.exists(DESCRIPTOR)
        lv.prove(name, timeout=120)
        report(name, doc, cause, fixed_by)

    scenario(body)


# --------------------------------------------------------------------------- secure boot / SMM

def _secure_boot(xml: str, on: bool) -> str:
    a, b = ("no", "yes") if on else ("yes", "no")
    for feature in ("secure-boot", "enrolled-keys"):
        xml = xml.replace(f"enabled='{a}' name='{feature}'", f"enabled='{b}' name='{feature}'")
    return xml


@pytest.mark.needs_kvm
def test_secure_boot_requires_smm(vm_xml, lv, run_virtdoctor):
    name = "vdtest-diag-smm"

    def body():
        xml = _secure_boot(vm_xml(name, virt_type="kvm", machine="q35", firmware="efi"), on=True)
        assert "<feature enabled='yes' name='secure-boot'/>" in xml
        lv.define(xml)
        err = lv.start_error(name)
        if "System Management Mode not supported by this hypervisor." not in err:
            pytest.fail(f"this host's KVM seems to offer SMM; the test needs one without: {err}")
        assert err.startswith(("internal error: qemu unexpectedly closed the monitor:",
                               "internal error: process exited while connecting to monitor:")), err

        rc, doc = diagnose(run_virtdoctor, name)
        assert rc == 2
        cause = first_cause(doc, "secure-boot-requires-smm")
        fixed_by = apply_printed_fix(run_virtdoctor, cause)
        if fixed_by is None:  # the manual fix for a host without SMM: a firmware without secure boot
            assert "without secure boot" in cause["fix"]["summary"], cause["fix"]
            lv.define(_secure_boot(lv.xml(name), on=False), fresh=False)
            fixed_by = "manual: secure boot off in <os><firmware>"

        # The SMM refusal is gone: libvirt starts QEMU under KVM. (OVMF itself then stops on
        # this nested host's KVM emulation failure, a host limit that hits every OVMF guest
        # here, so the fixed guest is proven on TCG below.)
        def start_under_kvm(conn):
            dom = conn.lookupByName(name)
            dom.create()
            try:
                pid = int((vmhelpers.QEMU_RUN_DIR / f"{name}.pid").read_text().strip())
                os.kill(pid, 0)
                log = (vmhelpers.QEMU_LOG_DIR / f"{name}.log").read_text()
                last = log[log.rindex("starting up libvirt version"):]
                assert "System Management Mode not supported" not in last
                assert "-accel kvm" in last
            finally:
                if dom.isActive():
                    dom.destroy()

        lv.call(start_under_kvm)
        lv.define(re.sub(r"<domain type='kvm'", "<domain type='qemu'", lv.xml(name), count=1), fresh=False)
        lv.prove(name, timeout=120)
        report(name, doc, cause, fixed_by)

    scenario(body)
