"""Unit tests of checks/platform.py (virt-host-validate parity) on fake roots: device nodes
and their fixes, cgroup v1 / v2 / hybrid trees, IOMMU, secure guests, and roots without the
expected /proc and /sys files (containers)."""
from __future__ import annotations

import os
import stat

import pytest

from virtdoctor import engine, remedy
from virtdoctor.facts import HostFacts
from virtdoctor.facts import platform as pf
from virtdoctor.facts.kvm import KvmProbe
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.model import Auto, Severity, Status

from virtdoctor.checks import platform as plat

CPU_AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu vme svm lm\n\n"
CPU_AMD_SEV = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm sev sev_es\n\n"
CPU_INTEL = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vmx lm\n\n"
CPU_NESTED = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu hypervisor lm\n\n"
CPU_S390 = "vendor_id       : IBM/S390\nfacilities      : 0 1 2 158 159\n"

V1_MOUNTS = """tmpfs /sys/fs/cgroup tmpfs rw,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/devices cgroup rw,relatime,devices 0 0
cgroup /sys/fs/cgroup/blkio cgroup rw,relatime,blkio 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
PROC_CGROUPS = """#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t2\t1
cpu\t1\t2\t1
cpuacct\t2\t1\t1
blkio\t7\t2\t1
memory\t4\t50\t1
devices\t5\t1\t1
"""
V2_MOUNTS = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"


def make_facts(root, domains=None, libvirt=True, domcaps=None):
    lv = RecordedLibvirt(domains=domains or [], domcapabilities=domcaps) if libvirt else None
    return HostFacts(root=str(root), uri="qemu:///system", kvm=KvmProbe("/dev/kvm", True, None, 12, True),
                     libvirt_facts=lv, processes_override=[], offline=not libvirt,
                     stat_overlay=getattr(root, "stat_table", None))


def one(chk, facts):
    (f,) = engine.run_check(chk, facts)
    return f


def mknod(root, path, major, minor):
    """A character device node as stat() shows it (the fake root's stat overlay: no CAP_MKNOD needed)."""
    root.device(path, major, minor, 0o600)


def kernel(root, release="6.1.0-13-amd64", dep=(), builtin=(), modules=True):
    root.write("/proc/sys/kernel/osrelease", release + "\n")
    root.write(f"/lib/modules/{release}/modules.dep", "".join(f"{p}: \n" for p in dep))
    root.write(f"/lib/modules/{release}/modules.builtin", "".join(f"{p}\n" for p in builtin))
    if modules:
        root.write("/proc/modules", "")


# -- vhost-net-missing / tun-missing ---------------------------------------------------------

def test_tun_present(fake_root):
    mknod(fake_root, "/dev/net/tun", 10, 200)
    fake_root.write("/sys/class/misc/tun/dev", "10:200\n")
    f = one(plat.tun_missing, make_facts(fake_root))
    assert f.status is Status.PASS and "10:200" in f.message


def test_tun_wrong_device_number(fake_root):
    mknod(fake_root, "/dev/net/tun", 10, 201)
    fake_root.write("/sys/class/misc/tun/dev", "10:200\n")
    f = one(plat.tun_missing, make_facts(fake_root))
    assert f.status is Status.FAIL and "registered 10:200" in f.message


def test_tun_regular_file_is_not_a_device(fake_root):
    fake_root.write("/dev/net/tun", "")
    f = one(plat.tun_missing, make_facts(fake_root))
    assert f.status is Status.FAIL and "not a character device" in f.message


@pytest.mark.parametrize("setup, cause, auto", [
    pytest.param(lambda r: kernel(r, dep=["kernel/drivers/vhost/vhost_net.ko"]), "module is not loaded",
                 Auto.SAFE, id="loadable"),
    pytest.param(lambda r: (kernel(r), r.write("/sys/class/misc/vhost-net/dev", "10:238\n")),
                 "driver is loaded (vhost-net is 10:238) but the device node is missing", Auto.SAFE,
                 id="loaded-node-missing"),
    pytest.param(lambda r: kernel(r, modules=False), "cannot load modules", Auto.MANUAL, id="no-module-support"),
    pytest.param(lambda r: kernel(r), "neither loaded nor installed for kernel 6.1.0-13-amd64", Auto.MANUAL,
                 id="not-installed"),
])
def test_vhost_net_missing_causes(fake_root, setup, cause, auto):
    setup(fake_root)
    f = one(plat.vhost_net_missing, make_facts(fake_root))
    assert f.status is Status.FAIL and f.severity is Severity.WARNING
    assert cause in f.message, f.message
    assert f.fix.auto is auto


def test_vhost_net_fix_modprobe_and_persist(fake_root, tmp_path):
    kernel(fake_root, dep=["kernel/drivers/vhost/vhost_net.ko.xz"])
    fake_root.write(plat.MODULES_LOAD, "# mine\ntun\n")
    facts = make_facts(fake_root)
    f = one(plat.vhost_net_missing, facts)
    p = f.plan
    assert p.commands == ["modprobe vhost_net", "echo vhost_net >> /etc/modules-load.d/virtdoctor.conf"]
    ran = []

    def runner(argv):
        ran.append(argv)
        mknod(fake_root, "/dev/vhost-net", 10, 238)  # what modprobe does, through devtmpfs

    env = remedy.Env(root=str(fake_root), run=runner)

    def recheck():
        g = one(plat.vhost_net_missing, make_facts(fake_root))
        return g.status is Status.PASS, g.message

    out = remedy.apply_plan(p, env, f.id, f.subject, recheck, str(tmp_path / "b"))
    assert out.status == "fixed", out.detail
    assert ran == [["modprobe", "vhost_net"]]
    assert fake_root.read(plat.MODULES_LOAD) == "# mine\ntun\nvhost_net\n"


def test_tun_fix_mknod_when_driver_loaded_and_rollback(fake_root, tmp_path):
    kernel(fake_root)
    fake_root.write("/sys/class/misc/tun/dev", "10:200\n")
    facts = make_facts(fake_root)
    f = one(plat.tun_missing, facts)
    p = f.plan
    assert p.auto is Auto.SAFE
    assert p.commands == ["mkdir -p -m 0755 /dev/net", "mknod -m 0666 /dev/net/tun c 10 200"]
    env = remedy.Env(root=str(fake_root), run=lambda argv: mknod(fake_root, "/dev/net/tun", 10, 200)
                     if argv[0] == "mknod" else os.unlink(fake_root.path(argv[-1])))
    out = remedy.apply_plan(p, env, f.id, f.subject, lambda: (False, "pretend"), str(tmp_path / "b"))
    assert out.status == "rolled-back"
    assert not fake_root.path("/dev/net/tun").exists()
    assert not fake_root.path("/dev/net").exists()  # the directory the fix created is gone too


def test_persist_module_twice_in_one_run(fake_root, tmp_path):
    env = remedy.Env(root=str(fake_root))
    remedy.PersistModule(plat.MODULES_LOAD, "tun").apply(env)
    remedy.PersistModule(plat.MODULES_LOAD, "vhost_net").apply(env)
    remedy.PersistModule(plat.MODULES_LOAD, "tun").apply(env)
    lines = fake_root.read(plat.MODULES_LOAD).splitlines()
    assert lines[1:] == ["tun", "vhost_net"] and lines[0].startswith("#")


# -- cgroup-controller-missing ------------------------------------------------------------------

def by_controller(findings):
    return {f.evidence["controller"]: f for f in findings}


def test_cgroup_v1_all_present(fake_root):
    fake_root.write("/proc/self/mounts", V1_MOUNTS)
    fake_root.write("/proc/cgroups", PROC_CGROUPS)
    out = by_controller(engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root)))
    assert list(out) == ["cpu", "cpuacct", "cpuset", "memory", "devices", "blkio"]
    assert all(f.status is Status.PASS for f in out.values())
    assert out["memory"].evidence["mode"] == "hybrid"
    assert "cgroup v1 at /sys/fs/cgroup/memory" in out["memory"].message


