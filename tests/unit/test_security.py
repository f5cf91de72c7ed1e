"""Security-driver checks (checks/security.py) on fake roots.

Recorded data and where its format comes from:
- AA_DENIED: the kernel-log layout of AppArmor's own libapparmor testsuite sample
  (apparmor/apparmor, libraries/libapparmor/testsuite/test_multi/file_without_filename.in:
  `... kernel: audit: type=1400 audit(1772549301.213:78826): apparmor="DENIED" operation="open"
  class="file" profile="firefox" pid=16417 comm="vaapitest" requested_mask="wr" denied_mask="wr"
  fsuid=1000 ouid=0`), with the profile libvirt's AppArmor driver names (libvirt-<uuid>,
  src/security/security_apparmor.c) and the `name=` field the kernel adds for file operations
  (security/apparmor/file.c). AA_AUDITD is the same record as auditd writes it (type=AVC msg=audit(...)).
- AVC_DENIED: the SELinux AVC layout of the kernel's security/selinux/avc.c
  (avc_audit_pre_callback "avc:  %s " + " { perms }" + " for ", lsm_audit's " pid=%d comm=",
  avc_audit_post_callback's "scontext= tcontext= tclass=" and " permissive=%u"), in auditd's
  `type=AVC msg=audit(...)` framing.
- PROFILE_FILES: what virt-aa-helper writes into libvirt-<uuid>.files (src/security/virt-aa-helper.c,
  vah_add_path: `  "%s%s" %s,\\n`, plus the deny rule for read-only files).
"""
from __future__ import annotations

import pytest

from virtdoctor import domxml, engine
from virtdoctor.checks import security
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.facts.lsm import parse_denial, read_lsm
from virtdoctor.model import Status

UUID = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"
AA_DENIED = ('Mar 03 07:48:21 kvm1 kernel: audit: type=1400 audit(1772549301.213:78826): apparmor="DENIED" '
             f'operation="open" class="file" profile="libvirt-{UUID}" name="/srv/vm/web.qcow2" pid=16417 '
             'comm="qemu-system-x86" requested_mask="wr" denied_mask="wr" fsuid=64055 ouid=64055')
AA_AUDITD = ('type=AVC msg=audit(1772549301.213:78827): apparmor="DENIED" operation="open" '
             f'profile="libvirt-{UUID}" name="/srv/iso/boot.iso" pid=16417 comm="qemu-system-x86" '
             'requested_mask="r" denied_mask="r" fsuid=64055 ouid=0')
AVC_DENIED = ('type=AVC msg=audit(1663374194.313:87): avc:  denied  { read } for  pid=1260 comm="qemu-system-x86" '
              'name="web.qcow2" dev="dm-0" ino=12583 scontext=system_u:system_r:svirt_t:s0:c245,c487 '
              'tcontext=unconfined_u:object_r:user_home_t:s0 tclass=file permissive=0')
PROFILE_FILES = ('  "/var/lib/libvirt/images/web.qcow2" rwk,\n'
                 '  "/var/lib/libvirt/qemu/domain-3-web/{,**}" rwk,\n'
                 '  "/usr/share/OVMF/OVMF_CODE.fd" rk,\n'
                 "  # don't audit writes to readonly files\n"
                 '  deny "/usr/share/OVMF/OVMF_CODE.fd" w,\n')
CAPS_APPARMOR = ("<capabilities><host><secmodel><model>apparmor</model><doi>0</doi></secmodel>"
                 "<secmodel><model>dac</model><doi>0</doi></secmodel></host></capabilities>")
CAPS_DAC = "<capabilities><host><secmodel><model>dac</model><doi>0</doi></secmodel></host></capabilities>"


def dom_xml(name="web", *, seclabel="", disk_seclabel="", disk="/srv/vm/web.qcow2", extra_os=""):
    return (f"<domain type='kvm'><name>{name}</name><uuid>{UUID}</uuid><memory unit='MiB'>64</memory>"
            f"<os><type arch='x86_64' machine='pc'>hvm</type>{extra_os}</os>"
            "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
            f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'>{disk_seclabel}</source>"
            "<target dev='vda' bus='virtio'/></disk></devices>"
            f"{seclabel}</domain>")


def facts(root, caps=CAPS_DAC, xmls=()):
    infos = [DomainInfo(name=f"d{i}", uuid=UUID, xml=x) for i, x in enumerate(xmls)]
    return HostFacts(root=str(root), uri="qemu:///system",
                     libvirt_facts=RecordedLibvirt(capabilities=caps, domains=infos))


