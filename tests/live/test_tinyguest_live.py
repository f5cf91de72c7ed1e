"""Live: the tiny Linux guest (tinyguest.py) boots Debian's kernel on the real daemon, runs its
snippet, answers the guest agent, and its kernel panic reaches libvirt through pvpanic."""
from __future__ import annotations

import json
import time

import libvirt
import libvirt_qemu

import tinyguest


def test_tinyguest_boots_and_answers_the_agent(define_vm):
    name = "vdtest-tinyguest"
    dom = define_vm(tinyguest.domain_xml(name, "start_agent",
                                         agent=True, panic="isa", on_crash="preserve"))
    dom.create()
    log = tinyguest.wait_for_serial(name, "tinyguest: agent started", 90)
    assert "tinyguest: up" in log
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = json.loads(libvirt_qemu.qemuAgentCommand(dom, '{"execute":"guest-ping"}', 5, 0))
            break
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert reply == {"return": {}}
    assert dom.state() == [libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED]


def test_tinyguest_panic_is_seen_by_libvirt(define_vm):
    name = "vdtest-tinyguest-panic"
    dom = define_vm(tinyguest.domain_xml(name, "echo c > /proc/sysrq-trigger", panic="isa", on_crash="preserve"))
    dom.create()
    tinyguest.wait_for_serial(name, "sysrq triggered crash", 90)
    deadline = time.monotonic() + 10
    while dom.state()[0] != libvirt.VIR_DOMAIN_CRASHED and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dom.state() == [libvirt.VIR_DOMAIN_CRASHED, libvirt.VIR_DOMAIN_CRASHED_PANICKED]
