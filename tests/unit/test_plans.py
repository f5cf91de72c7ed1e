"""Plans are data: every action kind serialises to JSON and back; domain edits are
operations re-applied to the XML with secrets; `fix --dry-run --format json` prints the
plans, `fix --plan FILE` applies a saved plan only while its check still fails the same way;
each fixer runs once per run; backups list and undo (refused when the host changed since);
rollback errors are reported, not swallowed."""
from __future__ import annotations

import json
import os

import pytest

from virtdoctor import engine, remedy
from virtdoctor.api import Auto, Fail, check
from virtdoctor.cli import build_parser, main
from virtdoctor.context import Context
from virtdoctor.remedy import edits
from virtdoctor.remedy.plan import (ACTION_KINDS, DefineDomain, DefineNetwork, EditDomain, FixPlan, MakeDir,
                                    PersistModule, RemoveAcl, RestartDaemon, RunCommand, SetConfKey, SetGroup,
                                    SetMode, StartNetwork, WriteFile, plan)

OLD = """<domain type='kvm'>
  <name>vm</name>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'><source file='/a.img'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
    <graphics type='vnc' port='-1' autoport='yes'/>
  </devices>
</domain>
"""


def test_every_action_kind_round_trips_through_json():
    actions = [WriteFile("/etc/x", "a\n", 0o600), SetConfKey("/etc/libvirt/qemu.conf", "user", "libvirt-qemu"),
               SetConfKey("/etc/libvirt/qemu.conf", "cgroup_device_acl", ["/dev/null", "/dev/kvm"]),
               MakeDir("/var/log/libvirt"), SetMode("/dev/kvm", 0o660), SetGroup("/dev/kvm", "kvm"),
               RemoveAcl("/dev/kvm"), PersistModule("/etc/modules-load.d/virtdoctor.conf", "tun"),
               RunCommand(["modprobe", "tun"], "load tun", wait_for="/dev/net/tun", undo=["modprobe", "-r", "tun"]),
               RestartDaemon("libvirtd", (42,), "/run/libvirt/libvirt-sock"),
               DefineDomain("vm", OLD.replace("hd", "cdrom"), OLD),
               EditDomain("vm", OLD.replace("'hd'", "'cdrom'"), OLD),
               StartNetwork("default"), DefineNetwork("default", "<network/>", "/usr/share/libvirt/networks/default.xml")]
    assert {a.kind for a in actions} == set(ACTION_KINDS)  # every kind is covered
    p = plan("everything", Auto.UNSAFE, *actions, notes=["a note"])
    doc = json.loads(json.dumps(p.to_dict()))
    assert [a["kind"] for a in doc["actions"]] == [a.kind for a in actions]
    assert [a["command"] for a in doc["actions"]] == p.commands
    back = FixPlan.from_dict(doc)
    assert back == p and back.commands == p.commands
    with pytest.raises(ValueError, match="unknown action kind"):
        FixPlan.from_dict({"summary": "x", "auto": "safe", "actions": [{"kind": "format-disk"}]})


def test_edit_operations_are_data_and_keep_secrets():
    new = (OLD.replace("<boot dev='hd'/>", "")
              .replace("<target dev='vda' bus='virtio'/>", "<target dev='vda' bus='virtio'/><boot order='1'/>")
              .replace("bus='sata'/></disk>", "bus='sata'/></disk>\n    <controller type='usb' model='none'/>"))
    act = EditDomain("vm", new, OLD)
    kinds = sorted(op.op for op in act.ops)
    assert kinds == ["insert-element", "insert-element", "remove-element"], act.ops
    assert all(isinstance(op, edits.EditOp) for op in act.ops)
    # the XML with secrets (what the daemon gives a read-write connection) keeps its password
    secure = OLD.replace("autoport='yes'/>", "autoport='yes' passwd='s3cret'/>")
    out = edits.apply_ops(secure, act.ops)
    assert "passwd='s3cret'" in out and "<boot dev='hd'/>" not in out
    assert "<boot order='1'/>" in out and "<controller type='usb' model='none'/>" in out
    assert out.index("<controller") > out.index("device='cdrom'")
    # a path that no longer resolves is a conflict, not a silent wrong edit
    with pytest.raises(edits.EditConflict):
        edits.apply_ops(OLD.replace("<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>", ""),
                        act.ops + (edits.EditOp("set-attribute", ("domain[1]", "devices[1]", "disk[2]"), "x", "1"),))


