"""stored-domain-unloadable on fake roots: /etc/libvirt/qemu/*.xml against the defined domains
(recorded), with the daemon log lines libvirt 9.0.0 wrote live for the same files."""
from __future__ import annotations

from virtdoctor import engine
from virtdoctor.checks import stored as S
from virtdoctor.facts import HostFacts
from virtdoctor.facts.libvirt import DomainInfo, RecordedLibvirt
from virtdoctor.facts.stored import normalise_uuid, parse_load_errors
from virtdoctor.model import Auto, Severity, Status

UUID_OK = "6f1c1b64-3a3d-4b8e-9d7a-2b4b6c1e0a01"


def xml(name, uuid=UUID_OK, tail="</os>"):
    return (f"<domain type='qemu'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  <memory unit='MiB'>64</memory>\n"
            f"  <vcpu>1</vcpu>\n  <os><type arch='x86_64' machine='pc'>hvm</type>{tail}\n</domain>\n")


# written by libvirtd 9.0.0 on this host after SIGHUP with these files in place (see the live test)
LOG = """\
2026-12-03 19:43:19.864+0000: 27051: error : virNetSocketReadWire:1793 : End of file while reading data: Input/output error
2026-12-03 19:43:22.624+0000: 27569: error : catchXMLError:1025 : /etc/libvirt/qemu/vm-syntax.xml:7: Opening and ending tag mismatch: os line 6 and domain
</domain>
---------^
2026-12-03 19:43:22.624+0000: 27569: error : virDomainObjListLoadAllConfigs:611 : Failed to load config for domain 'vm-syntax'
2026-12-03 19:43:22.632+0000: 27569: error : virDomainObjListAddLocked:289 : operation failed: domain 'vm-dup' is already defined with uuid 6f1c1b64-3a3d-4b8e-9d7a-2b4b6c1e0a01
2026-12-03 19:43:22.632+0000: 27569: error : virDomainObjListLoadAllConfigs:611 : Failed to load config for domain 'vm-ok'
"""


def info(name, uuid=UUID_OK):
    return DomainInfo(name=name, uuid=uuid, xml=xml(name, uuid))


def run(root, domains=(), log=None, error=None):
    if log is not None:
        root.write("/var/log/libvirt/libvirtd.log", log, mode=0o600)
    facts = HostFacts(root=str(root), uri="qemu:///system",
                      libvirt_facts=RecordedLibvirt(domains=list(domains), error=error))
    return engine.run_check(S.stored_domain_unloadable, facts)


