"""Security drivers: AppArmor and SELinux confinement of QEMU (sVirt), qemu.conf's
security_driver and dynamic_ownership, and <seclabel> models a domain brought from another host.
Inputs come from `facts.lsm` (virtdoctor/facts/lsm.py) and the domain XML."""
from __future__ import annotations

from virtdoctor.api import (Auto, is_session, Fail, Pass, RunCommand, SetConfKey, Skip, check, hookimpl, lsmfacts,
                            plan, redefine_plan, remove_element)

QEMU_CONF = "/etc/libvirt/qemu.conf"
AA_DIR = "/etc/apparmor.d/libvirt"
DAEMON_PROFILES = ("libvirtd", "/usr/sbin/libvirtd", "virtqemud", "/usr/sbin/virtqemud")
# virt-aa-helper.c valid_path(): never granted / granted read-only only
AA_RESTRICTED = ("/bin/", "/etc/", "/lib", "/lost+found/", "/proc/", "/sbin/", "/selinux/", "/sys/", "/usr/bin/",
                 "/usr/lib", "/usr/sbin/", "/usr/share/", "/usr/local/bin/", "/usr/local/etc/", "/usr/local/lib",
                 "/usr/local/sbin/")
AA_RESTRICTED_RW = ("/boot/", "/vmlinuz", "/initrd", "/initrd.img", "/usr/share/edk2/", "/usr/share/OVMF/",
                    "/usr/share/ovmf/", "/usr/share/AAVMF/", "/usr/share/qemu-efi/", "/usr/share/qemu-efi-aarch64/",
                    "/usr/share/qemu/", "/usr/lib/u-boot/", "/usr/lib/riscv64-linux-gnu/opensbi")
AA_OVERRIDE = ("/sys/devices/pci", "/sys/kernel/config/target/vhost", "/etc/libvirt-sandbox/services/")
SELINUX_IMAGE_TYPES = ("virt_image_t", "svirt_image_t", "virt_content_t", "svirt_tmpfs_t", "nfs_t", "iso9660_t")
SHOWN = 5



def _uuid(dom) -> str | None:
    return (dom.tree.findtext("uuid") or "").strip().lower() or None


def _available_models(facts) -> tuple[set[str], str]:
    """The security models this host's libvirt offers: capabilities' secmodel list, else
    (offline) what the kernel's LSMs and qemu.conf would give."""
    try:
        caps = facts.libvirt.capabilities()
        models = {m.text.strip() for m in caps.iterfind("host/secmodel/model") if m.text}
        return models | {"none"}, "capabilities"
    except Exception:
        lsm = facts.lsm
        drivers = set(lsm.security_driver) if lsm.security_driver is not None else lsm.active
        return (drivers & lsm.active) | {"dac", "none"}, "kernel LSMs and qemu.conf"


# -- security-driver-unavailable -------------------------------------------------------------
def driver_problem(lsm, name: str) -> str | None:
    if name in ("none", "dac"):
        return None
    if name == "apparmor":
        if not lsm.apparmor:
            return "AppArmor is not enabled in this kernel (/sys/module/apparmor/parameters/enabled is not Y)"
        if not any(p in lsm.apparmor_profiles for p in DAEMON_PROFILES):
            return "AppArmor is enabled, but no profile for libvirtd/virtqemud is loaded, so libvirt's probe says no"
        return None
    if name == "selinux":
        return None if lsm.selinux is not None else "SELinux is not enabled (no /sys/fs/selinux/enforce)"
    return f"libvirt has no security driver called {name!r} (internal error: Security driver {name} not found)"


@check("security-driver-unavailable", scope="host", area="security", severity="error", plans=True,
       title="qemu.conf's security_driver names a driver this kernel has")
