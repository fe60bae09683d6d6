"""``pipelines.yaml``: the deployments ``unet serve`` puts on a Prefect server.

A deployment names a flow (``segment_image`` or ``segment_folder``), its parameters (input,
output and every :class:`~unet.config.SegmentParameters` field), a schedule (cron or interval,
with a time zone), tags and a concurrency limit::

    deployments:
      - name: nightly-slides
        flow: segment_folder
        parameters: {input: incoming, output: masks, model: nuclei, device: cuda}
        schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
        tags: [slides]
        concurrency_limit: 1

Every key is checked: an unknown key, a bad value or a bad cron expression is a
:class:`~unet.errors.ConfigError` whose one line names the file, the key path and what was
expected. Relative local paths (input, output, a checkpoint file) are resolved against the
file's folder, so the config means the same wherever ``unet serve`` starts.
"""

from __future__ import annotations

import datetime
import math
import os
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unet.config import SegmentParameters
from unet.errors import ConfigError

FlowName = Literal["segment_image", "segment_folder"]

#: A pipelines.yaml is a few kilobytes. These bound what reading one may cost: YAML aliases
#: repeat what they name, so a small file can stand for billions of values ("billion laughs").
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 100_000


class Schedule(BaseModel):
    """When a deployment runs: a cron expression or an interval, in a time zone."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str | None = Field(None, description="five-field cron expression, e.g. '0 2 * * *'")
    interval: datetime.timedelta | None = Field(
        None, description="seconds, or an ISO 8601 duration such as PT15M"
    )
    timezone: str = Field("UTC", description="IANA time zone, e.g. Europe/Berlin")

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if len(value.split()) != 5:
            # Prefect's croniter also takes a sixth (seconds) field, which cron does not.
            raise ValueError(
                f"{value!r} has {len(value.split())} fields: use five "
                "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
            )
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError:
            raise ValueError(
                f"{value!r} is not a cron expression: use five fields "
                "(minute hour day-of-month month day-of-week), e.g. '0 2 * * *'"
            ) from None
        return value

    @field_validator("interval")
    @classmethod
    def _positive(cls, value: datetime.timedelta | None) -> datetime.timedelta | None:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError(f"interval must be positive, got {value}")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        import zoneinfo

        if value not in zoneinfo.available_timezones():
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as Europe/Berlin")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        if (self.cron is None) == (self.interval is None):
            raise ValueError("give exactly one of cron or interval")
        return self


class DeploymentParameters(SegmentParameters):
    """The flow's parameters, flat: input and output plus the segmentation settings.

    Parsed strictly: YAML's ``yes`` is no batch size and ``1.0e3`` no tile size (each value of
    its field's own type), no text is empty, and ``nodata`` is a finite number.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    input: str = Field(
        min_length=1, description="image or folder (path relative to the file, or a URL)"
    )
    output: str | None = Field(
        None,
        min_length=1,
        description="mask or folder of masks (path relative to the file, or URL); "
        "left out with labels, which writes the mask into the image",
    )

    @field_validator("model", "scheduler")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("nodata")
    @classmethod
    def _finite_nodata(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(
                f"nodata {value} is not a pixel value: NaN pixels are always no data (label 0); "
                "leave nodata out, or give a finite number"
            )
        return value

    @model_validator(mode="after")
    def _output_or_labels(self) -> DeploymentParameters:
        if self.output is None and self.labels is None:
            raise ValueError("give output, or labels to write the mask into the image")
        return self

    def flow_parameters(self) -> dict[str, Any]:
        """The parameters as the flows take them; unset settings keep the flows' defaults."""
        from unet.engine.destination import mask_location

        settings = self.model_dump(mode="json", exclude_unset=True, exclude={"input", "output"})
        output = mask_location(self.input, self.output, self.labels)
        return {"input": self.input, "output": output, "parameters": settings}


class Deployment(BaseModel):
    """One deployment of a flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        pattern=r"^[^/%&><\x00-\x1f\x7f]+$",
        description="unique in the file; no /, %, &, <, > or control characters (newlines)",
    )
    flow: FlowName
    description: str | None = None
    parameters: DeploymentParameters
    schedule: Schedule | None = None
    tags: list[Annotated[str, Field(min_length=1, pattern=r"^[^\x00-\x1f\x7f]+$")]] = Field(
        default_factory=list
    )
    concurrency_limit: int | None = Field(None, ge=1, description="runs at once, at most")


class Pipelines(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deployments: list[Deployment] = Field(min_length=1)

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, value: list[Deployment]) -> list[Deployment]:
        names = [d.name for d in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"deployment names must be unique: {', '.join(repeated)} repeated")
        return value


def load_pipelines(path: str | os.PathLike[str]) -> Pipelines:
    """Read and validate ``path``; relative local paths in it are resolved against its folder.

    Raises
    ------
    ConfigError: the file is missing, is not YAML, or has an unknown key or a bad value
    """
    import yaml

    file = Path(path)
    try:
        status = file.stat()
        if not stat.S_ISREG(status.st_mode):
            # A FIFO would block the read for ever, a device read without end.
            raise ConfigError(f"{file} is not a regular file: give the path of a pipelines.yaml")
        if status.st_size > MAX_FILE_BYTES:
            raise ConfigError(
                f"{file} is {status.st_size} bytes, more than a pipelines.yaml needs (at most "
                f"{MAX_FILE_BYTES}): give the path of a pipelines.yaml"
            )
        text = _utf8(file, file.read_bytes())
        document = yaml.compose(text, Loader=yaml.SafeLoader)
        _check_expanded_size(file, document)
        _check_unique_keys(file, document)
        data = yaml.safe_load(text)
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"{file}: no such file: give the path of a pipelines.yaml") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{file}:{line} not valid YAML ({_problem(error)})") from None
    except RecursionError:
        raise ConfigError(f"{file}: nested too deeply to be a pipelines.yaml") from None
    try:
        pipelines = Pipelines.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{file}: {_describe(error)}") from None
    return _resolved(pipelines, file.resolve().parent)


def _utf8(file: Path, data: bytes) -> str:
    """The file's text; one line naming the encoding to use when it is not UTF-8 (latin-1,
    UTF-16: YAML would misread the one and PyYAML refuse the other with a traceback)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{file} is not UTF-8 text (byte {error.start} is {data[error.start : error.start + 1]!r}"
            "; latin-1 or UTF-16?): save it as UTF-8"
        ) from None


