"""The parameter form of a deployment in the Prefect UI: choices where there are choices, plain
inputs for optional settings.

Prefect makes the form from the flow's parameter schema, which pydantic writes from
:class:`~unet.config.SegmentParameters`. Two of its shapes read badly there: an optional field
(``int | None``) is a union whose second tab says ``Property is type "None"``, and ``model`` is
free text although the package bundles named models. :func:`form_schema` rewrites the schema's
``SegmentParameters`` definition: an optional field becomes its non-null type (left empty, it
is left out and keeps its default), and ``model`` a choice of the bundled models, the
deployment's own checkpoint, or a checkpoint path typed in.
"""

from __future__ import annotations

import copy
from typing import Any

#: The definition of the segmentation settings in a flow's parameter schema.
DEFINITION = "SegmentParameters"


def form_schema(schema: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """A copy of a flow's parameter ``schema`` (JSON schema with ``definitions``) with the
    settings' optional fields as plain inputs and ``model`` as a choice; ``model``: the
    deployment's own model (a checkpoint path is offered beside the bundled names)."""
    schema = copy.deepcopy(schema)
    definition = schema.get("definitions", {}).get(DEFINITION)
    if definition is None:
        return schema
    properties = definition.get("properties", {})
    for field in properties.values():
        options = field.get("anyOf")
        if not options:
            continue
        kept = [option for option in options if option.get("type") != "null"]
        if len(kept) == 1 and len(kept) < len(options):
            del field["anyOf"]
            field.update(kept[0])
            if field.get("default", ...) is None:
                del field["default"]
    if "model" in properties:
        properties["model"] = _model_field(properties["model"], model)
    return schema


def bundled_models() -> list[str]:
    """The names of the models bundled with the package (``nuclei``)."""
    from unet.network.checkpoint import BUNDLED_DIR

    return sorted(path.stem for path in BUNDLED_DIR.glob("*.safetensors"))


def _model_field(field: dict[str, Any], model: str | None) -> dict[str, Any]:
    """``model`` as a choice of checkpoints: the bundled ones and the deployment's own."""
    choices = bundled_models()
    if model is not None and model not in choices:
        choices.append(model)
    kept = {key: value for key, value in field.items() if key not in ("type", "anyOf")}
    return {
        **kept,
        "anyOf": [
            {"title": "choose a model", "type": "string", "enum": choices},
            {"title": "type a .safetensors path", "type": "string"},
        ],
    }
