"""Live: catalogue part 2 (issue 11) on the real daemon. Each test breaks a domain (or the host)
the way the catalogue says, shows libvirt's/QEMU's real text, runs virtdoctor (diagnose --start
ranks the slug first for start failures), applies the fix virtdoctor plans (`fix --yes [--unsafe]
--only SLUG`) and proves it by starting the VM. Guests without an OS are the vmhelpers tiny
guests; where the guest's own behaviour matters (agent, panic) tests/live/tinyguest.py boots
Debian's kernel."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import libvirt
import pytest

import tinyguest
import vmhelpers
from test_diagnose_live import apply_printed_fix, diagnose, first_cause


def vd(run_virtdoctor, *args):
    rc, out, err = run_virtdoctor(*args)
    print(f"$ virtdoctor {' '.join(args)} -> {rc}\n{err}", file=sys.stderr)
    return rc, out, err


def finding(run_virtdoctor, slug, name=None):
    args = ["--format", "json", "check", "--only", slug] + (["--domain", name] if name else [])
    rc, out, err = vd(run_virtdoctor, *args)
    doc = json.loads(out)
    subject = f"domain:{name}" if name else "host"
    got = [f for f in doc["findings"] if f["id"] == slug and f["subject"] == subject]
    assert got, (out, err)
    return got[0]


def start_error(dom) -> str:
    with pytest.raises(libvirt.libvirtError) as exc:
        dom.create()
    print(f"start error: {exc.value}", file=sys.stderr)
    return str(exc.value)


def diagnose_fix_start(run_virtdoctor, conn, name, slug, text):
    """diagnose --start ranks `slug` first with libvirt's `text` as evidence, its printed fix is
    applied, and the domain then starts and runs."""
    rc, doc = diagnose(run_virtdoctor, name)
    assert text in (doc["start"].get("error") or ""), doc["start"]
    cause = first_cause(doc, slug)
    cmd = apply_printed_fix(run_virtdoctor, cause)
    assert cmd, cause
    assert finding(run_virtdoctor, slug, name)["status"] == "pass"
    proof = vmhelpers.start_and_prove(conn.lookupByName(name))
    assert proof.cpu_time_ns > 0
    return cause


# -- CPU and machine type --------------------------------------------------------------------------
def test_cpu_model_unknown(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-cpumodel"
    xml = vm_xml(name, virt_type="qemu").replace(
        "  <on_poweroff>", "  <cpu mode='custom' match='exact'><model fallback='forbid'>NoSuchCPU</model></cpu>\n"
                           "  <on_poweroff>")
    dom = define_vm(xml)
    assert "Unknown CPU model NoSuchCPU" in start_error(dom)
    cause = diagnose_fix_start(run_virtdoctor, libvirt_conn, name, "cpu-model-unknown", "Unknown CPU model NoSuchCPU")
    assert cause["confirmed"]


def test_cpu_incompatible_host(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-cpuincompat"
    xml = vm_xml(name, virt_type="qemu").replace(
        "  <on_poweroff>", "  <cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model>"
                           "<feature policy='require' name='avx512f'/></cpu>\n  <on_poweroff>")
    dom = define_vm(xml)
    text = "the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f"
    assert text in start_error(dom)
    f = finding(run_virtdoctor, "cpu-incompatible-host", name)
    assert f["status"] == "fail" and f["evidence"]["missing"] == ["avx512f"]
    diagnose_fix_start(run_virtdoctor, libvirt_conn, name, "cpu-incompatible-host", text)
    root = libvirt_conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "avx512f" not in root and "qemu64" in root


def test_machine_type_unsupported(libvirt_conn, vm_xml, stored_domain, run_virtdoctor):
    name = "vdtest-p2-machine"
    xml = vm_xml(name, machine="q35").replace("machine='q35'", "machine='pc-q35-rhel9.2.0'")
    with pytest.raises(libvirt.libvirtError) as exc:
        libvirt_conn.defineXML(xml)
    text = "Emulator '/usr/bin/qemu-system-x86_64' does not support machine type 'pc-q35-rhel9.2.0'"
    assert text in str(exc.value)
    stored_domain(name, xml)  # as a config brought from a RHEL host and loaded by the daemon
    cause = diagnose_fix_start(run_virtdoctor, libvirt_conn, name, "machine-type-unsupported", text)
    assert "pc-q35-7.2" in libvirt_conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert cause["confirmed"]


def test_cpu_topology_mismatch(libvirt_conn, vm_xml, stored_domain, run_virtdoctor):
    name = "vdtest-p2-topology"
    xml = vm_xml(name).replace("<vcpu>1</vcpu>", "<vcpu>4</vcpu>").replace(
        "  <on_poweroff>", "  <cpu><topology sockets='1' cores='2' threads='1'/></cpu>\n  <on_poweroff>")
    with pytest.raises(libvirt.libvirtError) as exc:
        libvirt_conn.defineXML(xml)
    assert "CPU topology doesn't match maximum vcpu count" in str(exc.value)
    stored_domain(name, xml)
    f = finding(run_virtdoctor, "cpu-topology-mismatch", name)
    assert f["status"] == "fail" and f["fix"]["auto"] == "unsafe"
    rc, out, err = vd(run_virtdoctor, "--format", "json", "fix", "--yes", "--unsafe", "--only",
                      "cpu-topology-mismatch", "--domain", name)
    assert rc == 0, (out, err)
    assert "cores='4'" in libvirt_conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    vmhelpers.start_and_prove(libvirt_conn.lookupByName(name))


# -- security drivers ------------------------------------------------------------------------------
def test_seclabel_from_another_host(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-seclabel"
    xml = vm_xml(name).replace("</devices>\n", "</devices>\n  <seclabel type='dynamic' model='apparmor' relabel='yes'/>\n")
    dom = define_vm(xml)
    text = "Security driver model 'apparmor' is not available"
    assert text in start_error(dom)
    f = finding(run_virtdoctor, "seclabel-model-unavailable", name)
    assert f["status"] == "fail" and f["fix"]["auto"] == "safe"
    cause = diagnose_fix_start(run_virtdoctor, libvirt_conn, name, "seclabel-model-unavailable", text)
    assert cause["confirmed"]


def test_security_driver_this_kernel_lacks(tmp_path, run_virtdoctor):
    """The embedded QEMU driver reads ROOT/etc/qemu.conf: apparmor on a kernel without it."""
    root = tmp_path / "embed"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "qemu.conf").write_text('security_driver = "apparmor"\n')
    uri = f"qemu:///embed?root={root}"
    cp = subprocess.run(["virsh", "-c", uri, "list"], capture_output=True, text=True, timeout=60,
                        env={**os.environ, "LIBVIRT_LOG_OUTPUTS": "1:stderr"})
    print(f"virsh -c {uri} list -> {cp.returncode}\n{cp.stderr}", file=sys.stderr)
    assert cp.returncode != 0
    assert "unsupported configuration: Security driver apparmor not enabled" in cp.stderr
    assert "error: internal error: Failed to initialize security drivers" in cp.stderr
    from virtdoctor.knowledge import builtin_dir, load
    kb = load([builtin_dir()])
    assert kb.match(cp.stderr)[0].id == "security-driver-unavailable"
    assert kb.match("error: internal error: Failed to initialize security drivers")[0].id == "security-driver-unavailable"
    # the same file as /etc/libvirt/qemu.conf of a host tree: the check names it
    host = tmp_path / "host"
    (host / "etc" / "libvirt").mkdir(parents=True)
    (host / "etc" / "libvirt" / "qemu.conf").write_text('security_driver = "apparmor"\n')
    rc, out, err = vd(run_virtdoctor, "--format", "json", "--root", str(host), "--offline", "check", "--only",
                      "security-driver-unavailable")
    [f] = [x for x in json.loads(out)["findings"] if x["id"] == "security-driver-unavailable"]
    assert f["status"] == "fail" and "not enabled in this kernel" in f["message"]


# -- memory ---------------------------------------------------------------------------------------
def test_memballoon_missing(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-balloon"
    xml = vm_xml(name, memory_mib=128).replace(
        "<memory unit='MiB'>128</memory>", "<memory unit='MiB'>128</memory>\n  <currentMemory unit='MiB'>96</currentMemory>")
    dom = define_vm(xml)
    dom.create()
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.setMemory(64 * 1024)
        print(f"setmem: {exc.value}", file=sys.stderr)
        assert "Unable to change memory of active domain without the balloon device" in str(exc.value)
    finally:
        dom.destroy()
    f = finding(run_virtdoctor, "memballoon-missing", name)
    assert f["status"] == "fail" and f["fix"]["auto"] == "unsafe"
    rc, out, err = vd(run_virtdoctor, "--format", "json", "fix", "--yes", "--unsafe", "--only", "memballoon-missing",
                      "--domain", name)
    assert rc == 0, (out, err)
    dom = libvirt_conn.lookupByName(name)
    assert "<memballoon model='virtio'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    vmhelpers.start_and_prove(dom)


def test_host_memory_insufficient(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-bigmem"
    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    total_kib = int(meminfo["MemTotal"].split()[0]) + int(meminfo["SwapTotal"].split()[0])
    big = total_kib // 1024 // 1024 * 4 + 16  # GiB, far over RAM + swap
    xml = vm_xml(name, virt_type="qemu").replace("<memory unit='MiB'>96</memory>", f"<memory unit='GiB'>{big}</memory>")
    dom = define_vm(xml)
    text = "cannot set up guest memory 'pc.ram': Cannot allocate memory"
    assert text in start_error(dom)
    rc, doc = diagnose(run_virtdoctor, name)
    cause = first_cause(doc, "host-memory-insufficient")
    assert cause["confirmed"], cause
    subprocess.run(["virsh", "-q", "-c", vmhelpers.live_uri(), "setmaxmem", name, "96M", "--config"], check=True)
    assert finding(run_virtdoctor, "host-memory-insufficient", name)["status"] == "pass"
    vmhelpers.start_and_prove(libvirt_conn.lookupByName(name))


# -- lifecycle -------------------------------------------------------------------------------------
def test_console_unavailable(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-console"
    xml = vm_xml(name)
    xml = xml.replace("    <serial type='pty'><target port='0'/></serial>\n", "").replace(
        "    <console type='pty'><target type='serial' port='0'/></console>\n", "")
    dom = define_vm(xml)
    dom.create()
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            dom.openConsole(None, libvirt_conn.newStream(0), 0)
        print(f"console: {exc.value}", file=sys.stderr)
        assert "cannot find character device <null>" in str(exc.value)
        from virtdoctor.knowledge import builtin_dir, load
        assert load([builtin_dir()]).match(str(exc.value))[0].id == "console-unavailable"
    finally:
        dom.destroy()
    f = finding(run_virtdoctor, "console-unavailable", name)
    assert f["status"] == "fail" and f["fix"]["auto"] == "unsafe"
    rc, out, err = vd(run_virtdoctor, "--format", "json", "fix", "--yes", "--unsafe", "--only", "console-unavailable",
                      "--domain", name)
    assert rc == 0, (out, err)
    dom = libvirt_conn.lookupByName(name)
    dom.create()
    try:
        stream = libvirt_conn.newStream(0)
        dom.openConsole(None, stream, 0)  # attaches now
        stream.abort()
    finally:
        dom.destroy()


def test_guest_agent_unavailable(libvirt_conn, define_vm, run_virtdoctor):
    import libvirt_qemu

    name = "vdtest-p2-agent"
    dom = define_vm(tinyguest.domain_xml(name, "start_agent", agent=True, agent_channel=False))
    f = finding(run_virtdoctor, "guest-agent-unavailable", name)
    assert f["status"] == "fail" and "not configured" in f["message"]
    dom.create()
    try:
        with pytest.raises(libvirt.libvirtError) as exc:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0)
        print(f"agent: {exc.value}", file=sys.stderr)
        assert "QEMU guest agent is not configured" in str(exc.value)
    finally:
        dom.destroy()
    rc, out, err = vd(run_virtdoctor, "--format", "json", "fix", "--yes", "--unsafe", "--only",
                      "guest-agent-unavailable", "--domain", name)
    assert rc == 0, (out, err)
    dom = libvirt_conn.lookupByName(name)
    dom.create()
    try:
        tinyguest.wait_for_serial(name, "tinyguest: agent started", 90)
        deadline = time.monotonic() + 20
        while True:
            try:
                reply = libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0)
                break
            except libvirt.libvirtError:
                assert time.monotonic() < deadline
                time.sleep(0.5)
        assert json.loads(reply) == {"return": {}}
        assert finding(run_virtdoctor, "guest-agent-unavailable", name)["status"] == "pass"
    finally:
        dom.destroy()


def test_guest_agent_not_running(libvirt_conn, define_vm, run_virtdoctor):
    import libvirt_qemu

    name = "vdtest-p2-noagent"
    dom = define_vm(tinyguest.domain_xml(name, "", agent=False, agent_channel=True))
    dom.create()
    try:
        tinyguest.wait_for_serial(name, "tinyguest: snippet done", 90)
        with pytest.raises(libvirt.libvirtError) as exc:
            libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0)
        print(f"agent: {exc.value}", file=sys.stderr)
        assert "QEMU guest agent is not connected" in str(exc.value)
        f = finding(run_virtdoctor, "guest-agent-unavailable", name)
        assert f["status"] == "fail" and "not connected" in f["message"] and f["fix"]["auto"] == "manual"
    finally:
        dom.destroy()


def test_guest_panicked(libvirt_conn, define_vm, run_virtdoctor):
    name = "vdtest-p2-panic"
    dom = define_vm(tinyguest.domain_xml(name, "echo c > /proc/sysrq-trigger", panic="isa", on_crash="preserve"))
    dom.create()
    try:
        tinyguest.wait_for_serial(name, "sysrq triggered crash", 90)
        deadline = time.monotonic() + 10
        while dom.state()[0] != libvirt.VIR_DOMAIN_CRASHED and time.monotonic() < deadline:
            time.sleep(0.2)
        assert dom.state() == [libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED]
        state = subprocess.run(["virsh", "-c", vmhelpers.live_uri(), "domstate", name, "--reason"],
                               capture_output=True, text=True).stdout.strip()
        print(f"domstate: {state}", file=sys.stderr)
        assert state == "crashed (panicked)"
        f = finding(run_virtdoctor, "guest-panicked", name)
        assert f["status"] == "fail" and "panicked" in f["message"]
        from virtdoctor.knowledge import builtin_dir, load
        assert load([builtin_dir()]).match(state)[0].id == "guest-panicked"
    finally:
        dom.destroy()


def test_state_change_lock(libvirt_conn, vm_xml, define_vm, run_virtdoctor):
    name = "vdtest-p2-stopped"
    dom = define_vm(vm_xml(name))
    dom.create()
    pid = int(open(f"/run/libvirt/qemu/{name}.pid").read().strip())
    os.kill(pid, 19)  # SIGSTOP: QEMU stops answering its monitor
    try:
        f = finding(run_virtdoctor, "state-change-lock-timeout", name)
        assert f["status"] == "fail" and "stopped" in f["message"], f
    finally:
        os.kill(pid, 18)  # SIGCONT
        dom.destroy()


# -- hugepages-unavailable ---------------------------------------------------------------------------
HUGE_NR = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def _hugetlbfs_mounts() -> list[str]:
    return [line.split()[1] for line in open("/proc/mounts") if line.split()[2:3] == ["hugetlbfs"]]


def test_hugepages_unavailable(libvirt_conn, vm_xml, define_vm, run_virtdoctor, daemon_guard):
    """No systemd here, so nothing mounts hugetlbfs: libvirt refuses <hugepages/>. The fix
    mounts it on /dev/hugepages and reserves the pages; libvirt reads the mounts when it starts,
    so the daemon is restarted before the proof start. The host is put back afterwards."""
    if _hugetlbfs_mounts():
        pytest.fail(f"this host already mounts hugetlbfs ({_hugetlbfs_mounts()}); the test needs the bare host")
    name = "vdtest-p2-huge"
    nr_before = open(HUGE_NR).read().strip()
    xml = vm_xml(name, memory_mib=64).replace(
        "  <os>", "  <memoryBacking><hugepages/></memoryBacking>\n  <os>", 1)
    dom = define_vm(xml)
    text = "hugetlbfs filesystem is not mounted or disabled by administrator config"
    try:
        assert text in start_error(dom)
        rc, doc = diagnose(run_virtdoctor, name)
        cause = first_cause(doc, "hugepages-unavailable")
        assert cause["confirmed"] and cause["fix"]["auto"] == "safe", cause
        assert apply_printed_fix(run_virtdoctor, cause)
        assert "/dev/hugepages" in _hugetlbfs_mounts()
        assert int(open(HUGE_NR).read()) >= 32
        assert finding(run_virtdoctor, "hugepages-unavailable", name)["status"] == "pass"
        daemon_guard.stop("libvirtd")
        daemon_guard.restore()  # the daemon reads hugetlbfs mounts at start
        conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
        try:
            vmhelpers.start_and_prove(conn.lookupByName(name))
        finally:
            conn.close()
    finally:
        try:
            conn2 = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
            vmhelpers.undefine_domain(conn2, name)
            conn2.close()
        except Exception:
            pass
        for mnt in _hugetlbfs_mounts():
            subprocess.run(["umount", mnt], capture_output=True) if mnt == "/dev/hugepages" else None
        if os.path.isdir("/dev/hugepages") and "/dev/hugepages" not in _hugetlbfs_mounts():
            try:
                os.rmdir("/dev/hugepages")
            except OSError:
                pass
        with open(HUGE_NR, "w") as fh:
            fh.write(nr_before + "\n")
        # and a daemon that forgot the mount again (it keeps the list it read at start)
        daemon_guard.stop("libvirtd")
        daemon_guard.restore()
        vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30).close()


# -- dynamic-ownership-disabled ------------------------------------------------------------------------
def test_dynamic_ownership_disabled(libvirt_conn, vm_xml, define_vm, run_virtdoctor, daemon_guard, file_guard):
    """qemu.conf dynamic_ownership = 0 and a root-owned 0600 raw image: QEMU (libvirt-qemu)
    cannot open it. The check names the cause, its safe fix chowns the image, the VM starts."""
    conf = "/etc/libvirt/qemu.conf"
    guard = file_guard(conf)
    file_guard_restore = lambda _path: guard.restore()  # noqa: E731
    name = "vdtest-p2-dynown"
    image = vmhelpers.IMAGES_DIR / f"{name}.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(image), "8M"], check=True)
    os.chown(image, 0, 0)
    os.chmod(image, 0o600)
    try:
        with open(conf, "a") as fh:
            fh.write("\ndynamic_ownership = 0\n")
        daemon_guard.stop("libvirtd")
        daemon_guard.restore()
        conn = vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30)
        disk = ("    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
                f"      <source file='{image}'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n")
        dom = conn.defineXML(vm_xml(name, devices=disk))
        try:
            text = start_error(dom)
            assert f"Could not open '{image}': Permission denied" in text
            host = finding(run_virtdoctor, "dynamic-ownership-disabled")
            assert host["status"] == "fail" and host["fix"]["auto"] == "manual"
            f = finding(run_virtdoctor, "dynamic-ownership-disabled", name)
            assert f["status"] == "fail" and f["fix"]["auto"] == "safe", f
            rc, doc = diagnose(run_virtdoctor, name)
            ids = [c["id"] for c in doc["causes"]]
            print(f"causes: {[(c['id'], c['tier']) for c in doc['causes'][:4]]}", file=sys.stderr)
            assert "dynamic-ownership-disabled" in ids[:2], ids
            rc, out, err = vd(run_virtdoctor, "--format", "json", "fix", "--yes", "--only", "dynamic-ownership-disabled",
                              "--domain", name)
            assert os.stat(image).st_uid != 0, (out, err)
            vmhelpers.start_and_prove(conn.lookupByName(name))
        finally:
            vmhelpers.undefine_domain(conn, name)
            conn.close()
    finally:
        image.unlink(missing_ok=True)
        file_guard_restore(conf)
        daemon_guard.stop("libvirtd")
        daemon_guard.restore()  # reads the restored qemu.conf
