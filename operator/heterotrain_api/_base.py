"""Base classes and Kubernetes building blocks shared by the HeteroTrainJob types.

Everything here is plain pydantic v2: the JSON schema that pydantic generates
from these classes is post-processed by :mod:`heterotrain_api.crdgen` into the
CRD's structural schema, so Field descriptions become ``kubectl explain``
text and ``json_schema_extra`` carries the ``x-kubernetes-*`` extensions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

from heterotrain_contract import QUANTITY_PATTERN, is_quantity, parse_quantity


def cel(
    rule: str, message: str, field_path: str | None = None, message_expression: str | None = None
) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` rule (CEL) of the CRD; the pydantic types enforce the same."""
    out: dict[str, Any] = {"rule": rule, "message": message, "reason": "FieldValueInvalid"}
    if field_path is not None:
        out["fieldPath"] = field_path
    if message_expression is not None:
        out["messageExpression"] = message_expression
    return out


def camel_alias(name: str) -> str:
    """The JSON name of a Python field: camelCase, a trailing ``_`` dropped (``async_`` -> ``async``)."""
    return to_camel(name.rstrip("_"))


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=camel_alias,
        populate_by_name=True,
        extra="forbid",
    )

    def to_dict(self) -> dict[str, Any]:
        """The Kubernetes (camelCase, JSON-compatible) form; unset optional fields are left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class SpecModel(ApiModel):
    """Base of the user-written spec types: strict, like the API server (no ``"2"`` for ``2``)."""

    model_config = ConfigDict(strict=True)


# --- Kubernetes value types -------------------------------------------------


MAX_QUANTITY_LENGTH = 64


def _validate_quantity(value: Any) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and len(value) <= MAX_QUANTITY_LENGTH and is_quantity(value):
        return value
    raise ValueError(f"must be an integer or a quantity string such as 500m or 16Gi, got {value!r}")


Quantity = Annotated[
    int | str,
    PlainValidator(_validate_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "maxLength": MAX_QUANTITY_LENGTH,  # bounds the cost of the CEL rules that compare quantities
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A resource quantity: an integer or a string such as ``"500m"``, ``"16Gi"``."""

FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes object embedded as-is (validated by the API server when the operator uses it)."""


def _format_time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[datetime, PlainSerializer(_format_time, return_type=str, when_used="json")]
"""A metav1.Time: RFC 3339 in UTC with second precision when serialized (``2025-01-02T03:04:05Z``)."""


def now() -> datetime:
    """The current time in UTC, truncated to whole seconds (the precision of a metav1.Time)."""
    return datetime.now(UTC).replace(microsecond=0)


ENV_VALUE_EXCLUSIVE_MESSAGE = "spec.env[].value and spec.env[].valueFrom are mutually exclusive"


class EnvVar(SpecModel):
    """An environment variable set on every worker container (a Kubernetes EnvVar)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.valueFrom) || !has(self.value) || size(self.value) == 0",
                    "message": ENV_VALUE_EXCLUSIVE_MESSAGE,
                    "reason": "FieldValueInvalid",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=1024, description="Name of the environment variable.")
    value: str | None = Field(
        default=None,
        description="Value of the variable; $(VAR_NAME) references to earlier variables are expanded.",
    )
    value_from: FreeFormObject | None = Field(
        default=None,
        description=(
            "Source of the variable's value (a Kubernetes EnvVarSource: fieldRef, resourceFieldRef, "
            "configMapKeyRef or secretKeyRef). Mutually exclusive with a non-empty value."
        ),
    )

    @model_validator(mode="after")
    def _value_xor_value_from(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError(ENV_VALUE_EXCLUSIVE_MESSAGE)
        return self


class Toleration(SpecModel):
    """A Kubernetes Toleration, added to every worker pod."""

    key: str | None = Field(
        default=None,
        max_length=317,
        description="Taint key the toleration applies to; empty matches all keys (with operator Exists).",
    )
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Relationship of key to value: Exists or Equal (the default)."
    )
    value: str | None = Field(
        default=None, max_length=63, description="Taint value the toleration matches (operator Equal)."
    )
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        description="For effect NoExecute: how long the pod stays bound after the taint appears.",
    )


MSG_LIMIT_BELOW_REQUEST = "every limit must be at least the request of the same resource"


def limit_below_request(requests: dict[str, Any] | None, limits: dict[str, Any] | None) -> list[str]:
    """The resources whose limit is below their request."""
    if not requests or not limits:
        return []
    return sorted(
        k for k in set(requests) & set(limits) if parse_quantity(limits[k]) < parse_quantity(requests[k])
    )


def cel_quantity_at_least(big: str, small: str) -> str:
    """CEL: quantity ``big`` >= quantity ``small`` (int-or-string values)."""
    return f"quantity(string({big})).compareTo(quantity(string({small}))) >= 0"


class WorkerResources(SpecModel):
    """CPU, memory and other resources of each worker container, besides its accelerators."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.requests) || !has(self.limits) || self.limits.all(k, !(k in self.requests) || "
                    + cel_quantity_at_least("self.limits[k]", "self.requests[k]")
                    + ")",
                    f"spec.resources.limits (or spec.accelerators[].resources.limits): {MSG_LIMIT_BELOW_REQUEST}",
                    ".limits",
                )
            ]
        }
    )

    requests: dict[str, Quantity] | None = Field(
        default=None,
        max_length=32,
        description="Minimum resources per worker, e.g. {cpu: 8, memory: 64Gi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Maximum resources per worker. Accelerator requests and limits are set by the operator "
            "from spec.accelerators[].resourceName and perWorker."
        ),
    )

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> WorkerResources:
        below = limit_below_request(self.requests, self.limits)
        if below:
            raise ValueError(f"limits: {', '.join(below)}: {MSG_LIMIT_BELOW_REQUEST}")
        return self


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the API types look at; everything else is kept as-is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    generate_name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
