"""The libvirt facts against the real daemon."""
from virtdoctor.facts import HostFacts


def test_domcapabilities_answer_although_libvirt_refuses_them_read_only(live_host):
    """libvirt 9.0 refuses virConnectGetDomainCapabilities on a read-only
    connection; the facts fall back to a read-write one for that call only, so
    the checks built on domcapabilities (spice, video models, firmware) run."""
    facts = HostFacts(uri=live_host.uri)
    caps = facts.libvirt.domcapabilities(arch="x86_64", virttype="kvm" if live_host.kvm else "qemu")
    assert caps.tag == "domainCapabilities"
    assert caps.findtext("arch") == "x86_64"
    assert caps.find("devices/video") is not None
