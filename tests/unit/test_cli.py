"""The command line: exit statuses 0/1/2/3, the JSON document of DESIGN.md, the text report
(grouped by area, no colour off a terminal or with NO_COLOR), usage errors as one line,
--root checks, a URI libvirt rejects, --version, `checks`, and `fix` on a fake root."""
from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from virtdoctor import __version__
from virtdoctor.cli import main

REPO = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[")

PLUGIN = '''
from virtdoctor.api import Fail, Pass, Skip, Warn, check, hookimpl, plan, Auto, MakeDir

@check("vdcli-pass", scope="host", area="alpha", title="always passes")
def vdcli_pass(facts):
    return Pass("fine [not markup]")

@check("vdcli-warn", scope="host", area="beta", severity="warning", title="fails as a warning")
def vdcli_warn(facts):
    return Fail("a small problem")

@check("vdcli-error", scope="host", area="alpha", title="fails as an error")
def vdcli_error(facts):
    return Fail("a real problem", {"why": {"b", "a"}})

@vdcli_error.fixer
def fix_error(finding, facts):
    return plan("create /srv/vdcli", Auto.SAFE, MakeDir("/srv/vdcli", 0o755))

@check("vdcli-skip", scope="uri", area="beta", title="skips")
def vdcli_skip(facts):
    return Skip("nothing to look at")

@check("vdcli-crash", scope="host", area="beta", title="crashes")
def vdcli_crash(facts):
    raise RuntimeError("bug in a check")

import os
from virtdoctor.api import Action


class CreateOnce(Action):
    """Like starting a daemon that is already running: fails when done twice."""

    def __init__(self, path):
        self.path = path
        self.touches = (path,)

    def command(self):
        return f"create {self.path}"

    def apply(self, env):
        os.close(os.open(env.path(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY))


@check("vdcli-marker", scope="host", area="alpha", title="the marker exists")
def vdcli_marker(facts):
    return Pass() if facts.exists("/srv/marker") else Fail("no marker")


@vdcli_marker.fixer
def fix_marker(finding, facts):
    return plan("create the marker", Auto.SAFE, CreateOnce("/srv/marker"))


@hookimpl
def virtdoctor_checks():
    return [vdcli_pass, vdcli_warn, vdcli_error, vdcli_skip, vdcli_crash, vdcli_marker]
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Installs (on sys.path) a plugin with checks whose outcome the tests decide."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vdcli_plugin.py").write_text(PLUGIN)
    info = site / "vdcli-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vdcli\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[virtdoctor]\nvdcli = vdcli_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("VIRTDOCTOR_DISABLE_PLUGINS", raising=False)
    return site


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def root(fake_root):
    fake_root.mkdir("/etc")
    return fake_root


# -- exit statuses ------------------------------------------------------------------

@pytest.mark.parametrize("only, status", [
    pytest.param(["vdcli-pass"], 0, id="pass"),
    pytest.param(["vdcli-pass", "vdcli-skip"], 0, id="pass-and-skip"),
    pytest.param(["vdcli-warn"], 1, id="warning"),
    pytest.param(["vdcli-crash"], 1, id="crashed-check"),
    pytest.param(["vdcli-warn", "vdcli-error"], 2, id="error"),
])
def test_exit_status(plugin, root, capsys, only, status):
    rc, out, err = run(["--offline", "--root", root, "check", "--only", *only], capsys)
    assert rc == status, (out, err)
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    pytest.param(["check", "--only", "no-such-check"], "virtdoctor: unknown check slug: no-such-check", id="only"),
    pytest.param(["check", "--skip", "no-such-check"], "virtdoctor: unknown check slug: no-such-check", id="skip"),
    pytest.param(["check", "--bogus-flag"], "virtdoctor: usage: unrecognized arguments: --bogus-flag", id="option"),
    pytest.param(["no-such-command"], "virtdoctor: usage: argument COMMAND: invalid choice", id="command"),
    pytest.param(["--format", "yaml", "check"], "virtdoctor: usage: argument --format: invalid choice", id="format"),
    pytest.param(["--root", "/nonexistent/vd-root", "check"], "virtdoctor: --root /nonexistent/vd-root: not a directory",
                 id="root-missing"),
    pytest.param(["--root", "/etc/hostname", "check"], "virtdoctor: --root /etc/hostname: not a directory",
                 id="root-is-a-file"),
])
def test_tool_errors_are_one_line_and_status_3(plugin, root, capsys, argv, message):
    rc, out, err = run(["--offline", *argv], capsys)
    assert rc == 3
    assert err.startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert out == ""


def test_unreadable_root_is_status_3():
    """As an unprivileged user (root may read anything): a forked child drops to nobody."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    d = tempfile.mkdtemp(prefix="vd-noread-")
    os.chmod(d, 0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            rc = main(["--offline", "--root", d, "check"])
            sys.stderr.flush()
        except BaseException:
            rc = 99
        os._exit(rc)
    os.close(w)
    with os.fdopen(r) as fh:
        err = fh.read()
    _, status = os.waitpid(pid, 0)
    os.rmdir(d)
    assert os.waitstatus_to_exitcode(status) == 3
    assert err == f"virtdoctor: --root {d}: not readable\n"


def test_no_command_prints_help_and_is_status_3(capsys):
    rc, out, err = run([], capsys)
    assert rc == 3 and "usage: virtdoctor" in out


def test_unexpected_exception_is_one_line(plugin, root, capsys, monkeypatch):
    import virtdoctor.commands.check as check_cmd

    def explode(args, ctx):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(check_cmd, "run", explode)
    monkeypatch.delenv("VIRTDOCTOR_TRACEBACK", raising=False)
    rc, out, err = run(["--offline", "--root", root, "check"], capsys)
    assert rc == 3
    assert err == "virtdoctor: internal error: RuntimeError: something nobody expected\n"


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"virtdoctor {__version__}\n"


# -- the JSON document ---------------------------------------------------------------

FINDING_KEYS = ["id", "status", "severity", "subject", "title", "message", "evidence", "fix"]
SUBJECT = re.compile(r"^(host|domain:.+|xml:.+|uri:.+)$")


def assert_contract(doc, command):
    assert list(doc) == ["virtdoctor", "command", "target", "summary", "findings"] or \
        set(doc) >= {"virtdoctor", "command", "target", "summary", "findings"}
    assert doc["virtdoctor"] == __version__ and doc["command"] == command
    assert isinstance(doc["target"], dict)
    assert list(doc["summary"]) == ["pass", "fail", "skip", "error"]
    assert all(type(v) is int for v in doc["summary"].values())
    counts = {k: 0 for k in doc["summary"]}
    for f in doc["findings"]:
        assert list(f) == FINDING_KEYS, f
        assert f["status"] in ("pass", "fail", "skip", "error")
        assert f["severity"] in ("error", "warning", "info")
        assert SUBJECT.match(f["subject"]), f["subject"]
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", f["id"])
        assert isinstance(f["title"], str) and f["title"]
        assert isinstance(f["message"], str) and f["message"]
        assert isinstance(f["evidence"], dict)
        if f["fix"] is not None:
            assert list(f["fix"]) == ["summary", "commands", "auto"]
            assert isinstance(f["fix"]["summary"], str)
            assert all(isinstance(c, str) for c in f["fix"]["commands"])
            assert f["fix"]["auto"] in ("safe", "unsafe", "manual")
        counts[f["status"]] += 1
    assert counts == doc["summary"]


def test_json_document(plugin, root, capsys):
    rc, out, err = run(["--offline", "--root", root, "--format", "json", "check", "--only",
                        "vdcli-pass,vdcli-warn,vdcli-error,vdcli-skip,vdcli-crash"], capsys)
    assert rc == 2
    doc = json.loads(out)
    assert_contract(doc, "check")
    assert list(doc) == ["virtdoctor", "schema", "command", "target", "started_at", "duration_s", "summary",
                         "findings"]  # contract v2: v1's keys in v1's order, v2's added
    assert doc["schema"] == 2 and doc["duration_s"] >= 0 and doc["started_at"].endswith("Z")
    assert doc["summary"] == {"pass": 1, "fail": 2, "skip": 1, "error": 1}
    assert doc["target"]["root"] == str(root) and doc["target"]["uri"] is None  # --offline: no URI claimed
    assert doc["target"]["facts_source"] == "root" and doc["target"]["hostname"] == doc["target"]["host"]
    by_id = {f["id"]: f for f in doc["findings"]}
    assert by_id["vdcli-error"]["evidence"] == {"why": ["a", "b"]}
    assert by_id["vdcli-error"]["fix"] == {"summary": "create /srv/vdcli", "commands": ["mkdir -p -m 0755 /srv/vdcli"],
                                           "auto": "safe"}
    assert by_id["vdcli-warn"]["severity"] == "warning"
    assert by_id["vdcli-skip"]["subject"].startswith("uri:") and by_id["vdcli-skip"]["severity"] == "info"
    assert by_id["vdcli-crash"]["status"] == "error"
    assert by_id["vdcli-crash"]["message"] == "check crashed: RuntimeError: bug in a check"


def test_json_of_every_builtin_check_on_an_empty_root(root, capsys):
    rc, out, err = run(["--offline", "--no-plugins", "--root", root, "--format", "json", "check"], capsys)
    assert rc in (0, 1, 2), err
    doc = json.loads(out)
    assert_contract(doc, "check")
    assert doc["findings"], "the built-in checks report on an empty root"
    assert "Traceback" not in err


def test_a_uri_libvirt_rejects_is_a_finding_not_a_traceback(plugin, capsys):
    rc, out, err = run(["-c", "bogus:///x", "--format", "json", "check"], capsys)
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err
    doc = json.loads(out)
    assert_contract(doc, "check")
    assert doc["target"]["uri"] == "bogus:///x"
    skips = [f for f in doc["findings"] if f["status"] == "skip" and "bogus" in f["message"]]
    assert skips, "the checks that need the connection say why they skipped"


# -- the text report -------------------------------------------------------------------

def test_text_is_grouped_by_area_without_colour_off_a_terminal(plugin, root, capsys):
    rc, out, err = run(["--offline", "--root", root, "check", "--only",
                        "vdcli-pass,vdcli-warn,vdcli-error,vdcli-skip,vdcli-crash"], capsys)
    assert rc == 2
    assert not ANSI.search(out)
    lines = out.splitlines()
    alpha, beta = lines.index("alpha (1 passed)"), lines.index("beta")
    assert alpha < beta
    assert "  FAIL  vdcli-error: a real problem" in lines[alpha:beta]
    assert "        fix: create /srv/vdcli (safe)" in lines[alpha:beta]
    assert "          $ mkdir -p -m 0755 /srv/vdcli" in lines[alpha:beta]
    assert "  WARN  vdcli-warn: a small problem" in lines[beta:]
    assert any(l.startswith("  skip  vdcli-skip uri:") and l.endswith(": nothing to look at") for l in lines)
    assert "  ERROR vdcli-crash: check crashed: RuntimeError: bug in a check" in lines
    assert "1 ok, 1 errors, 1 warnings, 1 skipped, 1 checks crashed" in lines
    assert "vdcli-pass" not in out  # passes are counted, not listed, without -v
    rc, out, err = run(["--offline", "--root", root, "check", "-v", "--only", "vdcli-pass"], capsys)
    assert "  ok    vdcli-pass: fine [not markup]" in out.splitlines()


def _on_a_terminal(args, env_extra):
    """Run virtdoctor with its stdout on a pseudo-terminal; the bytes it wrote."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="120", **env_extra)
    proc = subprocess.Popen([sys.executable, "-m", "virtdoctor", *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=env, cwd=str(REPO))
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")


def test_colour_on_a_terminal_and_none_with_no_color(plugin, root):
    args = ["--offline", "--root", str(root), "check", "--only", "vdcli-error,vdcli-warn"]
    env = {"PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
    rc, out = _on_a_terminal(args, env)
    assert rc == 2 and "vdcli-error" in out
    assert ANSI.search(out), "colour on a terminal"
    rc, out = _on_a_terminal(args, {**env, "NO_COLOR": "1"})
    assert rc == 2 and "vdcli-error" in out
    assert not ANSI.search(out), repr(out[:300])


def test_text_is_the_same_in_every_locale(plugin, root):
    outs = set()
    for lang in ("C", "C.UTF-8", "de_DE.UTF-8"):
        env = {**os.environ, "LANG": lang, "LC_ALL": lang,
               "PYTHONPATH": os.pathsep.join([str(plugin), str(REPO)])}
        proc = subprocess.run([sys.executable, "-m", "virtdoctor", "--offline", "--root", str(root), "check",
                               "--only", "vdcli-error"], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2, proc.stderr
        outs.add(proc.stdout)
    assert len(outs) == 1


# -- `checks` and `--no-plugins` ------------------------------------------------------------

def test_checks_listing(plugin, capsys):
    rc, out, err = run(["checks"], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert "daemon" in lines and "kvm" in lines
    assert any(l.split()[:1] == ["daemon-socket-missing"] and "(fixable)" in l for l in lines)
    assert any(l.split()[:1] == ["vdcli-error"] for l in lines)
    assert re.fullmatch(r"\d+ checks", lines[-1])
    rc, out, err = run(["--format", "json", "checks"], capsys)
    rows = json.loads(out)["checks"]
    assert len(rows) == int(lines[-1].split()[0])
    for r in rows:
        assert set(r) == {"id", "scope", "area", "severity", "title", "fix", "plugin"}
        assert r["scope"] in ("host", "domain", "uri") and r["fix"] in ("auto", "advice")
    mine = next(r for r in rows if r["id"] == "vdcli-error")
    assert (mine["plugin"], mine["fix"], mine["area"]) == ("vdcli_plugin", "auto", "alpha")
    rc, out, err = run(["--no-plugins", "--format", "json", "checks"], capsys)
    assert "vdcli-error" not in {r["id"] for r in json.loads(out)["checks"]}


def test_disable_plugins_env(plugin, capsys, monkeypatch):
    monkeypatch.setenv("VIRTDOCTOR_DISABLE_PLUGINS", "1")
    rc, out, err = run(["--format", "json", "checks"], capsys)
    assert "vdcli-error" not in {r["id"] for r in json.loads(out)["checks"]}


def test_global_options_after_the_subcommand(plugin, root, capsys):
    rc, out, err = run(["check", "--offline", "--root", root, "--format", "json", "--only", "vdcli-pass"], capsys)
    assert rc == 0 and json.loads(out)["summary"]["pass"] == 1


# -- fix on a fake root ----------------------------------------------------------------------

def test_fix_dry_run_then_yes_then_nothing_to_do(plugin, root, capsys, tmp_path):
    base = ["--offline", "--root", root]
    backup = tmp_path / "backups"
    rc, out, err = run([*base, "fix", "--dry-run", "--only", "vdcli-error"], capsys)
    assert rc == 1
    assert "would" in out.lower() or "Nothing was changed" in out
    assert not root.path("/srv/vdcli").exists()

    rc, out, err = run([*base, "--format", "json", "fix", "--only", "vdcli-error"], capsys)
    doc = json.loads(out)  # not a terminal and no --yes: plans only
    assert rc == 1 and [a["status"] for a in doc["actions"]] == ["planned"]
    assert not root.path("/srv/vdcli").exists()

    rc, out, err = run([*base, "--format", "json", "fix", "--yes", "--backup-dir", backup, "--only", "vdcli-error"],
                       capsys)
    doc = json.loads(out)
    assert_contract(doc, "fix")
    [action] = doc["actions"]
    # the plugin's check never passes, so the fix cannot be verified: it is rolled back
    assert (action["status"], action["applied"], action["verified"]) == ("rolled-back", True, False)
    assert action["backup"].startswith(str(backup))
    assert not root.path("/srv/vdcli").exists()
    assert rc == 2


def test_fix_of_a_builtin_check_on_a_fake_root(root, capsys, tmp_path):
    """daemon-log-dir-missing on a root without /var/log/libvirt: fixed and verified."""
    root.mkdir("/var/log")
    base = ["--offline", "--no-plugins", "--root", root]
    rc, out, err = run([*base, "--format", "json", "check", "--only", "daemon-log-dir-missing"], capsys)
    assert rc == 2 and json.loads(out)["findings"][0]["status"] == "fail"
    rc, out, err = run([*base, "--format", "json", "fix", "--yes", "--only", "daemon-log-dir-missing"], capsys)
    doc = json.loads(out)
    [action] = doc["actions"]
    assert (action["status"], action["applied"], action["verified"]) == ("fixed", True, True), action
    assert rc == 0
    assert root.path("/var/log/libvirt/qemu").is_dir()
    assert oct(root.path("/var/log/libvirt").stat().st_mode & 0o777) == oct(0o700)
    assert action["backup"].startswith(str(root.path("/var/lib/virtdoctor/backups")))
    rc, out, err = run([*base, "fix", "--yes", "--only", "daemon-log-dir-missing"], capsys)
    assert rc == 0 and "Nothing to fix" in out


def test_a_plan_made_stale_while_waiting_for_the_lock_does_not_run(plugin, root, capsys, tmp_path):
    """Another fix run holds the lock and repairs the host meanwhile: this run's plan, made
    before it got the lock, must not run again (here it would fail: the marker exists)."""
    root.mkdir("/srv")
    other = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        from virtdoctor.remedy import FixLock
        with FixLock({str(root.path("/run/virtdoctor-fix.lock"))!r}):
            print("held", flush=True)
            time.sleep(1.5)
            open({str(root.path("/srv/marker"))!r}, "w").close()
        """)], stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert other.stdout.readline().strip() == "held"
        rc, out, err = run(["--offline", "--root", root, "--format", "json", "fix", "--yes", "--only", "vdcli-marker",
                            "--backup-dir", tmp_path / "b"], capsys)
    finally:
        other.wait(timeout=30)
    doc = json.loads(out)
    assert doc["findings"][0]["status"] == "fail"  # planned before the lock
    [action] = doc["actions"]
    assert (action["status"], action["applied"], action["detail"]) == ("skipped", False, "passes now: fixed meanwhile")
    assert rc == 0
