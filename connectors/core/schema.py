"""The job file's JSON Schema, for editors (``assetferry schema``).

Generated from the same pydantic models that validate a job (``connectors.core.job``) and from
each vendor's settings model, so it cannot drift from what ``validate`` accepts. ``destination``
is a union keyed on ``vendor`` (``if``/``then``): one branch per registered vendor with ``vendor`` a constant, its
``settings`` typed by the vendor's own model and its required credential keys listed. Editors
(VS Code / yaml-language-server, JetBrains) pick the branch from the ``vendor`` value.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic.json_schema import models_json_schema

SCHEMA_ID = "https://assetferry.dev/schemas/job.schema.json"


def job_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a job file, with every registered vendor's settings."""
    from assetferry.connectors.core.job import DestinationSpec, JobSpec
    from assetferry.connectors.vendors import names, vendor_spec

    specs = [vendor_spec(name) for name in names()]
    models: list[Any] = [JobSpec, *{id(s.settings): s.settings for s in specs}.values()]
    refs, top = models_json_schema([(m, "validation") for m in models],
                                   ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})
    schema = copy.deepcopy(defs[refs[(JobSpec, "validation")]["$ref"].rsplit("/", 1)[-1]])
    del defs[refs[(JobSpec, "validation")]["$ref"].rsplit("/", 1)[-1]]

    base = DestinationSpec.model_json_schema()
    mapping = {}
    for spec in specs:
        name = f"Destination_{spec.name}"
        props = copy.deepcopy(base["properties"])
        props["vendor"] = {"const": spec.name, "description": spec.summary or f"the {spec.name} vendor"}
        props["settings"] = {**refs[(spec.settings, "validation")],
                             "description": f"{spec.name} settings (validated by the vendor's model)"}
        if spec.default_url:
            props["url"] = {**props["url"], "default": spec.default_url}
        credentials = copy.deepcopy(props["credentials"])
        if spec.credential_keys:
            credentials["required"] = list(spec.credential_keys)
            credentials["properties"] = {k: {"type": "string", "pattern": r"^(env|secret):.+$",
                                             "description": "env:NAME or secret:BLOCK_NAME"}
                                         for k in spec.credential_keys}
        props["credentials"] = credentials
        defs[name] = {"type": "object", "title": f"destination ({spec.name})",
                      "additionalProperties": False, "properties": props,
                      "required": ["vendor", *(["credentials"] if spec.credential_keys else [])]}
        mapping[spec.name] = f"#/$defs/{name}"
    defs.pop("DestinationSpec", None)
    # A union keyed on `vendor`, written as if/then so that a validator (and an editor) reports
    # the chosen vendor's own errors, not "matches none of 5 branches".
    schema["properties"]["destination"] = {
        "type": "object",
        "description": "the vendor, its base URL, credential references and the vendor's settings",
        "required": ["vendor"],
        "properties": {"vendor": {"enum": sorted(mapping), "description": "a vendor of the registry"}},
        "allOf": [{"if": {"properties": {"vendor": {"const": name}}, "required": ["vendor"]},
                   "then": {"$ref": ref}} for name, ref in mapping.items()],
    }
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            **schema, "title": "assetferry job", "$defs": defs}