def security_driver_unavailable(facts):
    """Looks at qemu.conf `security_driver` (a string or a list) against the LSMs the kernel has
    enabled: AppArmor needs /sys/module/apparmor/parameters/enabled = Y and a loaded profile for
    the daemon (what libvirt's AppArmor probe checks), SELinux a mounted selinuxfs.
    Why: a driver that is not there stops the QEMU driver from initialising ("unsupported
    configuration: Security driver apparmor not enabled"): the daemon serves no QEMU guests.
    Fix: manual; enabling an LSM or dropping confinement is a policy decision."""
    lsm = facts.lsm
    drivers = lsm.security_driver
    evidence = {"security_driver": list(drivers) if drivers else None, "apparmor": lsm.apparmor,
                "selinux": lsm.selinux, "lsm": list(lsm.lsms)}
    if drivers is None:
        return Pass("qemu.conf sets no security_driver: libvirt uses whatever LSM it finds", evidence)
    problems = {d: p for d in drivers if (p := driver_problem(lsm, d))}
    if not problems:
        return Pass(f"security_driver = {', '.join(drivers)}: available", evidence)
    evidence["problems"] = problems
    keep = [d for d in drivers if d not in problems]
    value = keep[0] if len(keep) == 1 else (keep or "none")
    bad = ", ".join(problems)
    return Fail(f"qemu.conf security_driver names {bad}, which this host lacks: "
                + "; ".join(problems.values())
                + f"; the QEMU driver refuses to start (\"Security driver {next(iter(problems))} not enabled\")",
                evidence,
                plan=plan(f"Set security_driver to {value!r} in {QEMU_CONF} (or enable {bad}), then restart the daemon",
                          Auto.MANUAL, SetConfKey(QEMU_CONF, "security_driver", value),
                          notes=["comment the key out instead to let libvirt probe the LSMs it finds",
                                 "confinement is a policy decision: enabling the LSM may be what you want",
                                 "then restart libvirtd (or virtqemud)"]))


# -- seclabel-model-unavailable --------------------------------------------------------------
@check("seclabel-model-unavailable", scope="domain", area="security", severity="error", plans=True,
       title="The domain's <seclabel> models exist on this host")
def seclabel_model_unavailable(facts, dom):
    """Looks at every <seclabel model=...> of the domain (domain level and per device source)
    against the security models this host's libvirt offers (capabilities' secmodel; dac always).
    Why: XML copied from an Ubuntu or Fedora host keeps `<seclabel model='apparmor'>` or
    `'selinux'`, and the start fails ("Security driver model 'apparmor' is not available").
    Fix: safe; remove the labels of models this host lacks (they can never apply here; not
    guest-visible), shown in the plan because it is a security-policy edit."""
    labels = [el for el in dom.tree.iter("seclabel") if el.get("model")]
    if not labels:
        return Pass("no <seclabel> names a security model")
    models, source = _available_models(facts)
    foreign = sorted({el.get("model") for el in labels if el.get("model") not in models})
    evidence = {"models": sorted(m for m in {el.get("model") for el in labels}), "host_models": sorted(models),
                "source": source}
    if not foreign:
        return Pass(f"<seclabel> models {', '.join(evidence['models'])} are available here", evidence)
    evidence["foreign"] = foreign

    def edit(copy):
        for el in list(copy.tree.iter("seclabel")):
            if el.get("model") in foreign:
                remove_element(el)
        return f"Remove the <seclabel model='{'/'.join(foreign)}'> elements this host cannot apply"

    return Fail(f"<seclabel model='{foreign[0]}'> names a security driver this host does not have "
                f"(it has {', '.join(sorted(models - {'none'}))}): the start fails with "
                f"\"Security driver model '{foreign[0]}' is not available\"", evidence,
                plan=redefine_plan(dom, edit, auto=Auto.SAFE,
                                   notes=["a security-policy edit: the label came from another host's driver"]))


# -- dynamic-ownership-disabled -------------------------------------------------------------
@check("dynamic-ownership-disabled", scope="host", area="security", severity="warning", plans=True,
       title="qemu.conf lets libvirt chown images for QEMU (dynamic_ownership)")
def dynamic_ownership_host(facts):
    """Looks at qemu.conf `dynamic_ownership` (default 1).
    Why: with 0 libvirt never hands images to QEMU's account; images created by root (qemu-img,
    copies) stay root:root 0600 and starts fail with "Permission denied". Often copied from
    web snippets.
    Fix: manual; `dynamic_ownership = 1` changes behaviour for every guest after a restart."""
    lsm = facts.lsm
    if lsm.dynamic_ownership:
        return Pass("dynamic_ownership is on (libvirt chowns images to QEMU's account while they are in use)")
    return Fail("qemu.conf sets dynamic_ownership = 0: libvirt does not chown images, so every image must "
                "already belong to (or be readable and writable by) QEMU's account", {"dynamic_ownership": 0},
                plan=plan(f"Set dynamic_ownership = 1 in {QEMU_CONF} and restart the daemon", Auto.MANUAL,
                          SetConfKey(QEMU_CONF, "dynamic_ownership", 1),
                          notes=["restart libvirtd (or virtqemud): it changes ownership handling for every guest"]))