# -- a fake host whose log directories are missing -------------------------------------------
@pytest.fixture
def host(fake_root):
    fake_root.mkdir("/etc/libvirt")
    fake_root.passwd([("root", 0, 0)])
    fake_root.group([("root", 0), ("kvm", 107)])
    fake_root.mkdir("/var/log")
    return fake_root


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_prints_plans_as_data_and_a_saved_plan_applies(host, tmp_path, capsys):
    base = ["--root", host, "--offline", "--format", "json", "fix", "--only", "daemon-log-dir-missing"]
    rc, out, err = cli(capsys, *base, "--dry-run")
    doc = json.loads(out)
    (act,) = doc["actions"]
    assert act["status"] == "planned" and rc == 1
    assert [a["kind"] for a in act["plan"]["actions"]] == ["mkdir", "mkdir"]
    assert [a["path"] for a in act["plan"]["actions"]] == ["/var/log/libvirt", "/var/log/libvirt/qemu"]
    assert not host.path("/var/log/libvirt").exists()
    saved = tmp_path / "plan.json"
    saved.write_text(out)
    rc, out, err = cli(capsys, *base, "--plan", saved)
    assert rc == 0, (out, err)
    assert json.loads(out)["actions"][0]["status"] == "fixed"
    assert host.path("/var/log/libvirt/qemu").is_dir()


def test_a_stale_saved_plan_is_refused(host, tmp_path, capsys):
    base = ["--root", host, "--offline", "--format", "json", "fix", "--only", "daemon-log-dir-missing"]
    rc, out, err = cli(capsys, *base, "--dry-run")
    saved = tmp_path / "plan.json"
    saved.write_text(out)
    host.mkdir("/var/log/libvirt", 0o700)  # half fixed meanwhile: the check now plans one mkdir
    rc, out, err = cli(capsys, *base, "--plan", saved)
    (act,) = json.loads(out)["actions"]
    assert rc == 2 and act["status"] == "failed" and "stale plan" in act["detail"]
    assert not host.path("/var/log/libvirt/qemu").exists()
    rc, out, err = cli(capsys, *base, "--plan", tmp_path / "nothing.json")
    assert rc == 3 and "no such file" in err


def test_list_backups_and_undo(host, capsys):
    common = ["--root", host, "--offline"]
    rc, out, err = cli(capsys, *common, "fix", "--yes", "--only", "daemon-log-dir-missing")
    assert rc == 0 and host.path("/var/log/libvirt/qemu").is_dir()
    rc, out, err = cli(capsys, *common, "--format", "json", "fix", "--list-backups")
    (b,) = json.loads(out)["backups"]
    assert b["id"] == "daemon-log-dir-missing" and b["state"] == "fixed" and b["subject"] == "host"
    assert b["actions"] == ["mkdir -p -m 0700 /var/log/libvirt", "mkdir -p -m 0700 /var/log/libvirt/qemu"]
    # the host changed since the fix: undo refuses, one line, exit 3
    host.write("/var/log/libvirt/libvirtd.log", "the daemon wrote this\n")
    rc, out, err = cli(capsys, *common, "fix", "--undo", b["name"])
    assert rc == 3 and "changed since the fix" in err and len(err.strip().splitlines()) == 1
    assert host.path("/var/log/libvirt/libvirtd.log").exists()
    os.unlink(host.path("/var/log/libvirt/libvirtd.log"))
    rc, out, err = cli(capsys, *common, "fix", "--undo", b["name"])
    assert rc == 0, err
    assert not host.path("/var/log/libvirt").exists() and host.path("/var/log").is_dir()
    rc, out, err = cli(capsys, *common, "fix", "--undo", b["name"])
    assert rc == 3 and "already undone" in err
    rc, out, err = cli(capsys, *common, "fix", "--list-backups")
    assert "undone" in out


