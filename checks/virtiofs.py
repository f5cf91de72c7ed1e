"""virtiofs filesystems: the virtiofsd daemon libvirt starts, the shared
memory backing every vhost-user device needs, and session-mode support.

Facts: `facts.devices` (vhost-user descriptors, executables), the connection's
URI and libvirt version."""
from __future__ import annotations

from virtdoctor.api import Auto, each_domain, FactUnavailable, Fail, Pass, RunCommand, check, hookimpl, plan, redefine_plan

SESSION_VIRTIOFS_SINCE = (10, 0, 0)  # kbase/virtiofs.rst, "Running unprivileged"


def _virtiofs(root) -> list:
    return [fs for fs in root.iterfind("devices/filesystem")
            if fs.find("driver") is not None and fs.find("driver").get("type") == "virtiofs"]


def _external(fs) -> bool:
    """<source socket='...'/>: the operator starts virtiofsd, libvirt does not."""
    src = fs.find("source")
    return src is not None and bool(src.get("socket"))


@check("virtiofsd-missing", scope="domain", area="virtiofs", severity="error",
       title="virtiofsd for the domain's virtiofs filesystems is there", plans=True)
def virtiofsd_missing(facts, dom):
    """Looks at <filesystem><driver type='virtiofs'/> that libvirt starts a
    daemon for (no <source socket>): <binary path='...'> must be executable;
    without it a vhost-user descriptor of type "fs" (/usr/share/qemu/vhost-user,
    /etc/qemu/vhost-user) must name an executable binary.
    Why: the start fails with "Unable to find a satisfying virtiofsd" or
    "virtiofsd binary '/x' is not executable".
    Fix safety: manual: install the package with virtiofsd (Debian 12:
    qemu-system-common) or correct <binary path>."""
    fss = [fs for fs in _virtiofs(dom.root) if not _external(fs)]
    if not fss:
        return Pass("no virtiofs filesystem started by libvirt")
    problems, notes = [], []
    for fs in fss:
        b = fs.find("binary")
        path = b.get("path") if b is not None else None
        if path:
            if not facts.devices.executable(path):
                state = "is not executable" if facts.exists(path) else "does not exist"
                problems.append(f"<binary path='{path}'> {state}: \"virtiofsd binary '{path}' is not executable\"")
                notes.append(f"fix <binary path> (virsh edit {dom.name}) or install virtiofsd there")
            continue
        found, why = facts.devices.virtiofsd()
        if found is None:
            first = facts.devices.virtiofsd_candidates[:1]
            # libvirt 9.0 takes the first fs descriptor and checks its binary at start (seen live)
            text = (f"virtiofsd binary '{first[0]}' is not executable" if first
                    else "Unable to find a satisfying virtiofsd")
            detail = f" ({'; '.join(why)})" if why else " (no vhost-user descriptor of type fs)"
            problems.append(f"no usable virtiofsd{detail}: \"{text}\"")
            notes.append("Debian 12's qemu-system-common ships /usr/lib/qemu/virtiofsd and "
                         "/usr/share/qemu/vhost-user/50-qemu-virtiofsd.json")
    if not problems:
        return Pass("virtiofsd found")
    acts = [RunCommand(["apt-get", "install", "-y", "--reinstall", "qemu-system-common"])] \
        if any("Debian 12" in n for n in notes) else []
    return Fail("; ".join(dict.fromkeys(problems)), {}, plan=plan("Provide virtiofsd", Auto.MANUAL, *acts,
                                                                   notes=list(dict.fromkeys(notes))))



@check("virtiofsd-missing", scope="host", area="virtiofs", severity="error",
       title="Domains with virtiofs filesystems find virtiofsd", needs=("libvirt",), plans=True)
def virtiofsd_missing_host(facts):
    """Looks at every defined domain's virtiofs filesystems against the
    vhost-user descriptors and <binary path> (the domain check, over all).
    Why: each such domain fails to start without virtiofsd.
    Fix safety: manual (installs a package or edits <binary path>)."""
    return each_domain(facts, virtiofsd_missing.func, "lacks virtiofsd")


def _shared(root) -> bool:
    if root.find("memoryBacking/access[@mode='shared']") is not None:
        return True
    cells = list(root.iterfind("cpu/numa/cell"))
    return bool(cells) and all(c.get("memAccess") == "shared" for c in cells)


def _vhost_user(root) -> list[str]:
    out = [f"virtiofs {fs.find('target').get('dir') if fs.find('target') is not None else ''}".strip()
           for fs in _virtiofs(root)]
    out += ["vhost-user interface" for i in root.iterfind("devices/interface") if i.get("type") == "vhostuser"]
    return out