def test_cgroup_v1_memory_not_mounted(fake_root):
    fake_root.write("/proc/self/mounts", V1_MOUNTS.replace("cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n", "")
                    .replace("cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n", ""))
    fake_root.write("/proc/cgroups", PROC_CGROUPS)
    out = by_controller(engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root)))
    mem = out["memory"]
    assert mem.status is Status.FAIL and mem.severity is Severity.WARNING
    assert "not mounted" in mem.message and "<memtune>" in mem.message
    assert mem.fix.auto is Auto.MANUAL
    assert "mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory" in mem.fix.commands
    assert [c for c, f in out.items() if f.status is Status.FAIL] == ["memory"]


def test_cgroup_v1_memory_disabled_on_cmdline(fake_root):
    fake_root.write("/proc/self/mounts", V1_MOUNTS.replace("cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n", ""))
    fake_root.write("/proc/cgroups", PROC_CGROUPS.replace("memory\t4\t50\t1", "memory\t0\t1\t0"))
    mem = by_controller(engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root)))["memory"]
    assert mem.status is Status.FAIL and "switched off in the kernel" in mem.message
    assert mem.fix.commands == ()


@pytest.mark.parametrize("controllers, missing", [
    pytest.param("cpuset cpu io memory hugetlb pids rdma misc", [], id="v2-full"),
    pytest.param("cpu memory pids", ["cpuset", "blkio"], id="v2-no-cpuset-io"),
    pytest.param("cpuset io memory pids", ["cpu", "cpuacct"], id="v2-no-cpu-means-no-cpuacct"),
])
def test_cgroup_v2(fake_root, controllers, missing):
    fake_root.write("/proc/self/mounts", V2_MOUNTS)
    fake_root.write("/sys/fs/cgroup/cgroup.controllers", controllers + "\n")
    fake_root.write("/proc/cgroups", PROC_CGROUPS.replace("\t1\n", "\t1\n"))
    out = by_controller(engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root)))
    assert sorted(c for c, f in out.items() if f.status is Status.FAIL) == sorted(missing)
    assert out["devices"].status is Status.PASS and "eBPF" in out["devices"].message
    for c in missing:
        assert out[c].evidence["mode"] == "v2"
    if "blkio" in missing:
        assert "echo +io > /sys/fs/cgroup/cgroup.subtree_control" in " ".join(out["blkio"].fix.commands)


