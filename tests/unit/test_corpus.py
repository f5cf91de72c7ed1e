"""preflight over libvirt 9.0.0's own test corpus (tests/qemuxml2argvdata: 1,070 domain XMLs,
201 expected-error files), read from ../shared/corpus and skipped where it is absent.

- one `virtdoctor --offline preflight` run over every file: nothing unusable, no check crashes;
- schema verdicts equal libvirt's: 1,048 valid, 22 invalid, exactly the corpus README's list;
- every `.err` whose text is a catalogue failure is flagged with that slug;
- on files without an `.err`, the error-severity findings of this module's XML-intrinsic checks
  are true problems: only schema-invalid on files libvirt's schema rejects.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from virtdoctor.cli import main

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "libvirt-9.0.0-qemuxml2argv"
SCHEMA = Path("/usr/share/libvirt/schemas/domain.rng")
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not present at {CORPUS}")

SCHEMA_INVALID = {  # the corpus README: what libvirt 9.0.0's domain.rng rejects
    "aarch64-gic-invalid", "boot-menu-enable-with-timeout-invalid", "disk-cdrom-empty-network-invalid",
    "disk-device-lun-type-invalid", "disk-missing-target-invalid", "disk-network-iscsi-auth-secrettype-invalid",
    "hostdev-mdev-src-address-invalid", "hugepages-memaccess-invalid", "luks-disk-invalid",
    "machine-loadparm-s390-char-invalid", "machine-loadparm-s390-len-invalid", "numatune-auto-nodeset-invalid",
    "pci-bridge-negative-index-invalid", "pci-bus-invalid", "pci-domain-invalid", "pci-function-invalid",
    "pci-rom-disabled-invalid", "pci-slot-invalid", "pseries-spaprvio-invalid", "tpm-no-backend-invalid",
    "usb-too-long-port-path-invalid", "vhost_queues-invalid",
}

# .err texts that are catalogue failures -> the slug preflight must report on that XML
ERR_SLUGS = [
    (r"per-device boot elements cannot be used together with os/boot elements", "boot-order-conflict"),
    (r"UEFI requires ACPI on this architecture", "uefi-requires-acpi"),
    (r"ACPI requires UEFI on this architecture", "acpi-requires-uefi"),
    (r"Found duplicate drive address for disk with target name", "disk-target-bus-mismatch"),
    (r"target '\w+' duplicated for disk sources", "disk-target-bus-mismatch"),
    (r"conflicts with SCSI host device address", "disk-target-bus-mismatch"),
    (r"does not support ejectable media", "cdrom-on-virtio"),
    (r"more than 255 vCPUs require extended interrupt mode", "vcpus-over-255-need-iommu-eim"),
    (r"Secure boot requires SMM feature enabled", "secure-boot-requires-smm"),
    (r"CPU mode 'host-model' for aarch64", "aarch64-host-model"),
    (r"Invalid value for attribute '\w+' in element", "schema-invalid"),
]
# this module's checks that look at the XML alone
INTRINSIC = {"schema-invalid", "boot-order-conflict", "cdrom-on-virtio", "disk-target-bus-mismatch"}


def stem_of(err: Path) -> str:
    name = err.name[:-len(".err")]
    while not (CORPUS / f"{name}.xml").exists() and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@pytest.fixture(scope="module")
def report():
    import contextlib
    import io

    files = sorted(str(p) for p in CORPUS.glob("*.xml"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["--offline", "--format", "json", "preflight", *files])
    return rc, json.loads(out.getvalue()), err.getvalue(), files


def by_stem(doc):
    out: dict[str, list] = {}
    for f in doc["findings"]:
        out.setdefault(Path(f["subject"][len("xml:"):]).stem, []).append(f)
    return out


def test_every_file_is_usable_and_no_check_crashes(report):
    rc, doc, err, files = report
    assert len(files) == 1070
    assert rc in (1, 2) and doc["errors"] == [] and "Traceback" not in err
    assert len(doc["target"]["inputs"]) == 1070
    crashed = sorted({(f["id"], Path(f["subject"]).name, f["message"]) for f in doc["findings"]
                      if f["status"] == "error"})
    assert not crashed, crashed[:10]


@pytest.mark.skipif(not SCHEMA.is_file(), reason="libvirt's schemas are not installed")
def test_schema_verdicts_equal_libvirts(report):
    rc, doc, err, files = report
    stems = by_stem(doc)
    invalid = {s for s, fs in stems.items() if any(f["id"] == "schema-invalid" and f["status"] == "fail" for f in fs)}
    valid = {s for s, fs in stems.items() if any(f["id"] == "schema-invalid" and f["status"] == "pass" for f in fs)}
    assert invalid == SCHEMA_INVALID
    assert len(valid) == 1048 and not valid & invalid
    for s in SCHEMA_INVALID:  # every error is located somewhere in the document, with its line
        for f in stems[s]:
            if f["id"] == "schema-invalid":
                assert f["evidence"]["line"] and f["evidence"]["path"].startswith("/domain")


def expected_slugs():
    out = []
    for err in sorted(CORPUS.glob("*.err")):
        text = err.read_text(errors="replace")
        for pattern, slug in ERR_SLUGS:
            if re.search(pattern, text):
                out.append((stem_of(err), slug))
    return out


def test_catalogue_errors_are_flagged(report):
    rc, doc, err, files = report
    stems = by_stem(doc)
    expected = expected_slugs()
    assert ("boot-dev+order", "boot-order-conflict") in expected and len(expected) >= 7
    missing = [(s, slug) for s, slug in expected
               if not any(f["id"] == slug and f["status"] == "fail" for f in stems.get(s, []))]
    assert not missing, f"preflight does not flag: {missing}"


def test_intrinsic_errors_on_files_without_err_are_true_problems(report):
    rc, doc, err, files = report
    with_err = {stem_of(e) for e in CORPUS.glob("*.err")}
    found = sorted((s, f["id"]) for s, fs in by_stem(doc).items() if s not in with_err
                   for f in fs if f["id"] in INTRINSIC and f["status"] == "fail" and f["severity"] == "error")
    # the only ones: files libvirt's schema rejects (listed in the corpus README, tested without an .err)
    assert all(slug == "schema-invalid" and s in SCHEMA_INVALID for s, slug in found), found
