"""libvirt's own RelaxNG schema: would `virsh define --validate` accept the XML?"""
from __future__ import annotations

from virtdoctor.api import Fail, Pass, check, hookimpl, schemafacts


@check("schema-invalid", scope="domain", area="schema", severity="error",
       title="The domain XML validates against libvirt's RelaxNG schema")
def schema_invalid(facts, dom):
    """Looks at the domain XML against the host's installed libvirt schema
    (/usr/share/libvirt/schemas/domain.rng, compiled once per run through
    lxml), and names the line, element and attribute of each error.
    Why: `virsh define --validate` (and virt-install) refuse such XML with
    "XML document failed to validate against schema: Unable to validate doc
    against /usr/share/libvirt/schemas/domain.rng"; without --validate libvirt
    silently drops the parts it does not know.
    No automatic fix: correct the XML."""
    schema = schemafacts.domain_schema(facts)  # FactUnavailable -> skip with the reason
    errors = schema.validate(dom.tree)
    if not errors:
        return Pass(f"valid against {schema.path}", {"schema": schema.path})
    out = []
    for i, err in enumerate(errors):
        out.append(Fail(err.describe(), {"schema": schema.path, "line": err.line, "path": err.path,
                                         "element": err.element, "attribute": err.attribute,
                                         "value": err.value, "libxml2": err.message,
                                         "located": err.located},
                        key=f"{err.path}@{err.attribute or ''}#{i}"))
    return out


@hookimpl
def virtdoctor_checks():
    return [schema_invalid]
