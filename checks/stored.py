"""Definitions libvirt never loaded: the domain files the QEMU driver keeps in
/etc/libvirt/qemu/, compared with the domains it actually defined."""
from __future__ import annotations

from collections import defaultdict

from virtdoctor.api import Auto, FactUnavailable, Fail, Pass, RunCommand, Warn, check, hookimpl, plan

CONFIG_DIR = "/etc/libvirt/qemu"
NEVER_EDIT = ("never edit the files in /etc/libvirt/qemu/ directly: libvirt reads them only at its start "
              "and skips a broken one silently; `virsh edit` and `virsh define` validate and write them")


def _defined(facts):
    """{name: normalised uuid} of the persistent domains, or the reason they are unknown."""
    try:
        infos = facts.libvirt.domains()
    except FactUnavailable as exc:
        return None, str(exc)
    return {i.name: (i.uuid or "").replace("-", "").lower() for i in infos if i.persistent}, None


def _log_cause(errors, stem):
    """The daemon log's last load error of this file: (cause, the 'Failed to load' line)."""
    for e in reversed(errors):
        if e.domain == stem:
            return e.cause, e.line
    return None, None


def _fix_copy_plan(f, what: str):
    copy = f"/root/{f.stem}.xml"
    return plan(f"Correct a copy of {f.path} ({what}) and define it with virsh", Auto.MANUAL,
                RunCommand(["cp", f.path, copy], f"copy {f.path} out of libvirt's directory"),
                RunCommand(["virsh", "define", "--validate", copy],
                           f"after correcting {copy}: define it (libvirt writes {f.path} itself)"),
                notes=[what, NEVER_EDIT])


def _move_plan(stale, what: str, notes: list[str]):
    return plan(f"Move the {what} definition{'s' if len(stale) > 1 else ''} out of {CONFIG_DIR}", Auto.MANUAL,
                *[RunCommand(["mv", f.path, f"/root/{f.stem}.xml.{what}"],
                             f"keep {f.path} as a backup outside libvirt's directory") for f in stale],
                notes=[*notes, NEVER_EDIT])


@check("stored-domain-unloadable", scope="host", area="definition", severity="error",
       title="Every domain definition in /etc/libvirt/qemu is one libvirt loads",
       needs=("libvirt-installed",), plans=True)