def _check_unique_keys(file: Path, root: Any) -> None:
    """Refuse a mapping that gives a key twice (plain YAML keeps the last one without a word);
    on the composed document, before anything is constructed."""
    import yaml

    seen_nodes: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen_nodes:
            continue  # an alias: checked where its anchor is
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in keys:
                        raise ConfigError(
                            f"{file}: line {key.start_mark.line + 1}: key {key.value!r} is given "
                            "twice in one mapping: keep one"
                        )
                    keys.add((key.tag, key.value))
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _check_expanded_size(file: Path, root: Any) -> None:
    """Refuse a document whose aliases expand to more than ``MAX_VALUES`` values, or into
    themselves; each node of the composed (not yet expanded) document is counted once."""
    import yaml

    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(node: Any) -> int:
        identity = id(node)
        if identity in sizes:
            return sizes[identity]
        if identity in open_nodes:
            raise ConfigError(f"{file}: a YAML alias refers to itself: write the values out")
        open_nodes.add(identity)
        if isinstance(node, yaml.SequenceNode):
            count = 1 + sum(expanded(item) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            count = 1 + sum(expanded(name) + expanded(value) for name, value in node.value)
        else:
            count = 1
        open_nodes.discard(identity)
        if count > MAX_VALUES:
            raise ConfigError(
                f"{file}: its YAML aliases expand to more than {MAX_VALUES} values: "
                "a pipelines.yaml needs no more; write the values out"
            )
        sizes[identity] = count
        return count

    if root is not None:
        expanded(root)


def _resolved(pipelines: Pipelines, base: Path) -> Pipelines:
    deployments = []
    for deployment in pipelines.deployments:
        parameters = deployment.parameters
        changes: dict[str, Any] = {
            "input": _local(parameters.input, base),
            "output": None if parameters.output is None else _local(parameters.output, base),
        }
        if "model" in parameters.model_fields_set and _is_file_name(parameters.model):
            changes["model"] = _local(parameters.model, base)
        resolved = parameters.model_copy(update=changes)
        deployments.append(deployment.model_copy(update={"parameters": resolved}))
    return pipelines.model_copy(update={"deployments": deployments})


def _local(location: str, base: Path) -> str:
    if "://" in location:
        return location
    return str((base / Path(location).expanduser()).resolve())


def _is_file_name(model: str) -> bool:
    """A checkpoint path rather than a bundled model name."""
    return model.endswith(".safetensors") or "/" in model or os.sep in model


def _describe(error: ValidationError) -> str:
    """Every problem of ``error`` on one line: ``key.path: what was expected``."""
    problems = []
    for item in error.errors():
        location = _key_path(item["loc"])
        if item["type"] == "extra_forbidden":
            expected = _allowed_keys(item["loc"][:-1])
            problems.append(f"{location}: unknown key (expected one of: {', '.join(expected)})")
        elif item["type"] == "missing":
            problems.append(f"{location}: required key is missing")
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = repr(item.get("input"))
            problems.append(f"{location}: {message}" + ("" if got in message else f" (got {got})"))
    return "; ".join(problems)


def _key_path(location: tuple[Any, ...]) -> str:
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(top level)"


def _allowed_keys(location: tuple[Any, ...]) -> list[str]:
    """The keys the model at ``location`` accepts."""
    model: Any = Pipelines
    for part in location:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[part].annotation
        model = next(
            (t for t in (*getattr(annotation, "__args__", ()), annotation) if _is_model(t)), None
        )
        if model is None:
            return []
    return list(model.model_fields)


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)


def _problem(error: Exception) -> str:
    return " ".join(str(getattr(error, "problem", None) or error).split())