def test_all_loaded_passes(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm1.xml", xml("vm1"))
    [f] = run(fake_root, [info("vm1")])
    assert f.status is Status.PASS and "1 definition(s)" in f.message


def test_a_file_that_does_not_parse_names_file_line_and_error(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm-syntax.xml", xml("vm-syntax", tail="<os>"))
    [f] = run(fake_root, [], log=LOG)
    assert f.status is Status.FAIL
    # the same file:line: message the daemon logged
    assert f.message.startswith("/etc/libvirt/qemu/vm-syntax.xml:7: Opening and ending tag mismatch: os line 6 "
                                "and domain")
    assert "gone from `virsh list --all`" in f.message
    assert f.evidence["line"] == 7
    assert f.evidence["daemon_log"][-1].endswith("Failed to load config for domain 'vm-syntax'")
    assert f.fix.auto is Auto.MANUAL
    assert f.fix.commands == ("cp /etc/libvirt/qemu/vm-syntax.xml /root/vm-syntax.xml",
                              "virsh define --validate /root/vm-syntax.xml")


def test_broken_file_of_a_still_defined_guest_vanishes_at_next_start(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm1.xml", "<domain type='kvm'><name>vm1</name>")
    [f] = run(fake_root, [info("vm1")])
    assert f.status is Status.FAIL and "vanishes at the next daemon start" in f.message


def test_uuid_clash_names_both_files_and_the_daemon_line(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm-ok.xml", xml("vm-ok"))
    fake_root.write("/etc/libvirt/qemu/vm-dup.xml", xml("vm-dup"))
    [f] = run(fake_root, [info("vm-dup")], log=LOG)
    assert f.status is Status.FAIL
    assert "carry the same uuid 6f1c1b64-3a3d-4b8e-9d7a-2b4b6c1e0a01" in f.message
    assert "domain 'vm-dup' is already defined with uuid" in f.message
    # the daemon skipped vm-ok (its log says so): that is the file to move away
    assert f.fix.commands == ("mv /etc/libvirt/qemu/vm-ok.xml /root/vm-ok.xml.duplicate",)


def test_a_copy_with_the_same_name_clashes(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm1.xml", xml("vm1"))
    fake_root.write("/etc/libvirt/qemu/vm1-backup.xml", xml("vm1"))
    # same name and UUID: libvirt 9.0.0 loads both without a word (seen live), the last read wins
    fs = run(fake_root, [info("vm1")])
    assert [(f.status, f.severity) for f in fs] == [(Status.FAIL, Severity.WARNING)]
    assert "are copies of the definition of 'vm1'" in fs[0].message
    assert fs[0].fix.commands == ("mv /etc/libvirt/qemu/vm1-backup.xml /root/vm1-backup.xml.copy",)


def test_same_name_other_uuid_clashes(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm1.xml", xml("vm1"))
    fake_root.write("/etc/libvirt/qemu/vm1-new.xml", xml("vm1", "11111111-2222-3333-4444-555555555555"))
    fs = run(fake_root, [info("vm1")])
    assert [(f.status, f.severity) for f in fs] == [(Status.FAIL, Severity.ERROR)]
    assert "carry the same name vm1 for different domains" in fs[0].message
    assert fs[0].fix.commands == ("mv /etc/libvirt/qemu/vm1-new.xml /root/vm1-new.xml.duplicate",)


def test_name_other_than_the_file_name_is_a_warning(fake_root):
    # libvirt 9.0.0 loads it under the inner name (seen live)
    fake_root.write("/etc/libvirt/qemu/vm-name.xml", xml("vm-other"))
    [f] = run(fake_root, [info("vm-other")])
    assert f.status is Status.FAIL and f.severity is Severity.WARNING
    assert "defines the domain 'vm-other', not 'vm-name'" in f.message


def test_not_defined_without_a_log_line_says_why_it_may_be(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm9.xml", xml("vm9"))
    [f] = run(fake_root, [info("vm1", "11111111-2222-3333-4444-555555555555")])
    assert f.status is Status.FAIL and "is not a defined domain" in f.message
    assert "has not read it since it was written" in f.message


def test_not_defined_with_a_semantic_error_in_the_log(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm-g.xml", xml("vm-g"))
    log = ("2026-12-03 19:50:00.000+0000: 100: error : virXMLPropEnumInternal:635 : XML error: Invalid value for "
           "attribute 'type' in element 'graphics': 'none'.\n"
           "2026-12-03 19:50:00.000+0000: 100: error : virDomainObjListLoadAllConfigs:611 : "
           "Failed to load config for domain 'vm-g'\n")
    [f] = run(fake_root, [], log=log)
    assert "libvirt refused it: \"XML error: Invalid value for attribute 'type' in element 'graphics': 'none'.\"" \
        in f.message


def test_without_libvirt_only_the_files_are_judged(fake_root):
    fake_root.write("/etc/libvirt/qemu/vm1.xml", xml("vm1"))
    [f] = run(fake_root, error="Failed to connect socket")
    assert f.status is Status.PASS and "not compared with the defined domains" in f.message
    fake_root.write("/etc/libvirt/qemu/vm2.xml", "not xml at all")
    fs = run(fake_root, error="Failed to connect socket")
    assert [f.status for f in fs] == [Status.FAIL] and "daemon skips it at its next start" in fs[0].message


def test_no_directory_passes(fake_root):
    [f] = run(fake_root)
    assert f.status is Status.PASS


def test_parse_load_errors_and_uuid():
    errs = parse_load_errors(LOG)
    assert [(e.domain, e.cause) for e in errs] == [
        ("vm-syntax", "/etc/libvirt/qemu/vm-syntax.xml:7: Opening and ending tag mismatch: os line 6 and domain"),
        ("vm-ok", "operation failed: domain 'vm-dup' is already defined with uuid 6f1c1b64-3a3d-4b8e-9d7a-2b4b6c1e0a01")]
    assert normalise_uuid("6F1C1B643A3D4B8E9D7A2B4B6C1E0A01") == "6f1c1b643a3d4b8e9d7a2b4b6c1e0a01"
    assert normalise_uuid("nope") is None
