"""Progress goes to stderr on a terminal only: never on stdout, never when stderr is not a TTY."""
from __future__ import annotations

import io
import json
import sys

from virtdoctor.cli import main


class TTY(io.StringIO):
    def isatty(self):
        return True


LINE = ("2026-11-25 20:00:58.119+0000: 1240: error : qemuProcessStart:7712 : "
        "Could not access KVM kernel module: Permission denied\n")


def test_explain_log_progress_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    from virtdoctor.commands import explain

    monkeypatch.setattr(explain, "_PROGRESS_FROM", 0)
    log = tmp_path / "big.log"
    log.write_text(LINE * 2000)
    err = TTY()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["--format", "json", "explain", "--log", str(log)]) == 0
    doc = json.loads(capsys.readouterr().out)  # stdout is the JSON document alone
    assert doc["matches"][0]["count"] == 2000
    assert "reading big.log" in err.getvalue()

    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    assert main(["--format", "json", "explain", "--log", str(log)]) == 0
    assert json.loads(capsys.readouterr().out)["matches"][0]["count"] == 2000
    assert plain.getvalue() == ""


def test_preflight_progress_on_a_terminal(tmp_path, monkeypatch, capsys):
    from virtdoctor.commands import preflight

    monkeypatch.setattr(preflight, "PROGRESS_FROM", 1)
    xml = tmp_path / "d.xml"
    xml.write_text("<domain type='kvm'><name>p</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    err = TTY()
    monkeypatch.setattr(sys, "stderr", err)
    main(["--offline", "--format", "json", "preflight", str(xml)])
    assert json.loads(capsys.readouterr().out)["command"] == "preflight"
    assert "checking" in err.getvalue()