def _dac_relabel_off(el) -> bool:
    return any(s.get("model") == "dac" and s.get("relabel") == "no" for s in el.iter("seclabel"))


@check("dynamic-ownership-disabled", scope="domain", area="security", severity="error", plans=True,
       title="Images QEMU must open without libvirt's chown are QEMU's already")
def dynamic_ownership_domain(facts, dom):
    """Looks at each local disk image when libvirt will not chown it: qemu.conf
    dynamic_ownership = 0, or `<seclabel model='dac' relabel='no'/>` on the domain or the disk;
    its owner, group, mode and ACL against QEMU's account (qemu.conf user/group).
    Why: such an image that QEMU's account cannot open fails the start ("Cannot access storage
    file ... (as uid:64055, gid:64055): Permission denied" or QEMU's "Could not open ...").
    Fix: safe; chown the image to QEMU's account (not guest-visible)."""
    if is_session(facts):
        return Skip("qemu:///session: QEMU runs as you, libvirt chowns nothing")
    lsm = facts.lsm
    dom_off = _dac_relabel_off(dom.tree) and any(s.getparent() is dom.root for s in dom.tree.iter("seclabel")
                                                 if s.get("model") == "dac")
    qemu = facts.qemu_account()
    if qemu.account is None:
        return Skip(f"QEMU's user {qemu.user} does not exist; qemu-user-missing reports that")
    bad, considered = [], []
    for disk in dom.disks:
        path = disk.source_path
        if not path or disk.type not in ("file", "block") or not path.startswith("/"):
            continue
        off = (not lsm.dynamic_ownership) or dom_off or (disk.source_el is not None and _dac_relabel_off(disk.source_el))
        if not off:
            continue
        considered.append(path)
        info = facts.stat(path)
        if info is None:
            continue  # disk-source-missing
        want = "r" if disk.readonly else "rw"
        if not info.allowed(qemu.uid, qemu.gids, want):
            bad.append((path, f"{info.owner}:{info.group} {info.mode_text}", want))
    why = "dynamic_ownership = 0" if not lsm.dynamic_ownership else "<seclabel model='dac' relabel='no'>"
    evidence = {"dynamic_ownership": lsm.dynamic_ownership, "qemu": qemu.label, "not_relabelled": considered,
                "unreadable": [b[0] for b in bad]}
    if not considered:
        return Pass("libvirt relabels this domain's images for QEMU (dynamic_ownership on, no relabel='no')")
    if not bad:
        return Pass(f"{why}, but {qemu.label} can already open every image", evidence)
    actions = [RunCommand(["chown", f"{qemu.user}:{qemu.group}", p], f"give {p} to {qemu.label}", touches=(p,))
               for p, _, _ in bad]
    shown = "; ".join(f"{p} is {perm}" for p, perm, _ in bad[:SHOWN])
    return Fail(f"{why}: libvirt will not chown, and {qemu.label} cannot open {len(bad)} image(s): {shown}",
                evidence, plan=plan(f"Give the image(s) to {qemu.label}", Auto.SAFE, *actions,
                                    notes=["or set dynamic_ownership = 1 in qemu.conf and restart the daemon "
                                           "(manual: it changes every guest)"]))


# -- apparmor-denied -------------------------------------------------------------------------
def _denial_text(d) -> str:
    return f"{d.operation or 'access'} {d.target or '?'} ({d.access or '?'})"


@check("apparmor-denied", scope="host", area="security", severity="error", plans=True,
       title="AppArmor does not deny QEMU processes files")
