"""One Root for facts and the remedy engine: host paths resolve below --root, symlinks
followed inside it (absolute targets re-rooted, ".." stopping at the root), and
`fix --root DIR` creates, writes and removes nothing outside DIR."""
from __future__ import annotations

import hashlib
import os

import pytest

from virtdoctor.cli import main
from virtdoctor.facts import HostFacts
from virtdoctor.root import Root


def snapshot(top) -> dict:
    """Every path below `top` with its type, mode, owner, content hash and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [*dirnames, *filenames, "."]:
            p = os.path.normpath(os.path.join(dirpath, name))
            st = os.lstat(p)
            digest = None
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            out[p] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest,
                      os.readlink(p) if os.path.islink(p) else None)
    return out


def test_root_resolves_links_inside_the_root(tmp_path):
    base = tmp_path / "root"
    (base / "srv/log").mkdir(parents=True)
    (base / "var").mkdir()
    os.symlink("/srv/log", base / "var/log")  # absolute: the image's /srv/log
    os.symlink("../../../../../etc", base / "var/up")  # climbs: stops at the root
    os.symlink("loop2", base / "var/loop1")
    os.symlink("loop1", base / "var/loop2")
    r = Root(base)
    assert not r.is_live
    assert r.resolve("/var/log/libvirt") == "/srv/log/libvirt"
    assert r.real("/var/log/libvirt") == str(base / "srv/log/libvirt")
    assert r.resolve("/var/up/passwd") == "/etc/passwd"
    assert r.real("/../../etc/passwd") == str(base / "etc/passwd")
    assert r.real("/var/log", follow=False) == str(base / "var/log")
    assert r.real("/var/loop1") == str(base / "var/loop1")  # a loop: left for the kernel's ELOOP
    assert r.host_path(str(base / "srv/log")) == "/srv/log"
    assert Root("/").real("/etc/passwd") == "/etc/passwd" and Root("/").is_live


def test_facts_read_through_the_same_root(tmp_path):
    base = tmp_path / "root"
    (base / "srv/conf").mkdir(parents=True)
    (base / "srv/conf/qemu.conf").write_text('user = "x"\n')
    (base / "etc").mkdir()
    os.symlink("/srv/conf", base / "etc/libvirt")
    facts = HostFacts(root=str(base), offline=True)
    assert facts.fs == Root(str(base))
    assert facts.read_text("/etc/libvirt/qemu.conf") == 'user = "x"\n'
    assert facts.realpath("/etc/libvirt/qemu.conf") == "/srv/conf/qemu.conf"


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_fix_with_root_touches_nothing_outside(tmp_path, kind):
    """DIR/var/log, DIR/var/lib (backups) and DIR/run (lock) are links pointing out of
    DIR (absolute targets, or relative ones climbing with ".."): the fix still creates the
    log directories, the backups and the lock below DIR, and the outside tree is unchanged."""
    base = tmp_path / "root"
    outside = tmp_path / "outside"
    for d in ("log", "lib", "run"):
        (outside / d).mkdir(parents=True)
    (outside / "log/keep.log").write_text("outside\n")
    (base / "etc/libvirt").mkdir(parents=True)
    (base / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\nlibvirt-qemu:x:64055:108::/:/bin/false\n")
    (base / "etc/group").write_text("root:x:0:\nkvm:x:107:\nlibvirt-qemu:x:108:\n")
    (base / "var").mkdir()
    for name, d in (("var/log", "log"), ("var/lib", "lib"), ("run", "run")):
        if kind == "absolute":
            target = str(outside / d)  # a host path: re-rooted, never this machine's
        else:
            depth = name.count("/")
            target = "../" * (depth + 6) + str(outside / d).lstrip("/")  # climbs past the root
        os.symlink(target, base / name)
    before = snapshot(outside)
    rc = main(["--root", str(base), "--offline", "fix", "--yes", "--only", "daemon-log-dir-missing"])
    assert rc == 0
    assert snapshot(outside) == before
    # what the fix made lives below the root, where the facts see it
    facts = HostFacts(root=str(base), offline=True)
    assert facts.is_dir("/var/log/libvirt/qemu")
    real_log = facts.fs.real("/var/log/libvirt")
    assert real_log.startswith(str(base) + "/") and os.path.isdir(real_log)
    backups = facts.fs.real("/var/lib/virtdoctor/backups")
    assert backups.startswith(str(base) + "/") and os.listdir(backups)
    assert os.path.exists(facts.fs.real("/run/virtdoctor-fix.lock"))
