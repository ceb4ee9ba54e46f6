"""Validating manifests with the API types, with errors that name field paths.

The operator uses :func:`parse_spec` on the ``spec`` it receives and reports
an :class:`InvalidJobError` (e.g. as a Stalled condition); tests use
:func:`parse_job` on whole manifests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from .v1alpha1 import HeteroTrainJob, HeteroTrainJobSpec


def field_path(loc: Sequence[int | str], prefix: str = "") -> str:
    """``("spec", "accelerators", 1, "type")`` -> ``spec.accelerators[1].type``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def format_errors(error: ValidationError, prefix: str = "") -> list[str]:
    """One ``<field path>: <message>`` line per error."""
    lines = []
    for err in error.errors(include_url=False):
        msg = str(err["msg"]).removeprefix("Value error, ")
        path = field_path(err["loc"], prefix) or "<root>"
        lines.append(f"{path}: {msg}")
    return lines


def error_paths(error: ValidationError, prefix: str = "") -> list[str]:
    """The field paths of the errors."""
    return [field_path(err["loc"], prefix) for err in error.errors(include_url=False)]


class InvalidJobError(ValueError):
    """A manifest or spec the API types refuse; ``errors`` holds ``<field path>: <message>`` lines."""

    reason = "InvalidSpec"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_job(obj: Mapping[str, Any]) -> HeteroTrainJob:
    """Validate a whole HeteroTrainJob manifest (apiVersion, kind, metadata, spec, status)."""
    try:
        return HeteroTrainJob.model_validate(obj)
    except ValidationError as e:
        raise InvalidJobError(format_errors(e)) from e


def parse_spec(spec: Mapping[str, Any]) -> HeteroTrainJobSpec:
    """Validate a ``spec`` alone (as kopf hands it over); error paths start with ``spec.``."""
    try:
        return HeteroTrainJobSpec.model_validate(dict(spec))
    except ValidationError as e:
        raise InvalidJobError(format_errors(e, prefix="spec")) from e