def test_undo_restores_content_mode_and_refuses_after_a_change(fake_root, tmp_path):
    conf = fake_root.write("/etc/libvirt/qemu.conf", '# mine\nuser = "nobody"\n', mode=0o600)
    env = remedy.Env(root=str(fake_root))
    p = plan("x", Auto.SAFE, SetConfKey("/etc/libvirt/qemu.conf", "user", "libvirt-qemu"),
             SetMode("/etc/libvirt/qemu.conf", 0o640), WriteFile("/etc/new.conf", "new\n"))
    out = remedy.apply_plan(p, env, "qemu-user-missing", "host", lambda: (True, ""), str(tmp_path / "b"))
    assert out.status == "fixed"
    manifest = json.loads(open(os.path.join(out.backup, "manifest.json")).read())
    assert manifest["state"] == "fixed" and manifest["plan"] == p.to_dict()
    assert manifest["after"]["files"]["/etc/libvirt/qemu.conf"]["mode"] == 0o640
    conf.write_text(conf.read_text() + "# edited later\n")
    from virtdoctor.model import ToolError

    with pytest.raises(ToolError, match=r"/etc/libvirt/qemu.conf changed since the fix \(content"):
        remedy.undo(remedy.Env(root=str(fake_root)), out.backup)
    conf.write_text('# mine\nuser = "libvirt-qemu"\n')
    backup, errors = remedy.undo(remedy.Env(root=str(fake_root)), out.backup)
    assert errors == [] and backup.state == "undone"
    assert conf.read_text() == '# mine\nuser = "nobody"\n' and conf.stat().st_mode & 0o777 == 0o600
    assert not fake_root.path("/etc/new.conf").exists()


def test_rollback_errors_are_reported(fake_root, tmp_path):
    def runner(argv):
        if argv[0] == "svc-stop":
            raise remedy.ActionError("svc-stop: the service manager is gone")

    env = remedy.Env(root=str(fake_root), run=runner)
    p = plan("x", Auto.SAFE, RunCommand(["svc-start"], undo=["svc-stop"]))
    out = remedy.apply_plan(p, env, "x", "host", lambda: (False, "still"), str(tmp_path / "b"))
    assert out.status == "rolled-back"
    assert out.rollback_errors and "the service manager is gone" in out.rollback_errors[0]
    assert "rollback incomplete" in out.detail and out.to_dict()["rollback_errors"] == out.rollback_errors
    manifest = json.loads(open(os.path.join(out.backup, "manifest.json")).read())
    assert manifest["state"] == "rolled-back" and manifest["errors"]


def test_a_fixer_runs_once_per_fix_run(host, capsys, monkeypatch):
    calls = []

    @check("vdtest-once", scope="host", area="x", title="fails once")
    def once(facts):
        return Fail("broken")

    @once.fixer
    def fix_once(finding, facts):
        calls.append(1)
        return plan("make a dir", Auto.SAFE, MakeDir("/srv/vdtest-once", 0o755))

    args = build_parser().parse_args(["--root", str(host), "--offline", "--format", "json", "fix", "--dry-run"])
    ctx = Context.from_args(args)
    ctx.__dict__["registry"] = {"vdtest-once": once}
    rc = args.run(args, ctx)
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and calls == [1]
    assert doc["actions"][0]["plan"]["actions"][0]["kind"] == "mkdir"
    assert doc["findings"][0]["fix"]["commands"] == ["mkdir -p -m 0755 /srv/vdtest-once"]


def test_engine_attaches_a_fixers_plan_to_the_finding(host):
    @check("vdtest-attach", scope="host", area="x", title="t")
    def chk(facts):
        return Fail("broken")

    chk.fixer(lambda finding, facts: plan("p", Auto.SAFE, MakeDir("/srv/x")))
    from virtdoctor.facts import HostFacts

    [f] = engine.run_check(chk, HostFacts(root=str(host), offline=True))
    assert f.plan is not None and f.plan.commands == ["mkdir -p -m 0700 /srv/x"] and f.fix.summary == "p"
