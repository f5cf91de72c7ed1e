"""CPU, machine-type, memory and lifecycle checks (checks/cpu.py, memory.py, lifecycle.py) on fake
roots with this host's recorded capabilities/domcapabilities (tests/roots) and CPU comparisons
recorded live from virConnectCompareHypervisorCPU on this host (libvirt 9.0.0)."""
from __future__ import annotations

import pytest

from virtdoctor import domxml, engine
from virtdoctor.checks import cpu, lifecycle, memory
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Status

from test_guest import CAPS_X86, DOMCAPS_Q35  # recorded on this host

UUID = "5b0bd1a5-7e0c-4c43-9a43-0f2f6a3c1e01"
# virConnectCompareHypervisorCPU on this host (qemu64 + require avx512f, virttype qemu), recorded live
AVX512_MSG = "the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f"


def xml(*, machine="pc-q35-7.2", vcpu="2", cpu_xml="", devices="", memory_xml="<memory unit='MiB'>128</memory>",
        extra="", on_crash=""):
    return (f"<domain type='kvm'><name>web</name><uuid>{UUID}</uuid>{memory_xml}<vcpu>{vcpu}</vcpu>{extra}"
            f"<os><type arch='x86_64' machine='{machine}'>hvm</type></os>{cpu_xml}{on_crash}"
            f"<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>{devices}</devices></domain>")


def facts(root, *, comparisons=None, offline=False, uri="qemu:///system", **kw):
    if offline:
        return HostFacts(root=str(root), uri=uri, offline=True, **kw)
    lv = RecordedLibvirt(capabilities=CAPS_X86, domcapabilities=DOMCAPS_Q35)
    if comparisons is not None:
        lv.cpu_comparisons = comparisons
    return HostFacts(root=str(root), uri=uri, libvirt_facts=lv, **kw)


def one(chk, f, text=None, **info):
    dom = domxml.from_info(DomainInfo(name="web", uuid=UUID, xml=text, **info)) if text else None
    [finding] = engine.run_check(chk, f, dom)
    return finding


# -- cpu-model-unknown ---------------------------------------------------------------------------
def test_cpu_model_unknown(fake_root):
    bad = xml(cpu_xml="<cpu mode='custom' match='exact'><model fallback='forbid'>NoSuchCPU</model><topology sockets='1' cores='2' threads='1'/></cpu>")
    f = one(cpu.cpu_model_unknown, facts(fake_root), bad)
    assert f.status is Status.FAIL and "NoSuchCPU" in f.message and f.fix.auto == "unsafe"
    assert "host-model" in f.fix.summary
    assert one(cpu.cpu_model_unknown, facts(fake_root),
               xml(cpu_xml="<cpu mode='custom'><model>qemu64</model></cpu>")).status is Status.PASS
    assert one(cpu.cpu_model_unknown, facts(fake_root), xml(cpu_xml="<cpu mode='host-passthrough'/>")).status is Status.PASS


def test_cpu_model_unknown_edit_keeps_topology(fake_root):
    from virtdoctor.domxml import edit_copy
    bad = xml(cpu_xml="<cpu mode='custom' match='exact'><model fallback='forbid'>NoSuchCPU</model><topology sockets='1' cores='2' threads='1'/></cpu>")
    dom = domxml.from_info(DomainInfo(name="web", uuid=UUID, xml=bad))
    tree, _ = edit_copy(dom, cpu._to_host_model())
    c = tree.find("cpu")
    assert c.get("mode") == "host-model" and c.find("model") is None and c.find("topology") is not None


