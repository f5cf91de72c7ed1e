"""Text output: on a terminal, long finding lines wrap at its width with a hanging indent
under the finding, at spaces; not on a terminal, every finding stays one line."""
from __future__ import annotations

import io

from rich.console import Console

from virtdoctor.model import Auto, Finding, FixInfo, Severity, Status
from virtdoctor.render.text import render_findings

MESSAGE = ("user 'libvirt-qemu' from qemu.conf does not exist in /etc/passwd: the daemon fails with "
           "\"invalid argument: Failed to parse user 'libvirt-qemu'\" and \"Initialization of QEMU state "
           "driver failed\"")
FIX = "Create QEMU's account, or point qemu.conf at an existing one that the daemon can use"


def finding():
    return Finding("qemu-user-missing", Status.FAIL, Severity.ERROR, "host", "QEMU's user exists", MESSAGE,
                   fix=FixInfo(FIX, ["useradd --system --no-create-home --shell /usr/sbin/nologin --gid kvm "
                                     "libvirt-qemu"], Auto.SAFE), area="daemon")


def render(terminal: bool, width: int = 60) -> list[str]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=width, color_system=None, no_color=True,
                      highlight=False, soft_wrap=True, emoji=False)
    render_findings(console, [finding()], fix_hint=False)
    return out.getvalue().splitlines()


def test_terminal_wraps_with_a_hanging_indent():
    lines = render(True)
    start = next(i for i, ln in enumerate(lines) if "qemu-user-missing" in ln)
    fix = next(i for i, ln in enumerate(lines) if ln.startswith("        fix: "))
    cmd = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("$ useradd"))
    assert all(len(ln) <= 60 for ln in lines[start:cmd])
    assert fix - start > 2  # the finding took several lines
    assert all(ln.startswith(" " * 8) and not ln.startswith(" " * 9) for ln in lines[start + 1:fix])
    assert all(ln.startswith(" " * 13) for ln in lines[fix + 1:cmd])
    words = " ".join(ln.strip() for ln in lines[start:fix])
    assert words.endswith(MESSAGE)  # wrapped at spaces: no word was cut
    assert " ".join(ln.strip() for ln in lines[fix:cmd]).startswith("fix: " + FIX)
    assert lines[cmd].strip().startswith("$ useradd") and lines[cmd].strip().endswith("libvirt-qemu")  # whole


def test_not_a_terminal_keeps_one_line_per_finding():
    lines = render(False, width=100)
    assert any(ln == f"  FAIL  qemu-user-missing: {MESSAGE}" for ln in lines)
    assert any(ln == f"        fix: {FIX} (safe)" for ln in lines)
