"""Structured output: checking a requested JSON Schema and whether an answer satisfies it."""

import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from shared.errors import ErrorCode, TesseraError


def check_schema(schema: dict[str, Any]) -> None:
    """Refuse a JSON Schema that is not valid (Draft 2020-12) with an actionable error."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise TesseraError(ErrorCode.invalid_request,
                           f"json_schema is not a valid JSON Schema: {error.message}") from None


def parse_output(text: str, schema: dict[str, Any]) -> tuple[Any, bool]:
    """The answer parsed as JSON (None when it is not JSON) and whether it matches the schema."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, False
    return value, Draft202012Validator(schema).is_valid(value)