def test_cgroup_no_mount_table_skips(fake_root):
    (f,) = engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root))
    assert f.status is Status.SKIP and "/proc/self/mounts" in f.message


def test_cgroup_nothing_mounted_fails_every_controller(fake_root):
    fake_root.write("/proc/self/mounts", "proc /proc proc rw 0 0\n")
    out = engine.run_check(plat.cgroup_controller_missing, make_facts(fake_root))
    assert len(out) == 6 and all(f.status is Status.FAIL for f in out)
    assert "no cgroup file system is mounted" in out[0].message


def test_parse_mounts_unescapes_spaces():
    (m,) = pf.parse_mounts("cgroup /sys/fs/my\\040cg cgroup rw,memory 0 0\n")
    assert m.target == "/sys/fs/my cg" and "memory" in m.options


# -- iommu-disabled ---------------------------------------------------------------------------------

def iommu_root(root, groups=0, dmar=False, ivrs=False, cmdline="quiet", cpu=CPU_INTEL, groups_dir=True):
    root.mkdir("/sys/kernel")
    if groups_dir:
        root.mkdir("/sys/kernel/iommu_groups")
        for i in range(groups):
            root.mkdir(f"/sys/kernel/iommu_groups/{i}/devices")
    root.mkdir("/sys/firmware/acpi/tables")
    if dmar:
        root.write("/sys/firmware/acpi/tables/DMAR", b"DMAR")
    if ivrs:
        root.write("/sys/firmware/acpi/tables/IVRS", b"IVRS")
    root.write("/proc/cmdline", cmdline + "\n")
    root.write("/proc/cpuinfo", cpu)


HOSTDEV = ("<domain type='kvm'><name>pt</name><devices><hostdev mode='subsystem' type='pci' managed='yes'>"
           "<source><address domain='0' bus='1' slot='0' function='0'/></source></hostdev></devices></domain>")


@pytest.mark.parametrize("kw, status, expect", [
    pytest.param(dict(groups=12, dmar=True, cmdline="intel_iommu=on"), Status.PASS, "12 IOMMU group(s)",
                 id="intel-on"),
    pytest.param(dict(dmar=True), Status.FAIL, "ACPI DMAR table) but the kernel did not enable it: add intel_iommu=on",
                 id="intel-dmar-not-enabled"),
    pytest.param(dict(ivrs=True, cmdline="amd_iommu=off", cpu=CPU_AMD), Status.FAIL,
                 "switches it off (amd_iommu=off)", id="amd-off-on-cmdline"),
    pytest.param(dict(cpu=CPU_NESTED), Status.FAIL, "no ACPI DMAR or IVRS table", id="nested-no-tables"),
    pytest.param(dict(groups_dir=False), Status.FAIL, "IOMMU capability not compiled into kernel",
                 id="no-iommu-groups-dir"),
])
def test_iommu(fake_root, kw, status, expect):
    iommu_root(fake_root, **kw)
    f = one(plat.iommu_disabled, make_facts(fake_root))
    assert f.status is status and expect in f.message, f.message
    if status is Status.FAIL:
        assert f.severity is Severity.INFO and f.fix.auto is Auto.MANUAL


def test_iommu_warning_when_a_domain_uses_pci_passthrough(fake_root):
    iommu_root(fake_root, dmar=True)
    facts = make_facts(fake_root, domains=[DomainInfo("pt", "u-1", HOSTDEV)])
    f = one(plat.iommu_disabled, facts)
    assert f.status is Status.FAIL and f.severity is Severity.WARNING and "pt" in f.message


