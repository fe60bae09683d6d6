"""Command-line options built from the pydantic models, so that each option is declared once.

A field of :class:`~unet.config.SegmentParameters` or
:class:`~unet.training.config.TrainParameters` becomes the option ``--field-name`` with the
field's type (a ``Literal`` becomes a choice), default, description as its help and numeric
limits: ``unet segment --help``, the Prefect parameter form and ``pipelines.yaml`` read the same
definition. Lists and mappings are written as text on the command line (``--class-names a,b``,
``--class-map 10:1,20:2``) and parsed by the model's own validators.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types
import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def with_options(model: type[BaseModel], *, exclude: tuple[str, ...] = ()) -> Callable:
    """Decorate a command ``f(..., **parameters)``: its ``**parameters`` become one option per
    field of ``model`` (but ``exclude``), passed to ``f`` by field name."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        # The command's own annotations may be strings (postponed evaluation); typer reads the
        # wrapper's signature as it is, so its Annotated options must be real objects.
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.kind != p.VAR_KEYWORD
        ]
        fields = [
            _parameter(name, field)
            for name, field in model.model_fields.items()
            if name not in exclude
        ]

        @functools.wraps(command)
        def wrapper(**values: Any) -> Any:
            return command(**values)

        parameters = own + fields
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def _parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    kind, limits = _command_line_type(field.annotation), _limits(field)
    option = typer.Option(help=field.description, show_default=True, **limits)
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=field.default,
        annotation=Annotated[kind, option],
    )


def _command_line_type(annotation: Any) -> Any:
    """The type the option parses: the field's, with lists and dicts taken as text."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _command_line_type(members[0]) if len(members) == 1 else str
        return inner | None
    if origin in (list, dict):
        return str
    return annotation


def _limits(field: FieldInfo) -> dict[str, Any]:
    """``min``/``max`` of a whole-number field, as click shows and checks them."""
    if field.annotation not in (int, int | None):
        return {}
    limits: dict[str, Any] = {}
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            limits["min"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            limits["min"] = item.gt + 1
        elif isinstance(item, annotated_types.Le):
            limits["max"] = item.le
        elif isinstance(item, annotated_types.Lt):
            limits["max"] = item.lt - 1
    return limits