# -- cpu-incompatible-host ----------------------------------------------------------------------
def test_cpu_incompatible_host_drops_the_required_feature(fake_root):
    text = xml(cpu_xml="<cpu mode='custom' match='exact' check='partial'><model fallback='forbid'>qemu64</model>"
                       "<feature policy='require' name='avx512f'/></cpu>")
    f = one(cpu.cpu_incompatible_host, facts(fake_root, comparisons={"web": (False, AVX512_MSG)}), text)
    assert f.status is Status.FAIL and f.evidence["missing"] == ["avx512f"] and f.fix.auto == "unsafe"
    assert "avx512f" in f.fix.summary
    ok = one(cpu.cpu_incompatible_host, facts(fake_root, comparisons={"web": (True, "")}), text)
    assert ok.status is Status.PASS


def test_cpu_incompatible_model_goes_host_model(fake_root):
    msg = "the CPU is incompatible with host CPU: Host CPU does not provide required features: pni, svm"
    text = xml(cpu_xml="<cpu mode='custom' match='exact'><model fallback='forbid'>qemu64</model></cpu>")
    f = one(cpu.cpu_incompatible_host, facts(fake_root, comparisons={"web": (False, msg)}), text)
    assert f.status is Status.FAIL and "host-model" in f.fix.summary


def test_cpu_incompatible_skips_unknown_model_and_other_modes(fake_root):
    f = one(cpu.cpu_incompatible_host, facts(fake_root, comparisons={}),
            xml(cpu_xml="<cpu mode='custom'><model>NoSuchCPU</model></cpu>"))
    assert f.status is Status.SKIP and "cpu-model-unknown" in f.message
    assert one(cpu.cpu_incompatible_host, facts(fake_root), xml()).status is Status.PASS


# -- cpu-topology-mismatch ------------------------------------------------------------------------
@pytest.mark.parametrize("vcpu, topo, status, cores", [
    ("4", "sockets='1' cores='2' threads='1'", Status.FAIL, "4"),
    ("4", "sockets='1' cores='4' threads='1'", Status.PASS, None),
    ("6", "sockets='4' cores='1' threads='1'", Status.FAIL, "1"),
    ("8", "sockets='2' dies='1' cores='2' threads='2'", Status.PASS, None),
])
def test_cpu_topology(fake_root, vcpu, topo, status, cores):
    from virtdoctor.domxml import edit_copy
    text = xml(vcpu=vcpu, cpu_xml=f"<cpu><topology {topo}/></cpu>")
    f = one(cpu.cpu_topology_mismatch, facts(fake_root, offline=True), text)
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert f.fix.auto == "unsafe" and "doesn't match maximum vcpu count" in f.message
        # the edit's topology multiplies out
        dom = domxml.from_info(DomainInfo(name="web", uuid=UUID, xml=text))
        fail = cpu.cpu_topology_mismatch(facts(fake_root, offline=True), dom)
        t = fail.plan.actions[0].new_xml
        assert f"cores='{cores}'" in t


# -- nested-virt-disabled --------------------------------------------------------------------------
CPUINFO_L1 = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 hypervisor lahf_lm\n"
CPUINFO_VMX = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae sse sse2 vmx lahf_lm\n"


def test_nested_virt_host(fake_root):
    fake_root.write("/proc/cpuinfo", CPUINFO_L1)
    f = one(cpu.nested_virt_disabled_host, facts(fake_root, offline=True))
    assert f.status is Status.FAIL and "hides VT-x/AMD-V" in f.message and f.fix.auto == "manual"
    fake_root.write("/proc/cpuinfo", CPUINFO_VMX)
    fake_root.write("/sys/module/kvm_intel/parameters/nested", "N\n")
    f = one(cpu.nested_virt_disabled_host, facts(fake_root, offline=True))
    assert f.status is Status.FAIL and "nested=N" in f.message
    assert "modprobe kvm_intel" in f.fix.commands
    fake_root.write("/sys/module/kvm_intel/parameters/nested", "Y\n")
    assert one(cpu.nested_virt_disabled_host, facts(fake_root, offline=True)).status is Status.PASS