def test_iommu_no_sysfs_skips(fake_root):
    f = one(plat.iommu_disabled, make_facts(fake_root))
    assert f.status is Status.SKIP and "/sys/kernel" in f.message


# -- secure-guest-unsupported ---------------------------------------------------------------------------

def sev_root(root, cpu=CPU_AMD_SEV, sev=None, dev_sev=False, sev_es=None, cmdline="quiet"):
    root.write("/proc/cpuinfo", cpu)
    root.write("/proc/cmdline", cmdline + "\n")
    if sev is not None:
        root.write("/sys/module/kvm_amd/parameters/sev", sev + "\n")
    if sev_es is not None:
        root.write("/sys/module/kvm_amd/parameters/sev_es", sev_es + "\n")
    if dev_sev:
        root.write("/dev/sev", "")


SEV_DOMAIN = ("<domain type='kvm'><name>conf</name><launchSecurity type='sev'><policy>0x0003</policy>"
              "</launchSecurity></domain>")


@pytest.mark.parametrize("kw, status, expect", [
    pytest.param(dict(sev="Y", dev_sev=True, sev_es="Y"), Status.PASS, "sev, sev-es", id="sev-on"),
    pytest.param(dict(sev="N"), Status.FAIL, "Add kvm_amd.sev=1", id="sev-off-in-kernel"),
    pytest.param(dict(sev="1"), Status.FAIL, "disabled in firmware", id="sev-no-dev-sev"),
    pytest.param(dict(), Status.FAIL, "not supported by the currently used kernel", id="cpu-sev-no-kvm_amd"),
    pytest.param(dict(cpu=CPU_NESTED), Status.FAIL, "Unknown if this platform has Secure Guest support",
                 id="nothing-known"),
    pytest.param(dict(cpu=CPU_S390, cmdline="prot_virt=1"), Status.FAIL, "not supported by the currently used kernel",
                 id="s390-no-uv"),
])
def test_secure_guest(fake_root, kw, status, expect):
    sev_root(fake_root, **kw)
    f = one(plat.secure_guest_unsupported, make_facts(fake_root, libvirt=False))
    assert f.status is status and expect in f.message, f.message
    if status is Status.FAIL:
        assert f.severity is Severity.INFO


def test_secure_guest_s390_pv_on(fake_root):
    sev_root(fake_root, cpu=CPU_S390, cmdline="prot_virt=1 quiet")
    fake_root.mkdir("/sys/firmware/uv")
    f = one(plat.secure_guest_unsupported, make_facts(fake_root, libvirt=False))
    assert f.status is Status.PASS and "s390-pv" in f.message


def test_secure_guest_error_when_domain_wants_it(fake_root):
    sev_root(fake_root, cpu=CPU_NESTED)
    facts = make_facts(fake_root, domains=[DomainInfo("conf", "u-2", SEV_DOMAIN)],
                       domcaps="<domainCapabilities><features><sev supported='no'/></features></domainCapabilities>")
    f = one(plat.secure_guest_unsupported, facts)
    assert f.status is Status.FAIL and f.severity is Severity.ERROR
    assert "conf wants <launchSecurity type='sev'>" in f.message
    assert f.evidence["domcapabilities"] == {"sev": False}


def test_secure_guest_domcaps_confirms_sev(fake_root):
    sev_root(fake_root, sev="1", dev_sev=True)
    facts = make_facts(fake_root, domains=[DomainInfo("conf", "u-2", SEV_DOMAIN)],
                       domcaps="<domainCapabilities><features><sev supported='yes'/></features></domainCapabilities>")
    f = one(plat.secure_guest_unsupported, facts)
    assert f.status is Status.PASS


def test_secure_guest_no_cpuinfo_skips(fake_root):
    f = one(plat.secure_guest_unsupported, make_facts(fake_root, libvirt=False))
    assert f.status is Status.SKIP and "/proc/cpuinfo" in f.message


def test_unreadable_file_is_skip_not_crash(fake_root):
    if os.geteuid() == 0:
        # root reads anything: make the "file" a directory, which read_text cannot read either
        fake_root.mkdir("/proc/cpuinfo")
    else:
        fake_root.write("/proc/cpuinfo", CPU_AMD, mode=0)
    f = one(plat.secure_guest_unsupported, make_facts(fake_root, libvirt=False))
    assert f.status is Status.SKIP and "/proc/cpuinfo" in f.message


def test_registered_in_report_order():
    assert [c.slug for c in plat.virtdoctor_checks()] == [
        "vhost-net-missing", "tun-missing", "cgroup-controller-missing", "iommu-disabled",
        "secure-guest-unsupported"]
