"""The parameter form of a deployment: a choice of models, plain inputs for optional settings,
and a schema that still takes every value pipelines.yaml may give."""

from __future__ import annotations

import flows  # noqa: F401  (Prefect's environment defaults, before prefect is imported)
from flows.form import DEFINITION, bundled_models, form_schema


def flow_schema() -> dict:
    from prefect.utilities.callables import parameter_schema

    from flows.segment import segment_folder

    return parameter_schema(segment_folder).model_dump()


def test_optional_settings_are_plain_inputs_and_model_a_choice():
    schema = form_schema(flow_schema(), model="/models/mine.safetensors")
    settings = schema["definitions"][DEFINITION]["properties"]
    for name, kind in [
        ("tile_size", "integer"),
        ("workers", "integer"),
        ("scheduler", "string"),
        ("nodata", "number"),
        ("labels", "string"),
    ]:
        assert "anyOf" not in settings[name] and settings[name]["type"] == kind, name
        assert "default" not in settings[name] and settings[name]["description"], name
    choice, typed = settings["model"]["anyOf"]
    assert choice["enum"] == [*bundled_models(), "/models/mine.safetensors"]
    assert "nuclei" in bundled_models() and typed == {
        "title": "type a .safetensors path",
        "type": "string",
    }
    assert settings["model"]["default"] == "nuclei"
    assert (
        settings["batch_size"]
        == flow_schema()["definitions"][DEFINITION]["properties"]["batch_size"]
    )  # the rest as it was


def test_the_form_takes_what_a_deployment_and_a_user_give_and_refuses_the_rest():
    from prefect.utilities.schema_tools.validation import is_valid

    schema = form_schema(flow_schema())

    def accepts(settings: dict) -> bool:
        return is_valid({"input": "in", "output": "out", "parameters": settings}, schema)

    assert accepts({"model": "nuclei", "tile_size": 1116, "scheduler": "tcp://h:8786"})
    assert accepts({"model": "/elsewhere/other.safetensors", "nodata": 0.5})
    assert accepts({})  # every setting left empty keeps its default
    assert not accepts({"tile_size": "big"})
    assert not accepts({"device": "tpu"})