def apparmor_denied_host(facts):
    """Looks at AppArmor's state (/sys/module/apparmor/parameters/enabled) and at the kernel and
    audit logs (/var/log/audit/audit.log, kern.log, syslog, messages) for `apparmor="DENIED"`
    records of `libvirt-<uuid>` profiles.
    Why: libvirt's per-domain profile only grants what the XML names; paths reached through
    symlinks or bind mounts, <qemu:commandline> files, odd firmware/NVRAM or hugepage paths are
    denied although Unix permissions allow them: QEMU says only "Permission denied".
    Fix: manual; add the path to /etc/apparmor.d/libvirt/libvirt-<uuid> (one guest) or
    abstractions/libvirt-qemu (all), then apparmor_parser -r."""
    lsm = facts.lsm
    if not lsm.apparmor:
        return Pass("AppArmor is not active on this kernel: nothing confines QEMU through it")
    denials = [d for d in lsm.libvirt_denials() if d.lsm == "apparmor"]
    evidence = {"logs": list(lsm.logs_read), "denials": [d.line for d in denials[-SHOWN:]]}
    if not denials:
        return Pass(f"AppArmor is active; no libvirt-<uuid> denials in {', '.join(lsm.logs_read) or 'the logs'}",
                    evidence)
    uuids = sorted({d.domain_uuid for d in denials})
    last = denials[-1]
    return Fail(f"AppArmor denied QEMU {len(denials)} access(es) (profiles {', '.join('libvirt-' + u for u in uuids)}); "
                f"last: {_denial_text(last)}", evidence,
                plan=_aa_plan(uuids[-1], [d for d in denials if d.domain_uuid == uuids[-1]]))


def _aa_plan(uuid: str, denials) -> object:
    profile = f"{AA_DIR}/libvirt-{uuid}"
    paths = sorted({d.target for d in denials if d.target.startswith("/")})
    rules = [f'  "{p}" rwk,' for p in paths] or ['  "/path/from/the/denial" rwk,']
    return plan(f"Allow the denied path(s) in {profile} and reload it", Auto.MANUAL,
                *[RunCommand(["sh", "-c", f"echo '{r}' >> {profile}"]) for r in rules],
                RunCommand(["apparmor_parser", "-r", profile]),
                notes=["for every guest put the rule in /etc/apparmor.d/local/abstractions/libvirt-qemu "
                       "(or abstractions/libvirt-qemu) and reload: apparmor_parser -r /etc/apparmor.d/usr.sbin.libvirtd",
                       "prefer storing images where libvirt expects them (a storage pool): virt-aa-helper grants "
                       "the paths the XML names",
                       "last resort: security_driver = \"none\" in qemu.conf"])


@check("apparmor-denied", scope="domain", area="security", severity="error", plans=True,
       title="AppArmor does not deny this domain's QEMU files")
def apparmor_denied_domain(facts, dom):
    """Looks at `apparmor="DENIED"` records of this domain's profile (libvirt-<its uuid>) in the
    kernel and audit logs, and at the per-domain files virt-aa-helper wrote
    (/etc/apparmor.d/libvirt/libvirt-<uuid>.files) for whether the denied paths are granted.
    Why: a denial explains QEMU's "Permission denied" when modes, owner and ACLs allow its
    account; it ranks above disk-source-permission in diagnose.
    Fix: manual; a rule for the path in the domain's profile, apparmor_parser -r."""
    lsm = facts.lsm
    if not lsm.apparmor:
        return Pass("AppArmor is not active on this kernel")
    uuid = _uuid(dom)
    if uuid is None:
        return Skip("the domain has no <uuid> yet")
    denials = lsm.libvirt_denials(uuid)
    files = lsmfacts.profile_files(facts, uuid)
    evidence = {"profile": files["profile"], "files": files["files"], "denials": [d.line for d in denials[-SHOWN:]]}
    if not denials:
        return Pass(f"no AppArmor denials for libvirt-{uuid}", evidence)
    ungranted = sorted({d.target for d in denials if not lsmfacts.aa_path_granted(files["granted"], d.target)})
    evidence["not_in_profile"] = ungranted
    return Fail(f"AppArmor denied this domain's QEMU (libvirt-{uuid}) {len(denials)} access(es): "
                + ", ".join(_denial_text(d) for d in denials[-3:])
                + (f"; not granted by {files['files']}: {', '.join(ungranted[:SHOWN])}" if files["files"] and ungranted else ""),
                evidence, plan=_aa_plan(uuid, denials))