def test_nested_virt_domain(fake_root):
    fake_root.write("/sys/module/kvm_intel/parameters/nested", "N\n")
    text = xml(cpu_xml="<cpu mode='custom'><model>qemu64</model><feature policy='require' name='vmx'/></cpu>")
    assert one(cpu.nested_virt_disabled_domain, facts(fake_root, offline=True), text).status is Status.FAIL
    assert one(cpu.nested_virt_disabled_domain, facts(fake_root, offline=True), xml()).status is Status.PASS


# -- machine-type-unsupported -------------------------------------------------------------------------
@pytest.mark.parametrize("machine, new", [("pc-q35-rhel9.2.0", "pc-q35-7.2"), ("pc-q35-8.2", "pc-q35-7.2"),
                                          ("pc-i440fx-9.0", "pc-i440fx-7.2")])
def test_machine_type_unsupported(fake_root, machine, new):
    f = one(cpu.machine_type_unsupported, facts(fake_root), xml(machine=machine))
    assert f.status is Status.FAIL and f.evidence["replacement"] == new and f.fix.auto == "unsafe"


def test_machine_type_known(fake_root):
    for m in ("pc", "q35", "pc-q35-5.2", "pc-i440fx-7.2"):
        assert one(cpu.machine_type_unsupported, facts(fake_root), xml(machine=m)).status is Status.PASS


