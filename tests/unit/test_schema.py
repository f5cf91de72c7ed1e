"""checks/schema.py and virtdoctor/facts/schema.py: schema-invalid against the host's own
libvirt RelaxNG schema (linked into a fake root), errors located to line, element and
attribute, the per-process cache, and the skip when no schema is installed."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from virtdoctor import domxml, engine
from virtdoctor.checks import schema as SC
from virtdoctor.facts import HostFacts
from virtdoctor.facts import schema as FS
from virtdoctor.model import Severity, Status

HOST_SCHEMAS = Path("/usr/share/libvirt/schemas")
needs_schema = pytest.mark.skipif(not (HOST_SCHEMAS / "domain.rng").is_file(),
                                  reason="libvirt's schemas are not installed on this machine (libvirt0)")

VALID = """<domain type='kvm'>
  <name>ok</name>
  <memory unit='KiB'>65536</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
    <interface type='network'>
      <source network='default'/>
      <driver name='vhost' queues='2'/>
    </interface>
  </devices>
</domain>
"""


def with_schemas(fake_root, copy=False) -> HostFacts:
    target = fake_root.path("/usr/share/libvirt/schemas")
    target.parent.mkdir(parents=True, exist_ok=True)
    if copy:
        shutil.copytree(HOST_SCHEMAS, target)
    else:
        target.symlink_to(HOST_SCHEMAS)
    return HostFacts(root=str(fake_root), uri="qemu:///system", offline=True)


def check(f, text):
    return engine.run_check(SC.schema_invalid, f, domxml.parse_domain(text, "vm.xml"))


@needs_schema
def test_valid_domain_passes(fake_root):
    [r] = check(with_schemas(fake_root), VALID)
    assert r.status is Status.PASS and "/usr/share/libvirt/schemas/domain.rng" in r.message


@needs_schema
def test_bad_attribute_value_is_located_to_line_and_attribute(fake_root):
    [r] = check(with_schemas(fake_root), VALID.replace("queues='2'", "queues='-5'"))
    assert r.status is Status.FAIL and r.severity is Severity.ERROR
    assert r.evidence["line"] == 11 and r.evidence["element"] == "driver" and r.evidence["attribute"] == "queues"
    assert r.message.startswith("line 11: attribute queues='-5' of <driver> (/domain/devices/interface/driver)")
    assert "Extra element devices in interleave" in r.evidence["libxml2"]


@needs_schema
def test_unknown_element_and_a_second_error_are_both_reported(fake_root):
    text = VALID.replace("<vcpu>1</vcpu>", "<vcpu>1</vcpu>\n  <frobnicate/>").replace("queues='2'", "queues='x'")
    rs = check(with_schemas(fake_root), text)
    assert all(r.status is Status.FAIL for r in rs)
    located = {(r.evidence["element"], r.evidence["attribute"]) for r in rs}
    assert located == {("frobnicate", None), ("driver", "queues")}
    assert sorted(r.evidence["line"] for r in rs) == [5, 12]


@needs_schema
def test_graphics_none_is_invalid(fake_root):
    text = VALID.replace("<devices>", "<devices>\n    <graphics type='none'/>")
    [r] = check(with_schemas(fake_root), text)
    # type is required, so removing it cannot validate either: the element is named
    assert r.status is Status.FAIL and r.evidence["element"] == "graphics" and r.evidence["line"] == 9


@needs_schema
def test_schema_is_compiled_once_and_again_when_it_changes(fake_root):
    f = with_schemas(fake_root, copy=True)
    first = FS.domain_schema(f)
    assert FS.domain_schema(f) is first
    assert FS.domain_schema(HostFacts(root=str(fake_root), offline=True)) is first  # a new facts object, same file
    rng = fake_root.path("/usr/share/libvirt/schemas/domain.rng")
    st = rng.stat()
    os.utime(rng, (st.st_atime, st.st_mtime + 10))
    assert FS.domain_schema(f) is not first


def test_no_schema_installed_skips_with_the_reason(fake_root):
    [r] = check(HostFacts(root=str(fake_root), offline=True), VALID)
    assert r.status is Status.SKIP and "domain.rng" in r.message and "libvirt0" in r.message


def test_broken_schema_skips(fake_root):
    fake_root.write("/usr/share/libvirt/schemas/domain.rng", "<grammar xmlns='http://relaxng.org/ns/structure/1.0'>")
    [r] = check(HostFacts(root=str(fake_root), offline=True), VALID)
    assert r.status is Status.SKIP and "does not compile" in r.message