# -- apparmor-profile-load-failed -------------------------------------------------------------
def aa_blocked(path: str, readonly: bool) -> str | None:
    """virt-aa-helper's valid_path(): why `path` cannot go into a profile, or None."""
    if '"' in path:
        return "contains a double quote"
    if not path.startswith("/"):
        return "is not an absolute path"
    if path.startswith(AA_OVERRIDE):
        return None
    if readonly and path.startswith(AA_RESTRICTED_RW):
        return None
    if path.startswith(AA_RESTRICTED) or path.startswith(AA_RESTRICTED_RW):
        return "is in a restricted directory" + ("" if readonly else " (read-write)")
    return None


def _domain_paths(dom) -> list[tuple[str, bool, str]]:
    """(path, readonly, what) of files virt-aa-helper puts into the profile."""
    out = []
    for disk in dom.disks:
        if disk.source_path and disk.type in ("file", "block"):
            out.append((disk.source_path, disk.readonly, f"disk {disk.target}"))
    for tag, ro in (("os/kernel", True), ("os/initrd", True), ("os/dtb", True), ("os/loader", True)):
        text = (dom.tree.findtext(tag) or "").strip()
        if text:
            out.append((text, ro, tag.split("/")[1]))
    nvram = (dom.tree.findtext("os/nvram") or "").strip()
    if nvram:
        out.append((nvram, False, "nvram"))
    for fs in dom.tree.iterfind("devices/filesystem"):
        src = fs.find("source")
        if src is not None and src.get("dir"):
            out.append((src.get("dir"), fs.find("readonly") is not None, "filesystem"))
    return out


@check("apparmor-profile-load-failed", scope="domain", area="security", severity="error", plans=True,
       title="virt-aa-helper can build this domain's AppArmor profile")
def apparmor_profile_load_failed(facts, dom):
    """On hosts where libvirt confines QEMU with AppArmor: the domain's file paths (disks,
    kernel, initrd, loader, NVRAM, filesystems) against virt-aa-helper's restricted directories
    and absolute-path rule, the TEMPLATE.qemu it fills in, and apparmor_parser.
    Why: virt-aa-helper refuses such paths ("skipped restricted file") or fails to load the
    profile, and the start fails with "cannot load AppArmor profile 'libvirt-<uuid>'".
    Fix: manual; move the file out of the restricted directory, use absolute paths, install or
    repair the apparmor package."""
    lsm = facts.lsm
    if not lsm.apparmor or (lsm.security_driver is not None and "apparmor" not in lsm.security_driver):
        return Pass("libvirt does not confine QEMU with AppArmor here: virt-aa-helper is not used")
    problems = []
    for path, ro, what in _domain_paths(dom):
        why = aa_blocked(path, ro)
        if why:
            problems.append(f"{what} {path} {why}")
    if not facts.exists(f"{AA_DIR}/TEMPLATE.qemu"):
        problems.append(f"{AA_DIR}/TEMPLATE.qemu is missing (virt-aa-helper: template does not exist)")
    if facts.which("apparmor_parser", extra=("/sbin", "/usr/sbin")) is None:
        problems.append("apparmor_parser is not installed (package apparmor)")
    evidence = {"problems": problems}
    if not problems:
        return Pass("virt-aa-helper accepts every path of the domain", evidence)
    return Fail("virt-aa-helper cannot build this domain's profile: " + "; ".join(problems[:SHOWN]), evidence,
                plan=plan("Move the files out of restricted directories (e.g. to /var/lib/libvirt/images) "
                          "or repair AppArmor", Auto.MANUAL,
                          RunCommand(["sh", "-c", f"virsh dumpxml {dom.name} | /usr/lib/libvirt/virt-aa-helper "
                                                  f"-d -r -u libvirt-{_uuid(dom) or 'UUID'}"],
                                     "dry run: what virt-aa-helper says about the XML"),
                          notes=["apt-get install apparmor (apparmor_parser, the templates) when they are missing"]))


# -- selinux-image-label --------------------------------------------------------------------
@check("selinux-image-label", scope="host", area="security", severity="error", plans=True,
       title="SELinux does not deny QEMU (svirt_t) files")