# -- hugepages-unavailable ---------------------------------------------------------------------------
def huge_host(root, *, mounted=False, total=0, free=0):
    root.write("/proc/meminfo", "MemTotal: 24683664 kB\nMemAvailable: 23432568 kB\nHugepagesize: 2048 kB\n")
    root.write("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", f"{total}\n")
    root.write("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", f"{free}\n")
    root.write("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "0\n")
    root.write("/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages", "0\n")
    mounts = "proc /proc proc rw 0 0\n"
    if mounted:
        mounts += "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
    root.write("/proc/mounts", mounts)


HUGE = "<memoryBacking><hugepages/></memoryBacking>"


def test_hugepages_not_mounted(fake_root):
    huge_host(fake_root)
    f = one(memory.hugepages_unavailable, facts(fake_root, offline=True), xml(extra=HUGE))
    assert f.status is Status.FAIL and "no hugetlbfs mount for 2048 KiB" in f.message and f.fix.auto == "safe"
    assert "mount -t hugetlbfs -o pagesize=2048K hugetlbfs /dev/hugepages" in f.fix.commands
    assert any("nr_hugepages" in c and "echo 64" in c for c in f.fix.commands)  # 128 MiB / 2 MiB


def test_hugepages_enough(fake_root):
    huge_host(fake_root, mounted=True, total=100, free=80)
    assert one(memory.hugepages_unavailable, facts(fake_root, offline=True), xml(extra=HUGE)).status is Status.PASS
    huge_host(fake_root, mounted=True, total=100, free=10)
    f = one(memory.hugepages_unavailable, facts(fake_root, offline=True), xml(extra=HUGE))
    assert f.status is Status.FAIL and "10 of 100" in f.message
    one_g = "<memoryBacking><hugepages><page size='1' unit='G'/></hugepages></memoryBacking>"
    f = one(memory.hugepages_unavailable, facts(fake_root, offline=True), xml(extra=one_g))
    assert f.status is Status.FAIL and "1048576 KiB" in f.message


# -- memlock-limit -----------------------------------------------------------------------------------
def test_memlock_hard_limit_below_ram(fake_root):
    text = xml(extra="<memtune><hard_limit unit='MiB'>64</hard_limit></memtune><memoryBacking><locked/></memoryBacking>")
    f = one(memory.memlock_limit, facts(fake_root, offline=True), text)
    assert f.status is Status.FAIL and "hard_limit" in f.message
    assert one(memory.memlock_limit, facts(fake_root, offline=True), xml()).status is Status.PASS


def test_memlock_session(fake_root):
    from virtdoctor.facts.memory import limits_memlock
    text = ("Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max locked memory         8388608              8388608              bytes     \n")
    assert limits_memlock(text) == (True, 8388608)
    assert limits_memlock("Max locked memory         unlimited            unlimited            bytes\n") == (True, None)
    # the session check judges the caller's limit (facts.memory.memlock["self"]): live only, see
    # tests/live; on a fake root the privileged URI passes
    f = one(memory.memlock_limit, facts(fake_root, offline=True), xml(extra="<memoryBacking><locked/></memoryBacking>"))
    assert f.status is Status.PASS and "privileged daemon" in f.message


# -- host-memory-insufficient -------------------------------------------------------------------------
@pytest.mark.parametrize("mode, mem, status", [
    ("0", "<memory unit='GiB'>400</memory>", Status.FAIL),
    ("0", "<memory unit='GiB'>23</memory>", Status.FAIL),  # over MemAvailable: Warn
    ("0", "<memory unit='MiB'>128</memory>", Status.PASS),
    ("2", "<memory unit='GiB'>12</memory>", Status.FAIL),
    ("1", "<memory unit='GiB'>400</memory>", Status.FAIL),  # always overcommit: Warn only
])
def test_host_memory(fake_root, mode, mem, status):
    fake_root.write("/proc/meminfo", "MemTotal: 24683664 kB\nMemFree: 2000000 kB\nMemAvailable: 23432568 kB\n"
                                     "SwapTotal: 0 kB\nCommitLimit: 12341832 kB\nCommitted_AS: 1246216 kB\n")
    fake_root.write("/proc/sys/vm/overcommit_memory", mode + "\n")
    f = one(memory.host_memory_insufficient_domain, facts(fake_root, offline=True), xml(memory_xml=mem))
    assert f.status is status, f.message


# -- memballoon-missing -------------------------------------------------------------------------------
def test_memballoon(fake_root):
    text = xml(memory_xml="<memory unit='MiB'>256</memory><currentMemory unit='MiB'>128</currentMemory>",
               devices="<memballoon model='none'/>")
    f = one(memballoon := memory.memballoon_missing, facts(fake_root, offline=True), text)
    assert f.status is Status.FAIL and f.fix.auto == "unsafe" and memballoon.severity.value == "warning"
    assert one(memory.memballoon_missing, facts(fake_root, offline=True),
               xml(devices="<memballoon model='none'/>")).status is Status.PASS
    assert one(memory.memballoon_missing, facts(fake_root, offline=True),
               xml(devices="<memballoon model='virtio'/>")).status is Status.PASS


# -- lifecycle ----------------------------------------------------------------------------------------
def test_guest_panicked(fake_root):
    text = xml(devices="<panic model='isa'/>", on_crash="<on_crash>preserve</on_crash>")
    f = one(lifecycle.guest_panicked, facts(fake_root, offline=True), text, state=6, reason=1, active=True)
    assert f.status is Status.FAIL and "panicked" in f.message and f.fix.auto == "manual"
    f = one(lifecycle.guest_panicked, facts(fake_root, offline=True), text, state=5, reason=3)
    assert f.status is Status.FAIL and "shut off (crashed)" in f.message
    f = one(lifecycle.guest_panicked, facts(fake_root, offline=True), xml(), state=1, reason=1, active=True)
    assert f.status is Status.FAIL and f.severity.value == "warning" and "no <panic>" in f.message
    assert one(lifecycle.guest_panicked, facts(fake_root, offline=True), text, state=1, reason=1,
               active=True).status is Status.PASS


def test_guest_agent(fake_root):
    f = one(lifecycle.guest_agent_unavailable, facts(fake_root, offline=True), xml())
    assert f.status is Status.FAIL and "not configured" in f.message and f.fix.auto == "unsafe"
    ch = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
    live = xml(devices=ch.replace("name='org", "state='disconnected' name='org"))
    f = one(lifecycle.guest_agent_unavailable, facts(fake_root, offline=True), xml(devices=ch),
            state=1, reason=1, active=True, live_xml=live)
    assert f.status is Status.FAIL and "not connected" in f.message and f.fix.auto == "manual"
    live = xml(devices=ch.replace("name='org", "state='connected' name='org"))
    assert one(lifecycle.guest_agent_unavailable, facts(fake_root, offline=True), xml(devices=ch),
               state=1, reason=1, active=True, live_xml=live).status is Status.PASS


def test_console(fake_root):
    f = one(lifecycle.console_unavailable, facts(fake_root, offline=True), xml())
    assert f.status is Status.FAIL and "<null>" in f.message and f.fix.auto == "unsafe"
    f = one(lifecycle.console_unavailable, facts(fake_root, offline=True),
            xml(devices="<serial type='file'><source path='/tmp/s.log'/></serial>"))
    assert f.status is Status.FAIL and "not using a PTY" in f.message
    assert one(lifecycle.console_unavailable, facts(fake_root, offline=True),
               xml(devices="<serial type='pty'/><console type='pty'/>")).status is Status.PASS


def test_state_change_lock(fake_root):
    from virtdoctor.facts import Proc
    procs = [Proc(pid=4242, name="qemu-system-x86_64", cmdline=("/usr/bin/qemu-system-x86_64", "-name",
                                                                 "guest=web,debug-threads=on"))]
    fake_root.write("/proc/4242/stat", "4242 (qemu-system-x86) D 1 4242 4242 0 -1 4194560 0 0\n")
    fake_root.write("/proc/4242/wchan", "rpc_wait_bit_killable")
    f = one(lifecycle.state_change_lock_timeout, facts(fake_root, offline=True, processes_override=procs), xml(),
            state=1, reason=1, active=True)
    assert f.status is Status.FAIL and "uninterruptible" in f.message and "rpc_wait_bit_killable" in f.message
    fake_root.write("/proc/4242/stat", "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194560 0 0\n")
    assert one(lifecycle.state_change_lock_timeout, facts(fake_root, offline=True, processes_override=procs), xml(),
               state=1, reason=1, active=True).status is Status.PASS


# -- knowledge: texts seen live on this host -----------------------------------------------------------
LIVE_TEXTS = {
    "error: unsupported configuration: Emulator '/usr/bin/qemu-system-x86_64' does not support machine type 'pc-q35-rhel9.2.0'": "machine-type-unsupported",
    "error: internal error: Unknown CPU model NoSuchCPU": "cpu-model-unknown",
    "error: unsupported configuration: CPU topology doesn't match maximum vcpu count": "cpu-topology-mismatch",
    "error: the CPU is incompatible with host CPU: Host CPU does not provide required features: avx512f": "cpu-incompatible-host",
    "error: unsupported configuration: Security driver model 'apparmor' is not available": "seclabel-model-unavailable",
    "error: internal error: hugetlbfs filesystem is not mounted or disabled by administrator config": "hugepages-unavailable",
    "error: Requested operation is not valid: Unable to change memory of active domain without the balloon device and guest OS balloon driver": "memballoon-missing",
    "error: invalid argument: cannot set memory higher than max memory": "memballoon-missing",
    "error: argument unsupported: QEMU guest agent is not configured": "guest-agent-unavailable",
    "error: internal error: No memory balloon device configured, can not set the collection period": "memballoon-missing",
    "error: internal error: qemu unexpectedly closed the monitor: 2026-12-03T19:22:48.458614Z qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory": "host-memory-insufficient",
    "internal error: cannot find character device <null>": "console-unavailable",
    "operation failed: Active console session exists for this domain": "console-unavailable",
    "internal error: character device console0 is not using a PTY": "console-unavailable",
}


@pytest.mark.parametrize("text, slug", sorted(LIVE_TEXTS.items()))
def test_live_texts_map_to_their_slug(text, slug):
    from virtdoctor.knowledge import builtin_dir, load
    matches = load([builtin_dir()]).match(text)
    assert matches and matches[0].id == slug, [m.id for m in matches]