def run(chk, f, xml=None):
    dom = domxml.from_info(DomainInfo(name="web", uuid=UUID, xml=xml)) if xml else None
    return engine.run_check(chk, f, dom)


def one(chk, f, xml=None):
    [finding] = run(chk, f, xml)
    return finding


def apparmor_host(root, *, log=AA_DENIED, profiles=f"libvirtd (enforce)\nlibvirt-{UUID} (enforce)\n"):
    root.write("/sys/module/apparmor/parameters/enabled", "Y\n")
    root.write("/sys/kernel/security/apparmor/profiles", profiles)
    root.write("/sys/kernel/security/lsm", "lockdown,capability,landlock,yama,apparmor")
    if log is not None:
        root.write("/var/log/kern.log", "Mar 03 07:48:20 kvm1 kernel: unrelated line\n" + log + "\n")


# -- parsing ----------------------------------------------------------------------------------
def test_parse_records():
    d = parse_denial(AA_DENIED, "kern.log")
    assert (d.lsm, d.domain_uuid, d.target, d.access, d.operation) == ("apparmor", UUID, "/srv/vm/web.qcow2", "wr", "open")
    d = parse_denial(AA_AUDITD)
    assert d.target == "/srv/iso/boot.iso" and d.domain_uuid == UUID
    s = parse_denial(AVC_DENIED)
    assert s.lsm == "selinux" and s.is_svirt and s.access == "read" and s.target == "web.qcow2"
    assert s.tcontext == "unconfined_u:object_r:user_home_t:s0"
    assert parse_denial('apparmor="ALLOWED" operation="open"') is None
    assert parse_denial("just a line") is None


def test_lsm_state_of_a_host_without_lsms(fake_root):
    state = read_lsm(HostFacts(root=str(fake_root), offline=True))
    assert state.apparmor is None and state.selinux is None and state.active == set()
    assert state.security_driver is None and state.dynamic_ownership


# -- security-driver-unavailable ------------------------------------------------------------------
@pytest.mark.parametrize("conf, setup, status, text", [
    ("", None, Status.PASS, "sets no security_driver"),
    ('security_driver = "none"\n', None, Status.PASS, "available"),
    ('security_driver = "apparmor"\n', None, Status.FAIL, "not enabled in this kernel"),
    ('security_driver = "apparmor"\n', "aa-noprofile", Status.FAIL, "no profile for libvirtd"),
    ('security_driver = "apparmor"\n', "aa", Status.PASS, "available"),
    ('security_driver = "selinux"\n', None, Status.FAIL, "SELinux is not enabled"),
    ('security_driver = "selinux"\n', "selinux", Status.PASS, "available"),
    ('security_driver = [ "selinux", "dac" ]\n', None, Status.FAIL, "selinux"),
    ('security_driver = "smack"\n', None, Status.FAIL, "not found"),
])
def test_security_driver_unavailable(fake_root, conf, setup, status, text):
    fake_root.write("/etc/libvirt/qemu.conf", conf)
    if setup == "aa":
        apparmor_host(fake_root, log=None)
    elif setup == "aa-noprofile":
        apparmor_host(fake_root, log=None, profiles="/usr/bin/man (enforce)\n")
    elif setup == "selinux":
        fake_root.write("/sys/fs/selinux/enforce", "1")
    f = one(security.security_driver_unavailable, HostFacts(root=str(fake_root), offline=True))
    assert f.status is status and text in f.message, f.message
    if status is Status.FAIL:
        assert f.fix.auto == "manual" and "security_driver" in f.fix.summary


def test_security_driver_fix_keeps_the_drivers_that_work(fake_root):
    fake_root.write("/etc/libvirt/qemu.conf", 'security_driver = [ "selinux", "dac" ]\n')
    f = one(security.security_driver_unavailable, HostFacts(root=str(fake_root), offline=True))
    assert "'dac'" in f.fix.summary