def stored_domain_unloadable(facts):
    """Looks at every /etc/libvirt/qemu/*.xml, parsed with the hardened parser (XML that
    does not parse, no <name>, a malformed <uuid>), at names and UUIDs that two files
    share, at files whose <name> differs from the file name, and compares them with the
    domains the daemon defined; the daemon log's "Failed to load config for domain"
    records (and the error line before each) are evidence.
    Why: the daemon skips such a file at its next start (or SIGHUP) and the guest is
    gone from `virsh list --all`, with one line in the daemon log.
    Fix: manual; correct a copy and `virsh define` it (libvirt writes the file), never
    edit these files directly."""
    files = facts.stored_domains
    if not files:
        return Pass(f"no domain definitions in {CONFIG_DIR}")
    defined, why_unknown = _defined(facts)
    errors = facts.domain_load_errors
    results = []
    parsed = [f for f in files if f.error is None]

    for f in files:
        if f.error is None:
            continue
        cause, logline = _log_cause(errors, f.stem)
        state = ("libvirt has not loaded it: the guest is gone from `virsh list --all`"
                 if defined is not None and f.stem not in defined else
                 "the guest is still defined from an earlier read, and vanishes at the next daemon start"
                 if defined is not None else "the daemon skips it at its next start")
        ev = {"file": f.path, "line": f.line, "error": f.error, "daemon_log": [x for x in (cause, logline) if x]}
        results.append(Fail(f"{f.error}: {state}", ev, key=f.path,
                            plan=_fix_copy_plan(f, f"line {f.line}: {f.error.split(': ', 1)[-1]}"
                                                if f.line else f.error)))

    by_uuid, by_name = defaultdict(list), defaultdict(list)
    for f in parsed:
        if f.uuid:
            by_uuid[f.uuid].append(f)
        by_name[f.name].append(f)
    clashing = set()
    groups = []  # (kind, value shown, files): files the daemon cannot all load
    for uuid, group in by_uuid.items():
        if len(group) > 1 and len({f.name for f in group}) > 1:
            groups.append(("uuid", group[0].uuid_text, group))  # "domain 'A' is already defined with uuid U"
    for name, group in by_name.items():
        if len(group) > 1 and len({f.uuid for f in group}) > 1 or (len(group) > 1 and None in {f.uuid for f in group}):
            groups.append(("name", name, group))  # "domain 'A' already exists with uuid U"
    for kind, shown, group in groups:
        if all(f.path in clashing for f in group):
            continue
        clashing.update(f.path for f in group)
        causes = [c for c in (_log_cause(errors, f.stem)[0] for f in group) if c]
        logged = [f for f in group if _log_cause(errors, f.stem)[1]]
        keep = next((f for f in group if f.stem == f.name and (defined is None or
                                                               (f.name in defined and (not f.uuid or defined[f.name] == f.uuid)))), None)
        stale = logged or ([f for f in group if f is not keep] if keep else group[1:])
        ev = {"files": [f.path for f in group], kind: shown, "daemon_log": causes}
        msg = (f"{', '.join(f.path for f in group)} carry the same {kind} {shown} for different domains: the daemon "
               f"loads the first it reads and skips the other" + ("s" if len(group) > 2 else ""))
        if causes:
            msg += f" (daemon log: \"{causes[-1]}\")"
        results.append(Fail(msg, ev, key=f"{kind}:{shown}", plan=_move_plan(stale, "duplicate", [
            "if a moved file is the definition you want, give it its own <name> and <uuid> "
            "(or remove the <uuid>) and `virsh define` it"])))
    for name, group in by_name.items():
        if len(group) < 2 or any(f.path in clashing for f in group):
            continue
        # the same name and UUID twice (a backup copy): libvirt loads both, the last one read wins
        clashing.update(f.path for f in group)
        stale = [f for f in group if f.stem != name] or group[1:]
        results.append(Warn(
            f"{', '.join(f.path for f in group)} are copies of the definition of '{name}': the daemon loads each in "
            f"turn and the one it reads last wins (not necessarily the one `virsh edit` writes), and "
            f"`virsh undefine {name}` leaves the copy behind, so the guest comes back at the next start",
            {"files": [f.path for f in group], "name": name}, key=f"copy:{name}",
            plan=_move_plan(stale, "copy", [])))

    for f in parsed:
        if f.path in clashing:
            continue
        if defined is not None and (f.name not in defined or (f.uuid and defined[f.name] != f.uuid)):
            cause, logline = _log_cause(errors, f.stem)
            ev = {"file": f.path, "name": f.name, "uuid": f.uuid_text, "daemon_log": [x for x in (cause, logline) if x]}
            why = (f"libvirt refused it: \"{cause}\"" if cause else
                   "the daemon has not read it since it was written (it reads this directory only at its start "
                   "and on SIGHUP), or refused it: `virsh define --validate` of a copy says why")
            results.append(Fail(f"{f.path} (domain '{f.name}') is not a defined domain: {why}", ev, key=f.path,
                                plan=_fix_copy_plan(f, cause or "libvirt did not load it")))
            continue
        if f.name != f.stem:
            results.append(Warn(
                f"{f.path} defines the domain '{f.name}', not '{f.stem}': libvirt loads it under '{f.name}', but "
                f"`virsh undefine {f.name}` leaves this file behind (the guest comes back at the next start) and "
                f"`virsh define` writes {CONFIG_DIR}/{f.name}.xml beside it, a second file with the same UUID",
                {"file": f.path, "name": f.name, "uuid": f.uuid_text}, key=f.path, plan=plan(
                    f"Let libvirt write {f.name}'s definition under its own name", Auto.MANUAL,
                    RunCommand(["virsh", "dumpxml", "--inactive", "--security-info", f.name],
                               f"save the definition to /root/{f.name}.xml"),
                    RunCommand(["mv", f.path, f"/root/{f.stem}.xml.misnamed"], f"move {f.path} out of the way"),
                    RunCommand(["virsh", "define", f"/root/{f.name}.xml"], f"define it again ({CONFIG_DIR}/{f.name}.xml)"),
                    notes=[NEVER_EDIT])))
    if results:
        return results
    note = f" (not compared with the defined domains: {why_unknown})" if why_unknown else ""
    return Pass(f"{len(files)} definition(s) in {CONFIG_DIR} parse, with distinct names and UUIDs{note}",
                {"files": [f.path for f in files]})


@hookimpl
def virtdoctor_checks():
    return [stored_domain_unloadable]
