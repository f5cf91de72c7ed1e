"""facts.daemon: the daemon layout decided once (mode, config in effect, arguments)."""
from __future__ import annotations

import dataclasses

import pytest

from virtdoctor.facts import HostFacts, Proc
from virtdoctor.facts.daemon import config_arg, has_listen, parse_env_file, parse_unit
from virtdoctor.facts.procs import is_zombie, stat_state

DEBIAN_DEFAULT = '# Customizations\n#LIBVIRTD_ARGS="--timeout 120"\nLIBVIRTD_ARGS="--listen -f /etc/libvirt/alt.conf"\n'
UNIT = """[Unit]
Description=Virtualization daemon

[Service]
Type=notify
EnvironmentFile=-/etc/default/libvirtd
ExecStart=/usr/sbin/libvirtd $LIBVIRTD_ARGS
"""


def exe(root, name):
    root.write(f"/usr/sbin/{name}", "#!/bin/sh\n", 0o755)


def facts(root, procs=(), **kw):
    return HostFacts(root=str(root), processes_override=list(procs), **kw)


def test_running_daemon_decides_and_gives_its_args(fake_root):
    exe(fake_root, "libvirtd")
    fake_root.write("/proc/7/stat", "7 (libvirtd) S 1 7 7 0")
    layout = facts(fake_root, [Proc(7, "libvirtd", ("/usr/sbin/libvirtd", "-d", "--config", "/etc/x.conf"))]).daemon
    assert (layout.mode, layout.daemon, layout.why) == ("monolithic", "libvirtd", "libvirtd runs")
    assert layout.conf == "/etc/x.conf" and layout.serving.args_source == "pid 7"
    assert not layout.serving.listen


def test_zombie_is_not_running(fake_root):
    exe(fake_root, "libvirtd")
    exe(fake_root, "virtqemud")
    fake_root.write("/proc/9/stat", "9 (virt qemud) (x)) Z 1 9 9 0")
    f = facts(fake_root, [Proc(9, "virtqemud", ("virtqemud",))])
    assert f.running("virtqemud") == []
    assert f.daemon.mode == "monolithic" and f.daemon.why == "libvirtd is installed"


def test_modular_by_socket_and_by_install(fake_root):
    exe(fake_root, "virtqemud")
    assert facts(fake_root).daemon.mode == "modular"  # only virtqemud installed
    exe(fake_root, "libvirtd")
    assert facts(fake_root).daemon.mode == "monolithic"
    fake_root.write("/run/libvirt/virtqemud-sock", "")
    layout = facts(fake_root).daemon
    assert layout.mode == "modular" and layout.conf == "/etc/libvirt/virtqemud.conf"


def test_systemd_unit_drop_in_and_environment_file(fake_root):
    exe(fake_root, "libvirtd")
    fake_root.mkdir("/run/systemd/system")
    fake_root.write("/lib/systemd/system/libvirtd.service", UNIT)
    fake_root.write("/etc/default/libvirtd", DEBIAN_DEFAULT)
    layout = facts(fake_root).daemon
    d = layout.serving
    assert d.args == ("/usr/sbin/libvirtd", "--listen", "-f", "/etc/libvirt/alt.conf")
    assert d.args_source == "systemd libvirtd.service" and d.listen and layout.conf == "/etc/libvirt/alt.conf"
    # a drop-in resets ExecStart and names another environment file (RHEL style)
    fake_root.write("/etc/systemd/system/libvirtd.service.d/override.conf",
                    "[Service]\nEnvironmentFile=/etc/sysconfig/libvirtd\nExecStart=\n"
                    "ExecStart=/usr/sbin/libvirtd --timeout 120 $LIBVIRTD_ARGS\n")
    fake_root.write("/etc/sysconfig/libvirtd", "LIBVIRTD_ARGS='--config /etc/libvirt/rhel.conf'\n")
    d = facts(fake_root).daemon.serving
    assert d.args == ("/usr/sbin/libvirtd", "--timeout", "120", "--config", "/etc/libvirt/rhel.conf")
    assert d.args_source == "systemd libvirtd.service (+ override.conf)" and not d.listen
    assert d.unit.dropins == ("/etc/systemd/system/libvirtd.service.d/override.conf",)


def test_without_systemd_the_default_file_gives_the_args(fake_root):
    exe(fake_root, "libvirtd")
    fake_root.write("/lib/systemd/system/libvirtd.service", UNIT)  # installed, but systemd is not the init
    fake_root.write("/etc/default/libvirtd", DEBIAN_DEFAULT)
    d = facts(fake_root).daemon.serving
    assert d.args_source == "/etc/default/libvirtd (LIBVIRTD_ARGS)" and d.listen
    fake_root.write("/etc/default/libvirtd", '#LIBVIRTD_ARGS="--listen"\n')
    d = facts(fake_root).daemon.serving
    assert d.args_source == "default" and d.conf == "/etc/libvirt/libvirtd.conf"


def test_enabled_socket_units(fake_root):
    fake_root.mkdir("/etc/systemd/system/sockets.target.wants")
    for unit in ("libvirtd.socket", "libvirtd-tls.socket", "dbus.socket"):
        fake_root.write(f"/etc/systemd/system/sockets.target.wants/{unit}", "")
    assert [s.rsplit("/", 1)[1] for s in facts(fake_root).daemon.sockets] == ["libvirtd-tls.socket",
                                                                             "libvirtd.socket"]


@pytest.mark.parametrize("args, conf, listen", [
    (("libvirtd", "-d"), None, False), (("libvirtd", "-dl"), None, True), (("libvirtd", "--listen"), None, True),
    (("libvirtd", "-f", "/a"), "/a", False), (("libvirtd", "--config=/b", "-l"), "/b", True),
])
def test_command_line_helpers(args, conf, listen):
    assert config_arg(args) == conf and has_listen(args) is listen


def test_parsers():
    assert parse_env_file('A="x y" # c\nexport B=1\n#C=2\n') == {"A": "x y", "B": "1"}
    assert parse_unit("[Service]\nExecStart=/a \\\n  b\n[Install]\nExecStart=no\n") == {"ExecStart": ["/a b"]}
    assert stat_state("1 (a) b) R 0") == "R" and is_zombie("5 (x) X 1") and not is_zombie(None)


def test_facts_are_immutable_and_memo_is_per_object(fake_root):
    f = facts(fake_root)
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.root = "/"
    calls = []
    assert f.memo("k", lambda: calls.append(1) or 5) == 5 and f.memo("k", lambda: calls.append(1)) == 5
    g = dataclasses.replace(f, euid=1000)
    assert g.euid == 1000 and g.memo("k", lambda: 6) == 6 and calls == [1]
    assert f.source == "root" and f.unfed("files") is None and "--root" in f.unfed("live")
    assert f.unfed("proc") is None  # processes were given
    assert "no processes" in HostFacts(root=str(fake_root)).unfed("proc")
    assert HostFacts(root=str(fake_root), environ={"SUDO_USER": "ann"}).env("SUDO_USER") == "ann"
