"""facts.logs: one regex for a daemon log line, the readers behind facts.logs."""
from __future__ import annotations

import pytest

from virtdoctor.facts.logs import DAEMON_LINE, QEMU_LINE, START_MARK, log_time
from virtdoctor.model import FactUnavailable

# the shapes of src/util/virlog.c and src/qemu/qemu_process.c, as written on this host's libvirt 9.0.0
LINE = "2026-11-25 21:02:33.018+0000: 21630: error : qemuValidateDomainDef:1294 : unsupported configuration: x"


def test_one_daemon_line_regex_gives_every_field():
    m = DAEMON_LINE.match(LINE)
    assert (m["level"], m["thread"], m["function"], m["lineno"], m["msg"]) == \
        ("error", "21630", "qemuValidateDomainDef", "1294", "unsupported configuration: x")
    assert DAEMON_LINE.match("2026-11-25 21:02:33+0000: 7: info : libvirt version: 9.0.0")["function"] is None
    assert START_MARK.match("2026-11-25 21:02:22.673+0000: starting up libvirt version: 9.0.0, package: 1")
    assert QEMU_LINE.match("2026-11-25T21:02:33.018642Z qemu-system-x86_64: -blockdev x: Could not open")["msg"]
    assert log_time("2026-11-25 21:02:22.673+0000").microsecond == 673000 and log_time("nonsense") is None


def test_facts_logs_reads_below_the_root(fake_root):
    fake_root.write("/var/log/libvirt/libvirtd.log", "junk\n" + LINE.replace("x", "vdtest-a broke") + "\n  tail\n")
    fake_root.write("/var/log/libvirt/qemu/vdtest-a.log",
                    "2026-11-25 21:02:22.673+0000: starting up libvirt version: 9.0.0\nLC_ALL=C \\\n/usr/bin/qemu \\\n"
                    "-name a\nqemu: boom\n")
    fake_root.write("/var/log/audit/audit.log", "type=VIRT_CONTROL msg=a\ntype=SYSCALL msg=b\n")
    logs = fake_root.facts().logs
    lines, problems = logs.daemon_records("vdtest-a", None)
    assert lines == [LINE.replace("x", "vdtest-a broke"), "  tail"] and problems == []
    q = logs.qemu_log("vdtest-a")
    assert q.lines[-1] == "qemu: boom" and q.command_lines == 3 and q.attempts == 1
    assert logs.audit("VIRT_CONTROL") == ["type=VIRT_CONTROL msg=a"]
    with pytest.raises(FactUnavailable):
        logs.journal()  # no systemd journal below this root