# -- seclabel-model-unavailable -----------------------------------------------------------------
def test_seclabel_from_another_host_is_removed(fake_root, tmp_path):
    xml = dom_xml(seclabel="<seclabel type='dynamic' model='apparmor' relabel='yes'/>",
                  disk_seclabel="<seclabel model='selinux' relabel='no'/>")
    f = one(security.seclabel_model_unavailable, facts(fake_root), xml)
    assert f.status is Status.FAIL and "'apparmor'" in f.message and f.fix.auto == "safe"
    assert f.evidence["foreign"] == ["apparmor", "selinux"]
    f2 = one(security.seclabel_model_unavailable, facts(fake_root, CAPS_APPARMOR), xml)
    assert f2.status is Status.FAIL and f2.evidence["foreign"] == ["selinux"]
    ok = dom_xml(seclabel="<seclabel type='dynamic' model='dac' relabel='yes'/>")
    assert one(security.seclabel_model_unavailable, facts(fake_root), ok).status is Status.PASS
    assert one(security.seclabel_model_unavailable, facts(fake_root, CAPS_APPARMOR),
               dom_xml(seclabel="<seclabel type='dynamic' model='apparmor'/>")).status is Status.PASS


def test_seclabel_offline_uses_the_kernel(fake_root):
    xml = dom_xml(seclabel="<seclabel type='dynamic' model='apparmor' relabel='yes'/>")
    off = HostFacts(root=str(fake_root), offline=True)
    assert one(security.seclabel_model_unavailable, off, xml).status is Status.FAIL
    apparmor_host(fake_root, log=None)
    off = HostFacts(root=str(fake_root), offline=True)
    assert one(security.seclabel_model_unavailable, off, xml).status is Status.PASS


# -- dynamic-ownership-disabled --------------------------------------------------------------------
def accounts(root):
    root.write("/etc/passwd", "root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n")
    root.write("/etc/group", "root:x:0:\nkvm:x:104:libvirt-qemu\nlibvirt-qemu:x:64055:\n")


def test_dynamic_ownership_host(fake_root):
    assert one(security.dynamic_ownership_host, HostFacts(root=str(fake_root), offline=True)).status is Status.PASS
    fake_root.write("/etc/libvirt/qemu.conf", "dynamic_ownership = 0\n")
    f = one(security.dynamic_ownership_host, HostFacts(root=str(fake_root), offline=True))
    assert f.status is Status.FAIL and f.fix.auto == "manual"


@pytest.mark.parametrize("conf, disk_label, mode, status", [
    ("dynamic_ownership = 0\n", "", 0o600, Status.FAIL),
    ("dynamic_ownership = 0\n", "", 0o666, Status.PASS),
    ("", "<seclabel model='dac' relabel='no'/>", 0o600, Status.FAIL),
    ("", "", 0o600, Status.PASS),  # libvirt chowns it at start: disk-source-permission's business
])
def test_dynamic_ownership_domain(fake_root, conf, disk_label, mode, status):
    accounts(fake_root)
    fake_root.write("/etc/libvirt/qemu.conf", conf + 'user = "libvirt-qemu"\ngroup = "libvirt-qemu"\n')
    fake_root.write("/srv/vm/web.qcow2", "x", mode=mode)
    f = one(security.dynamic_ownership_domain, HostFacts(root=str(fake_root), offline=True),
            dom_xml(disk_seclabel=disk_label))
    assert f.status is status, f.message
    if status is Status.FAIL:
        assert f.fix.auto == "safe"
        assert f.fix.commands == ("chown libvirt-qemu:libvirt-qemu /srv/vm/web.qcow2",)


# -- apparmor-denied ------------------------------------------------------------------------------
def test_apparmor_denied_host_and_domain(fake_root):
    apparmor_host(fake_root)
    fake_root.write("/var/log/audit/audit.log", AA_AUDITD + "\n" + AVC_DENIED + "\n")
    fake_root.write(f"/etc/apparmor.d/libvirt/libvirt-{UUID}.files", PROFILE_FILES)
    fake_root.write(f"/etc/apparmor.d/libvirt/libvirt-{UUID}", "#include <tunables/global>\n")
    f = one(security.apparmor_denied_host, HostFacts(root=str(fake_root), offline=True))
    assert f.status is Status.FAIL and f"libvirt-{UUID}" in f.message and f.fix.auto == "manual"
    d = one(security.apparmor_denied_domain, HostFacts(root=str(fake_root), offline=True), dom_xml())
    assert d.status is Status.FAIL
    assert d.evidence["not_in_profile"] == ["/srv/iso/boot.iso", "/srv/vm/web.qcow2"]
    cmds = list(d.fix.commands)
    assert any('"/srv/vm/web.qcow2" rwk,' in c for c in cmds) and cmds[-1].startswith("apparmor_parser -r")
    other = dom_xml().replace(UUID, "11111111-2222-3333-4444-555555555555")
    assert one(security.apparmor_denied_domain, HostFacts(root=str(fake_root), offline=True), other).status is Status.PASS