def _add_shared_memory(d):
    root = d.root
    mb = root.find("memoryBacking")
    if mb is None:
        mb = root.makeelement("memoryBacking", {})
        anchor = root.find("currentMemory")
        if anchor is None:
            anchor = root.find("memory")
        if anchor is not None:
            anchor.addnext(mb)
        else:
            root.append(mb)
    if mb.find("source") is None and mb.find("hugepages") is None:
        mb.append(mb.makeelement("source", {"type": "memfd"}))
    acc = mb.find("access")
    if acc is None:
        acc = mb.makeelement("access", {})
        mb.append(acc)
    acc.set("mode", "shared")
    for cell in root.iterfind("cpu/numa/cell"):
        if cell.get("memAccess") == "private":
            cell.set("memAccess", "shared")
    return "Back guest memory with shared memory (memfd) for virtiofs"


@check("virtiofs-shared-memory-missing", scope="domain", area="virtiofs", severity="error",
       title="vhost-user devices (virtiofs) have shared memory backing", plans=True)
def virtiofs_shared_memory_missing(facts, dom):
    """Looks at virtiofs filesystems and vhost-user interfaces against
    <memoryBacking><access mode='shared'/> or all NUMA cells memAccess='shared'.
    Why: libvirt refuses the domain: "unsupported configuration: 'virtiofs'
    requires shared memory".
    Fix safety: unsafe (memory backing changes at the next cold boot): adds
    <memoryBacking><source type='memfd'/><access mode='shared'/>."""
    users = _vhost_user(dom.root)
    if not users:
        return Pass("no virtiofs or vhost-user device")
    if _shared(dom.root):
        return Pass("guest memory is shared")
    return Fail(f"{users[0]} without shared memory: \"unsupported configuration: 'virtiofs' requires shared memory\"",
                {"devices": users}, plan=redefine_plan(dom, _add_shared_memory, auto=Auto.UNSAFE))


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(".")[:3])
    except ValueError:
        return (0,)


@check("virtiofs-session-unsupported", scope="domain", area="virtiofs", severity="error",
       title="virtiofs is supported on this connection", needs=("libvirt",), plans=True)
def virtiofs_session_unsupported(facts, dom):
    """Looks at virtiofs filesystems libvirt would start virtiofsd for on a
    qemu:///session (unprivileged) connection, and the daemon's libvirt
    version (session support arrived in 10.0.0).
    Why: libvirt 9.x refuses: "unsupported configuration: virtiofs is not yet
    supported in session mode".
    Fix safety: manual: qemu:///system, an externally started virtiofsd
    (<source socket='...'/>), or a newer libvirt."""
    fss = [fs for fs in _virtiofs(dom.root) if not _external(fs)]
    if not fss:
        return Pass("no virtiofs filesystem started by libvirt")
    uri = facts.resolved_uri
    if "/session" not in uri:
        return Pass(f"{uri} is not a session connection")
    try:
        version = facts.libvirt.versions().get("libvirt", "")
    except FactUnavailable:
        version = ""
    if version and _version(version) >= SESSION_VIRTIOFS_SINCE:
        return Pass(f"libvirt {version} runs virtiofsd unprivileged")
    return Fail(f"virtiofs on {uri} with libvirt {version or '< 10.0'}: \"unsupported configuration: virtiofs is "
                "not yet supported in session mode\"", {"uri": uri, "libvirt": version},
                plan=plan("Run virtiofs where this libvirt supports it", Auto.MANUAL, notes=[
                    f"define the domain on qemu:///system: virsh -c qemu:///system define {dom.name}.xml",
                    "or start virtiofsd yourself and use <source socket='/path/to/sock'/> in the <filesystem>",
                    "or upgrade to libvirt >= 10.0 (unprivileged virtiofs with id-mapping)"]))


@check("virtiofs-session-unsupported", scope="uri", area="virtiofs", severity="error",
       title="No defined domain needs virtiofs where this connection cannot run it", needs=("libvirt",), plans=True)
def virtiofs_session_unsupported_uri(facts):
    """Looks, on a session connection, at every defined domain's virtiofs
    filesystems (the domain check, over all).
    Why: libvirt 9.x refuses virtiofs in session mode.
    Fix safety: manual."""
    if "/session" not in facts.resolved_uri:
        return Pass(f"{facts.resolved_uri} is not a session connection")
    return each_domain(facts, virtiofs_session_unsupported.func, "uses virtiofs")


@hookimpl
def virtdoctor_checks():
    return [virtiofsd_missing_host, virtiofsd_missing, virtiofs_shared_memory_missing,
            virtiofs_session_unsupported_uri, virtiofs_session_unsupported]