def selinux_image_label_host(facts):
    """Looks at SELinux's mode (/sys/fs/selinux/enforce) and AVC denial records of svirt
    contexts in the audit and kernel logs.
    Why: QEMU runs as svirt_t and may only open virt_image_t / svirt_image_t files; images with
    home or default labels, NFS without virt_use_nfs, or relabel='no' give "Permission denied".
    Fix: manual; semanage fcontext + restorecon, or setsebool -P virt_use_nfs 1."""
    lsm = facts.lsm
    if lsm.selinux is None:
        return Pass("SELinux is not active on this kernel")
    denials = [d for d in lsm.denials if d.is_svirt]
    evidence = {"mode": lsm.selinux, "denials": [d.line for d in denials[-SHOWN:]]}
    if not denials:
        return Pass(f"SELinux is {lsm.selinux}; no svirt denials in {', '.join(lsm.logs_read) or 'the logs'}", evidence)
    last = denials[-1]
    return Fail(f"SELinux ({lsm.selinux}) denied QEMU {len(denials)} access(es); last: {{ {last.access} }} "
                f"on {last.target or '?'} labelled {last.tcontext or '?'}", evidence,
                plan=_selinux_plan([d.target for d in denials]))


def _selinux_plan(paths):
    dirs = sorted({p.rsplit("/", 1)[0] or "/" for p in paths if p.startswith("/")}) or ["/srv/images"]
    actions = []
    for d in dirs[:3]:
        actions += [RunCommand(["semanage", "fcontext", "-a", "-t", "virt_image_t", f"{d}(/.*)?"]),
                    RunCommand(["restorecon", "-R", "-v", d])]
    return plan("Label the image directories virt_image_t", Auto.MANUAL, *actions,
                notes=["images on NFS: setsebool -P virt_use_nfs 1; on CIFS: setsebool -P virt_use_samba 1",
                       "ausearch -m AVC -ts recent shows the full records"])


@check("selinux-image-label", scope="domain", area="security", severity="error", plans=True,
       title="SELinux lets this domain's QEMU open its images")
def selinux_image_label_domain(facts, dom):
    """On SELinux hosts: each local image's `security.selinux` label when libvirt will not
    relabel it (`<seclabel relabel='no'>` on the domain or the disk), and svirt AVC records
    naming the image.
    Why: QEMU (svirt_t) cannot open an image with another type; libvirt relabels only what it
    may. Fix: manual; semanage fcontext -a -t virt_image_t, restorecon."""
    lsm = facts.lsm
    if lsm.selinux is None:
        return Pass("SELinux is not active on this kernel")
    dom_norelabel = any(s.get("relabel") == "no" and s.get("model") in (None, "selinux")
                        for s in dom.tree.iterfind("seclabel"))
    bad = []
    names = {d.target for d in lsm.denials if d.is_svirt}
    for disk in dom.disks:
        path = disk.source_path
        if not path or disk.type not in ("file", "block"):
            continue
        norelabel = dom_norelabel or (disk.source_el is not None and any(
            s.get("relabel") == "no" and s.get("model") in (None, "selinux") for s in disk.source_el.iter("seclabel")))
        label = lsmfacts.file_label(facts, path)
        denied = path in names or path.rsplit("/", 1)[-1] in names
        if denied or (norelabel and label and not any(t in label for t in SELINUX_IMAGE_TYPES)):
            bad.append((path, label, denied))
    evidence = {"mode": lsm.selinux, "images": [{"path": p, "label": l, "denied": d} for p, l, d in bad]}
    if not bad:
        return Pass("libvirt relabels this domain's images, and no svirt denial names them", evidence)
    return Fail("SELinux keeps QEMU from " + "; ".join(
        f"{p} (label {l or 'unknown'}{', denied in the audit log' if d else ', relabel=no'})" for p, l, d in bad[:SHOWN]),
        evidence, plan=_selinux_plan([p for p, _, _ in bad]))


@hookimpl
def virtdoctor_checks():
    return [security_driver_unavailable, seclabel_model_unavailable, dynamic_ownership_host, dynamic_ownership_domain,
            apparmor_denied_host, apparmor_denied_domain, apparmor_profile_load_failed, selinux_image_label_host,
            selinux_image_label_domain]
