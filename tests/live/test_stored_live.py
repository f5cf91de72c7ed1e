"""stored-domain-unloadable live: a guest's definition file broken by hand and a copy of another
guest's file under a new name, the daemon restarted: the broken guest is gone from `virsh list
--all`, the daemon log has its own "Failed to load config for domain" lines, and virtdoctor
names the file, the line and the parse error; the manual fix (correct a copy, `virsh define`
it) brings the guest back."""
from __future__ import annotations

import json
import os
import subprocess
import time

import vmhelpers

BROKEN = "vdtest-unl-broken"
KEPT = "vdtest-unl-kept"
COPY_NAME = "vdtest-unl-copy"
COPY = f"/etc/libvirt/qemu/{COPY_NAME}.xml"
LOG = "/var/log/libvirt/libvirtd.log"


def names() -> list[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return [n for n in out.split() if n]


def read_from(offset: int) -> str:
    with open(LOG, encoding="utf-8", errors="replace") as fh:
        fh.seek(offset)
        return fh.read()


def restart(daemon_guard):
    t0 = time.monotonic()
    daemon_guard.stop("libvirtd")
    daemon_guard.restore()
    return time.monotonic() - t0


def test_broken_and_clashing_definitions_after_a_restart(vm_xml, define_vm, daemon_guard, run_virtdoctor,
                                                         tmp_path):
    define_vm(vm_xml(BROKEN))
    define_vm(vm_xml(KEPT))
    path = f"/etc/libvirt/qemu/{BROKEN}.xml"
    good = open(path, encoding="utf-8").read()
    lines = good.splitlines(keepends=True)
    # a hand edit that drops the closing </os> (virsh's own file starts with a comment block)
    idx = next(i for i, line in enumerate(lines) if line.strip() == "</os>")
    broken_text = "".join(lines[:idx] + lines[idx + 1:])
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(broken_text)
        with open(f"/etc/libvirt/qemu/{KEPT}.xml", encoding="utf-8") as fh, open(COPY, "w", encoding="utf-8") as out:
            # a copy renamed by hand, its UUID left as it was
            out.write(fh.read().replace(f"<name>{KEPT}</name>", f"<name>{COPY_NAME}</name>"))
        log_start = os.path.getsize(LOG) if os.path.exists(LOG) else 0
        took = restart(daemon_guard)
        print(f"daemon restart: {took:.2f} s")
        listed = names()
        assert BROKEN not in listed  # the guest is gone
        assert (KEPT in listed) != (COPY_NAME in listed)  # one of the two, by the order readdir gives
        log = read_from(log_start)
        print(log)
        # at start only ONE line names the broken file: the state-init thread already carries an
        # earlier error (D-Bus, dmidecode here), so libvirt's catchXMLError stays silent
        assert f"Failed to load config for domain '{BROKEN}'" in log
        assert "is already defined with uuid" in log

        rc, out, err = run_virtdoctor("--format", "json", "check", "--only", "stored-domain-unloadable")
        doc = json.loads(out)
        fails = [f for f in doc["findings"] if f["status"] == "fail"]
        print(json.dumps(fails, indent=1))
        assert rc == 2
        broken = next(f for f in fails if f["evidence"].get("file") == path)
        assert "gone from `virsh list --all`" in broken["message"]
        assert any(f"Failed to load config for domain '{BROKEN}'" in x for x in broken["evidence"]["daemon_log"])
        clash = next(f for f in fails if COPY in f["evidence"].get("files", []))
        assert f"/etc/libvirt/qemu/{KEPT}.xml" in clash["evidence"]["files"]
        assert "is already defined with uuid" in clash["message"]

        # libvirt's own parser on the same text (virsh define of a copy) gives the line and message
        # the daemon log left out: virtdoctor's finding says the same
        copy = tmp_path / "vdtest-unl-broken-copy.xml"
        copy.write_text(broken_text)
        p = subprocess.run(["virsh", "-c", "qemu:///system", "define", str(copy)], capture_output=True, text=True,
                           timeout=30)
        print(p.stderr)
        assert p.returncode != 0
        libvirt_says = next(line for line in p.stderr.splitlines() if "(domain_definition):" in line)
        libvirt_says = libvirt_says.split("(domain_definition):", 1)[1]  # "LINE: MESSAGE"
        ours = broken["message"].split(": libvirt has not loaded it")[0]
        assert ours == f"{path}:{libvirt_says}", (ours, libvirt_says)

        # the manual fix, as the plan prints it: correct a copy, define it; move the duplicate away
        fixed = tmp_path / f"{BROKEN}.xml"
        fixed.write_text(good)
        subprocess.run(["virsh", "-c", "qemu:///system", "define", "--validate", str(fixed)], check=True,
                       capture_output=True, timeout=30)
        if COPY_NAME in names():  # the copy won: undefine it (libvirt removes its file), define KEPT again
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine", COPY_NAME], check=True,
                           capture_output=True, timeout=30)
        if os.path.exists(COPY):
            os.rename(COPY, tmp_path / "vdtest-unl-copy.xml.duplicate")
        if KEPT not in names():  # the daemon kept the copy: define KEPT again (a fresh connection)
            kept = tmp_path / f"{KEPT}.xml"
            kept.write_text(vm_xml(KEPT))
            subprocess.run(["virsh", "-c", "qemu:///system", "define", str(kept)], check=True,
                           capture_output=True, timeout=30)
        assert BROKEN in names()
        rc, out, err = run_virtdoctor("--format", "json", "check", "--only", "stored-domain-unloadable")
        assert rc == 0, out
    finally:
        if COPY_NAME in names():
            subprocess.run(["virsh", "-c", "qemu:///system", "undefine", COPY_NAME], capture_output=True, timeout=30)
        if os.path.exists(COPY):
            os.unlink(COPY)
        if BROKEN not in names() and os.path.exists(path):
            os.unlink(path)  # not loaded: define_vm cannot undefine it
        vmhelpers.wait_for_uri(vmhelpers.live_uri(), 30).close()