def test_apparmor_denied_not_active_or_no_records(fake_root):
    assert one(security.apparmor_denied_host, HostFacts(root=str(fake_root), offline=True)).status is Status.PASS
    apparmor_host(fake_root, log="Mar 03 07:48:21 kvm1 kernel: nothing here")
    f = one(security.apparmor_denied_host, HostFacts(root=str(fake_root), offline=True))
    assert f.status is Status.PASS and "no libvirt-<uuid> denials" in f.message


def test_profile_rule_matching():
    from virtdoctor.facts.lsm import aa_path_granted
    granted = ["/var/lib/libvirt/images/web.qcow2", "/srv/share/**"]
    assert aa_path_granted(granted, "/var/lib/libvirt/images/web.qcow2")
    assert aa_path_granted(granted, "/srv/share/a/b")
    assert not aa_path_granted(granted, "/srv/vm/web.qcow2")


# -- apparmor-profile-load-failed ----------------------------------------------------------------
def test_apparmor_profile_load_failed(fake_root):
    xml = dom_xml(disk="/etc/vm/web.qcow2")
    assert one(security.apparmor_profile_load_failed, HostFacts(root=str(fake_root), offline=True), xml).status \
        is Status.PASS  # no AppArmor here
    apparmor_host(fake_root, log=None)
    fake_root.write("/etc/apparmor.d/libvirt/TEMPLATE.qemu", "profile LIBVIRT_TEMPLATE flags=(attach_disconnected) {\n}\n")
    fake_root.write("/sbin/apparmor_parser", "#!/bin/sh\n", mode=0o755)
    f = one(security.apparmor_profile_load_failed, HostFacts(root=str(fake_root), offline=True), xml)
    assert f.status is Status.FAIL and "/etc/vm/web.qcow2 is in a restricted directory" in f.message
    ok = dom_xml(disk="/var/lib/libvirt/images/web.qcow2", extra_os="<loader readonly='yes'>/usr/share/OVMF/OVMF_CODE.fd</loader>")
    assert one(security.apparmor_profile_load_failed, HostFacts(root=str(fake_root), offline=True), ok).status is Status.PASS
    fake_root.path("/etc/apparmor.d/libvirt/TEMPLATE.qemu").unlink()
    f = one(security.apparmor_profile_load_failed, HostFacts(root=str(fake_root), offline=True), ok)
    assert f.status is Status.FAIL and "template does not exist" in f.message


@pytest.mark.parametrize("path, ro, blocked", [
    ("/usr/share/OVMF/OVMF_CODE.fd", True, False), ("/usr/share/OVMF/OVMF_VARS.fd", False, True),
    ("/boot/vmlinuz", True, False), ("/boot/x.img", False, True), ("relative.img", False, True),
    ("/sys/devices/pci0000:00/x", False, False), ("/var/lib/libvirt/images/a", False, False),
])
def test_virt_aa_helper_valid_path(path, ro, blocked):
    assert (security.aa_blocked(path, ro) is not None) is blocked


# -- selinux-image-label ----------------------------------------------------------------------------
def test_selinux_image_label(fake_root):
    off = HostFacts(root=str(fake_root), offline=True)
    assert one(security.selinux_image_label_host, off).status is Status.PASS
    fake_root.write("/sys/fs/selinux/enforce", "1")
    fake_root.write("/var/log/audit/audit.log", AVC_DENIED + "\n")
    f = one(security.selinux_image_label_host, HostFacts(root=str(fake_root), offline=True))
    assert f.status is Status.FAIL and "user_home_t" in f.message and f.fix.auto == "manual"
    d = one(security.selinux_image_label_domain, HostFacts(root=str(fake_root), offline=True), dom_xml())
    assert d.status is Status.FAIL and "denied in the audit log" in d.message
    assert "semanage fcontext -a -t virt_image_t '/srv/vm(/.*)?'" in d.fix.commands


def test_permission_denied_text_ranks_disk_source_permission_first_without_evidence():
    from virtdoctor.knowledge import builtin_dir, load
    kb = load([builtin_dir()])
    text = "qemu-system-x86_64: -blockdev {}: Could not open '/srv/vm/web.qcow2': Permission denied"
    ids = [m.id for m in kb.match(text)]
    assert ids[0] == "disk-source-permission" and "apparmor-denied" in ids and "selinux-image-label" in ids
    assert kb.match(AA_DENIED)[0].id == "apparmor-denied"
    assert kb.match(AVC_DENIED)[0].id == "selinux-image-label"
