"""domxml.py: untrusted domain XML is parsed safely; anything unusable is one line."""
from __future__ import annotations

import time

import pytest

from virtdoctor.domxml import MAX_XML_BYTES, DomainXMLError, from_info, parse_domain
from virtdoctor.facts.libvirt import DomainInfo
from virtdoctor.model import ToolError

GOOD = """<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices><emulator> /usr/bin/qemu-system-x86_64 </emulator></devices>
</domain>"""

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<domain type='kvm'><name>&lol9;</name></domain>"""


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


def test_a_good_domain():
    dom = parse_domain(GOOD, "vm1.xml")
    assert (dom.name, dom.virt_type, dom.arch, dom.machine, dom.emulator) == (
        "vm1", "kvm", "x86_64", "pc-q35-7.2", "/usr/bin/qemu-system-x86_64")
    assert (dom.subject, dom.source, dom.label) == ("xml:vm1.xml", "vm1.xml", "vm1")
    assert dom.root.tag == "domain" and "<name>vm1</name>" in dom.xml_text()
    assert dom.line_of(dom.root.find("os")) == 3


def test_a_bare_domain_has_empty_attributes():
    dom = parse_domain(b"<domain/>", "-")
    assert (dom.name, dom.virt_type, dom.arch, dom.machine, dom.emulator, dom.label) == (
        None, "", "", "", None, "-")


def test_from_info():
    dom = from_info(DomainInfo("vm1", "uuid", GOOD))
    assert dom.subject == "domain:vm1" and dom.source == "domain vm1" and dom.info.uuid == "uuid"


@pytest.mark.parametrize("data, message", [
    pytest.param("", "empty input, not XML", id="empty"),
    pytest.param("   \n", "empty input, not XML", id="blank"),
    pytest.param("this is not xml", "not well-formed XML", id="text"),
    pytest.param("<domain><name>x</domain>", "not well-formed XML", id="mismatched-tag"),
    pytest.param(b"\xff\xfe<\x00d\x00", "not well-formed XML", id="binary"),
    pytest.param("<network><name>default</name></network>", "the root element is <network>, not <domain>",
                 id="not-a-domain"),
])
def test_unusable_input_is_one_line(data, message):
    with pytest.raises(DomainXMLError) as info:
        parse_domain(data, "in.xml")
    text = one_line(info.value)
    assert text.startswith("in.xml: ") and message in text
    assert isinstance(info.value, ToolError)  # exit status 3 at the CLI


def test_billion_laughs_is_refused_quickly():
    t0 = time.monotonic()
    with pytest.raises(DomainXMLError) as info:
        parse_domain(BILLION_LAUGHS, "bomb.xml")
    assert time.monotonic() - t0 < 1
    text = one_line(info.value)  # our refusal, or libxml2's own amplification limit
    assert "declares XML entities" in text or "amplification" in text
    assert "lollol" not in text


def test_external_entity_is_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:TOP-SECRET")
    for target in ("file:///etc/passwd", f"file://{secret}"):
        doc = f'<!DOCTYPE d [<!ENTITY xxe SYSTEM "{target}">]><domain><name>&xxe;</name></domain>'
        with pytest.raises(DomainXMLError) as info:
            parse_domain(doc, "xxe.xml")
        text = one_line(info.value)
        assert "TOP-SECRET" not in text and "root:x:0:0" not in text


def test_parameter_entity_and_external_dtd_are_not_fetched(tmp_path):
    dtd = tmp_path / "evil.dtd"
    dtd.write_text('<!ENTITY leak "TOP-SECRET">')
    doc = f'<!DOCTYPE domain SYSTEM "file://{dtd}"><domain><name>&leak;</name></domain>'
    try:
        dom = parse_domain(doc, "dtd.xml")
    except DomainXMLError as exc:
        assert "TOP-SECRET" not in one_line(exc)
    else:
        assert "TOP-SECRET" not in dom.xml_text()


def test_doctype_without_entities_is_fine():
    dom = parse_domain("<!DOCTYPE domain><domain><name>ok</name></domain>", "d.xml")
    assert dom.name == "ok"


def test_huge_input_is_refused_before_parsing():
    data = b"<domain><description>" + b"x" * (50 * 1024 * 1024) + b"</description></domain>"
    t0 = time.monotonic()
    with pytest.raises(DomainXMLError) as info:
        parse_domain(data, "big.xml")
    assert time.monotonic() - t0 < 1
    text = one_line(info.value)
    assert text == f"big.xml: 50.0 MiB is larger than the {MAX_XML_BYTES // 1048576} MiB accepted for a domain XML"


def test_deep_nesting_is_one_line():
    data = "<domain>" + "<a>" * 100000 + "</a>" * 100000 + "</domain>"
    with pytest.raises(DomainXMLError) as info:
        parse_domain(data, "deep.xml")
    one_line(info.value)
