"""Structural FHIR R4B validation, compiled from the fhir.resources R4B model classes.

Parsing every resource with its pydantic model is thorough but slow (it builds a Python object per
element). The fast path here keeps the checks that matter for a faithful load -- element names,
primitive formats, list-vs-single cardinality, required elements, one value per choice group,
well-formed references -- and runs them inside pydantic-core: for each resource type we derive a
core schema from the R4B model fields (their aliases and annotations, never a retyped list), compile
it once into a ``SchemaValidator`` and let it parse + check each NDJSON line in Rust.

Public API:

* :func:`resource_model` -- the R4B model class of a resource type (raises for an unknown type).
* :func:`element_table` -- ``{json name: Element}`` for any R4B model class (cached).
* :func:`structural_validator` -- a cached :class:`StructuralValidator` per resource type.
* :class:`StructuralProblem` -- one defect found in a resource: element path, value and reason.
* :func:`specialisation` -- per type, a faster validator declaring only the elements seen so far (the
  full one decides whatever it refuses), for the NDJSON hot loop.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_core.fhirabstractmodel import FHIRAbstractModel
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from pydantic_core import PydanticCustomError, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from fedomop.harmonize.ground.errors import SourceError

# A Reference.reference must be one of the forms the FHIR R4 spec allows (relative "Type/id", an
# absolute URL, a bundle-local urn:uuid / urn:oid, a "#contained" fragment, or a conditional
# reference "Type?search" inside transaction bundles and Synthea exports).
REFERENCE_PATTERN = (
    r"#[A-Za-z0-9\-.]*"
    r"|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|urn:oid:[0-2](\.(0|[1-9][0-9]*))+"
    r"|[A-Za-z][A-Za-z0-9+.\-]*://\S+"
    r"|[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?"
    r"|[A-Z][A-Za-z]+\?\S+"
)
REFERENCE_FORMS = "'Type/id', an absolute URL, 'urn:uuid:<uuid>', '#contained-id' or 'Type?identifier=system|value'"

# How each FHIR primitive is written in JSON, for messages that tell the user what to write instead.
PRIMITIVE_FORMS = {
    "date": "YYYY, YYYY-MM or YYYY-MM-DD (a real calendar date)",
    "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz (time zone required with a time)",
    "instant": "YYYY-MM-DDThh:mm:ss(.sss)+zz:zz",
    "time": "hh:mm:ss",
    "decimal": "a JSON number (not a string), e.g. 12.5",
    "integer": "a JSON integer",
    "unsignedInt": "a JSON integer >= 0",
    "positiveInt": "a JSON integer >= 1",
    "integer64": "a JSON integer",
    "boolean": "JSON true or false",
    "code": "a non-empty string without leading/trailing or double spaces",
    "id": "1-64 characters A-Z a-z 0-9 - .",
    "oid": "urn:oid:<digits and dots>",
    "uri": "a string without whitespace",
    "canonical": "a string without whitespace",
    "base64Binary": "base64 text",
}
NUMBER_PRIMITIVES = {"integer", "unsignedInt", "positiveInt", "integer64"}
DATE_PRIMITIVES = {"date", "dateTime", "instant"}

Model = type[FHIRAbstractModel]  # an R4B model class (a resource or complex data type)


@dataclass(frozen=True)
class Element:
    """One element of a FHIR type as it appears in JSON.

    ``primitive`` is the FHIR primitive type name for primitives; ``model`` the R4B class for complex
    types; ``any_resource`` marks elements holding a resource of any type (``contained``,
    ``Bundle.entry.resource``). ``primitive_extension_of`` names the element a ``_x`` key extends.
    """

    name: str
    is_list: bool
    required: bool
    primitive: str | None = None
    model: Model | None = None
    any_resource: bool = False
    choice_group: str | None = None
    primitive_extension_of: str | None = None
    pattern: str | None = None
    limits: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class StructuralProblem:
    """A defect in one resource: the element path (``code.coding[0].system``), the value and a reason."""

    field: str
    value: str
    reason: str


@cache
def resource_model(resource_type: str) -> Model:
    """The fhir.resources R4B model class for ``resource_type``; SourceError if R4B has no such resource."""
    from fhir.resources.R4B import get_fhir_model_class

    try:
        model = get_fhir_model_class(resource_type)
    except (ValueError, AttributeError, ImportError):
        model = None
    if model is None or not model.has_resource_base() or resource_type in {"Resource", "DomainResource"}:
        raise SourceError(
            f"'{resource_type}' is not a FHIR R4B resource type",
            fix="use a resource type name from https://hl7.org/fhir/R4B/resourcelist.html, e.g. Condition",
        )
    return model


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """Strip Optional/Union-with-None and List from an annotation: (inner type, is_list)."""
    is_list = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin is list:
            is_list = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, is_list


def _primitive_constraints(metadata: tuple[Any, ...]) -> tuple[str | None, str | None, tuple[tuple[str, Any], ...]]:
    """FHIR primitive name, regex and numeric/length limits from fhir_core's Annotated metadata."""
    name = None
    pattern = None
    limits: list[tuple[str, Any]] = []
    for meta in metadata:
        name = getattr(meta, "__visit_name__", name)
        own = getattr(meta, "pattern", None) or getattr(meta, "regex", None)
        if own is not None and not isinstance(own, int):
            pattern = own.pattern if isinstance(own, re.Pattern) else own
        if hasattr(meta, "__iter__"):
            for part in meta:
                for key in ("pattern", "min_length", "max_length", "ge", "le"):
                    value = getattr(part, key, None)
                    if value is not None:
                        if key == "pattern":
                            pattern = value
                        else:
                            limits.append((key, value))
    return name, pattern, tuple(limits)


def _element_from_field(name: str, field: Any) -> Element | None:
    """Describe one pydantic model field as a JSON element, or None for non-FHIR bookkeeping fields."""
    if name == "fhir_comments":
        return None
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    inner, is_list = _unwrap(field.annotation)
    json_name = field.alias or name
    if name.endswith("__ext"):
        model = inner.get_model_klass()
        return Element(json_name, is_list, False, model=model, primitive_extension_of=json_name[1:])
    required = bool(field.is_required() or extra.get("element_required"))
    group = extra.get("one_of_many")
    if inner is bool:
        return Element(json_name, is_list, required, primitive="boolean", choice_group=group)
    if typing.get_origin(inner) is typing.Annotated:
        base, *metadata = typing.get_args(inner)
        primitive, pattern, limits = _primitive_constraints(tuple(metadata))
        return Element(json_name, is_list, required, primitive or "string", None, False, group, None, pattern, limits)
    if isinstance(inner, type) and issubclass(inner, FhirBase):
        model = inner.get_model_klass()
        polymorphic = issubclass(inner, FhirElementOrResourceBase) and model.__name__ == "Resource"
        return Element(json_name, is_list, required, model=model, any_resource=polymorphic, choice_group=group)
    raise TypeError(f"unsupported annotation {field.annotation!r} on {name}")  # a new fhir.resources layout


@cache
def element_table(model: Model) -> dict[str, Element]:
    """``{json element name: Element}`` for an R4B model class, derived from its pydantic fields."""
    table: dict[str, Element] = {}
    for name, field in model.model_fields.items():
        element = _element_from_field(name, field)
        if element is not None:
            table[element.name] = element
    return table


def type_name(model: Model) -> str:
    """The FHIR name of a model class (resource type or data type)."""
    return getattr(model, "__resource_type__", None) or model.__name__


# ---------------------------------------------------------------------------------------------------
# core-schema compilation


# The primitive regexes accept 2021-02-30; a date SHALL be a real date (as the R4B models require).
# Checked by a second regex (Gregorian month lengths and leap years) so it stays inside pydantic-core.
CALENDAR_PATTERN = (
    r"^(?:[0-9]{4}(-[0-9]{2})?"
    r"|[0-9]{4}-((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)(T.*)?"
    r"|([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)-02-29(T.*)?)$"
)


LEAP_YEAR = r"([0-9]{2}(0[48]|[2468][048]|[13579][26])|(0[48]|[2468][048]|[13579][26])00)"
REAL_MONTH_DAY = r"((0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])|(0[13-9]|1[0-2])-(29|30)|(0[13578]|1[02])-31)"
_YEAR = "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = "(0[1-9]|1[0-2])"
_DAY = "(0[1-9]|[1-2][0-9]|3[0-1])"


@cache
def real_date_pattern(primitive: str, pattern: str) -> str | None:
    """One regex for "a FHIR date/dateTime/instant AND a real calendar date" (the R4B format with its
    day part split into real month-days, plus Feb 29 of leap years): a single match per value instead
    of the format regex followed by CALENDAR_PATTERN. None when ``pattern`` is not the R4B form this
    is derived from (a new fhir.resources release): the caller then keeps the two-step check.
    tests/harmonize/test_fhir_fast_paths.py compares the two on every day of several years."""
    head = f"{_YEAR}-{_MONTH}-{_DAY}"
    if primitive == "instant" and pattern.startswith(head):
        time = pattern[len(head) :]
        return f"{_YEAR}-{REAL_MONTH_DAY}{time}|{LEAP_YEAR}-02-29{time}"
    if primitive == "dateTime" and pattern.startswith(f"{_YEAR}(-{_MONTH}(-{_DAY}(") and pattern.endswith(")?)?)?"):
        time = pattern[len(f"{_YEAR}(-{_MONTH}(-{_DAY}(") : -len(")?)?)?")]
        optional = f"({time})?"
    elif primitive == "date" and pattern == f"{_YEAR}(-{_MONTH}(-{_DAY})?)?":
        optional = ""
    else:
        return None
    return f"{_YEAR}(-{_MONTH})?|{_YEAR}-{REAL_MONTH_DAY}{optional}|{LEAP_YEAR}-02-29{optional}"


def _decodable_base64(value: str) -> str:
    """A base64Binary is valid when R4B can decode it: :func:`base64.b64decode` without ``validate``
    (characters outside the alphabet are skipped, the padding must be right)."""
    try:
        base64.b64decode(value)
    except (binascii.Error, ValueError):
        raise ValueError("not decodable base64") from None
    return value


def _primitive_schema(element: Element) -> cs.CoreSchema:
    primitive = element.primitive
    limits = dict(element.limits)
    if primitive == "boolean":
        return cs.bool_schema(strict=True)
    if primitive == "decimal":
        return cs.float_schema(strict=True, allow_inf_nan=False)
    if primitive in NUMBER_PRIMITIVES:
        return cs.int_schema(strict=True, ge=limits.get("ge"), le=limits.get("le"))
    if primitive == "base64Binary":  # R4B decodes the text (lenient base64, "/" and "+" included), no regex
        return cs.no_info_after_validator_function(_decodable_base64, cs.str_schema(strict=True))
    real_date = real_date_pattern(primitive, element.pattern) if primitive in DATE_PRIMITIVES else None
    pattern = real_date or element.pattern
    if pattern and primitive in DATE_PRIMITIVES:
        pattern = f"^(?:{pattern})$"
    # other primitives: the regex as R4B's pydantic applies it -- a search, anchored only where the FHIR
    # regex has its own ^...$ (so a string "van\u00a0Dam" passes: it has a non-space; "\u00a0" alone fails)
    schema: cs.CoreSchema = cs.str_schema(
        strict=True,
        pattern=pattern or None,
        min_length=limits.get("min_length"),
        max_length=limits.get("max_length"),
    )
    if primitive in DATE_PRIMITIVES and real_date is None:
        schema = cs.chain_schema([schema, cs.str_schema(pattern=CALENDAR_PATTERN)])
    return schema


def _rule_parts(table: dict[str, Element]) -> tuple[list[tuple[str, frozenset[str]]], list[tuple[str, str]]]:
    """(choice group -> its element names, (required primitive, its "_x" name)) of one type."""
    groups: dict[str, frozenset[str]] = {}
    for element in table.values():
        if element.choice_group:
            groups[element.choice_group] = groups.get(element.choice_group, frozenset()) | {element.name}
    required_primitives = [(e.name, "_" + e.name) for e in table.values() if e.required and e.primitive]
    return list(groups.items()), required_primitives


def _object_checks(
    model: Model, table: dict[str, Element], *, specialised: bool = False
) -> typing.Callable[[dict], dict] | None:
    """A post-check for rules a typed dict cannot express: one value per choice group, and required
    primitives that may be present only as their ``_x`` extension.

    ``specialised``: ``table`` declares only some elements and its typed dict requires the required
    primitives themselves, so only choice groups with two or more declared values need a check."""
    group_items, required_primitives = _rule_parts(table)
    if specialised:
        group_items = [(group, names) for group, names in group_items if len(names) > 1]
        required_primitives = []
    if not group_items and not required_primitives:
        return None
    choices = frozenset().union(*(names for _group, names in group_items))
    owner = type_name(model)

    def fail(value: dict) -> None:
        for group, names in group_items:
            present = names.intersection(value)
            if len(present) > 1:
                raise PydanticCustomError(
                    "fhir_choice",
                    "{owner}.{group}[x] has {count} values ({names}); keep exactly one",
                    {"owner": owner, "group": group, "count": len(present), "names": ", ".join(sorted(present))},
                )
        for name, extension in required_primitives:
            if name not in value and extension not in value:
                raise PydanticCustomError(
                    "fhir_required", "required element '{name}' is missing from {owner}", {"name": name, "owner": owner}
                )

    if len(group_items) <= 1:  # e.g. Extension: value[x] and url, tested in place (no second call)

        def check_one_group(value: dict) -> dict:
            if len(choices.intersection(value)) > 1:
                fail(value)
            for name, extension in required_primitives:
                if name not in value and extension not in value:
                    fail(value)
            return value

        return check_one_group

    def check(value: dict) -> dict:
        """Runs for every object of this type, so the common case is one set operation per rule."""
        if not rules_hold(value):
            fail(value)
        return value

    rules_hold = _rules_test(group_items, required_primitives)
    return check


def _rules_test(
    group_items: list[tuple[str, frozenset[str]]], required_primitives: list[tuple[str, str]]
) -> typing.Callable[[dict], bool]:
    """True when ``value`` keeps the choice and required-primitive rules (no error built: fast)."""
    choices = frozenset().union(*(names for _group, names in group_items))
    group_of = {name: group for group, names in group_items for name in names}.__getitem__
    if not group_items and len(required_primitives) == 1:  # e.g. Encounter: status
        name, extension = required_primitives[0]
        return lambda value: name in value or extension in value
    if len(group_items) == 1 and not required_primitives:  # e.g. AllergyIntolerance: onset[x]
        return lambda value: len(choices.intersection(value)) < 2

    def rules_hold(value: dict) -> bool:
        present = choices.intersection(value)
        if len(present) > 1 and len(set(map(group_of, present))) < len(present):
            return False  # two values in one group (Observation may have effective[x] and value[x])
        for name, extension in required_primitives:
            if name not in value and extension not in value:
                return False
        return True

    return rules_hold


def resource_rules(resource_type: str) -> typing.Callable[[dict], bool] | None:
    """The resource-level choice/required rules of ``resource_type`` as a yes/no test (None: no rules).

    StructuralValidator.parse_elements leaves these out so the hot loop can test them in Python
    without a call from the validator back into Python for every resource."""
    group_items, required_primitives = _rule_parts(element_table(resource_model(resource_type)))
    if not group_items and not required_primitives:
        return None
    return _rules_test(group_items, required_primitives)


def present_elements(model: Model, value: dict, found: set[tuple[type, str]]) -> None:
    """Add the (model, element) pairs present in a checked resource or data-type object to ``found``."""
    table = element_table(model)
    for name, item in value.items():
        found.add((model, name))
        element = table.get(name)
        if element is None or element.model is None or element.any_resource:
            continue
        for entry in item if type(item) is list else (item,):
            if type(entry) is dict:
                present_elements(element.model, entry, found)


def _any_resource(value: Any) -> dict:
    """Validate an embedded resource (contained, Bundle.entry.resource) with its own type's checker."""
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise PydanticCustomError("fhir_resource", "expected a FHIR resource (a JSON object with a resourceType)")
    try:
        checker = structural_validator(value["resourceType"])
    except SourceError as error:
        raise PydanticCustomError(
            "fhir_resource", "{message}; {fix}", {"message": error.message, "fix": error.fix or ""}
        ) from None
    problems = checker.problems(value)
    if problems:
        first = problems[0]
        raise PydanticCustomError(
            "fhir_resource", "embedded {rtype}: {field}: {reason}", {"rtype": value["resourceType"], **first.__dict__}
        )
    return value


def _element_schema(element: Element, refs: dict[type, str], pending: list[Model]) -> cs.CoreSchema:
    schema: cs.CoreSchema
    if element.any_resource:
        schema = cs.no_info_plain_validator_function(_any_resource)
    elif element.primitive:
        schema = _primitive_schema(element)
    else:
        assert element.model is not None
        if element.model not in refs:
            refs[element.model] = f"fhir:{element.model.__module__}.{element.model.__name__}"
            pending.append(element.model)
        schema = cs.definition_reference_schema(refs[element.model])
    if element.primitive_extension_of is not None and element.is_list:
        # "_given": [null, {...}] lines up with "given": ["a", "b"]; nulls are allowed only there.
        return cs.list_schema(cs.nullable_schema(schema), strict=True)
    if element.is_list:
        items = cs.nullable_schema(schema) if element.primitive else schema
        return cs.list_schema(items, strict=True, min_length=1)
    return schema


Kept = frozenset[tuple[type, str]]  # (model class, element name) pairs a specialised validator declares


def _model_schema(
    model: Model,
    refs: dict[type, str],
    pending: list[Model],
    *,
    top: bool,
    rules: bool = True,
    keep: Kept | None = None,
) -> cs.CoreSchema:
    table = element_table(model)
    if keep is not None:  # a specialised validator: the required elements and those in ``keep``
        table = {name: element for name, element in table.items() if element.required or (model, name) in keep}
    fields: dict[str, cs.TypedDictField] = {}
    for element in table.values():
        # a required primitive may be given as "_x" only; the post-check enforces that case -- except in a
        # specialised validator, which requires the value itself (an "_x"-only one goes to the full validator)
        required = element.required and (keep is not None or not element.primitive)
        fields[element.name] = cs.typed_dict_field(_element_schema(element, refs, pending), required=required)
    if model.has_resource_base():
        fields["resourceType"] = cs.typed_dict_field(cs.literal_schema([type_name(model)]), required=True)
    ref = None if top else refs[model]
    check = _object_checks(model, table, specialised=keep is not None) if rules else None
    if check is None:
        return cs.typed_dict_schema(fields, extra_behavior="forbid", ref=ref)
    return cs.no_info_after_validator_function(check, cs.typed_dict_schema(fields, extra_behavior="forbid"), ref=ref)


@cache
def _compiled(resource_type: str, root_rules: bool = True, keep: Kept | None = None) -> SchemaValidator:
    """Compile the core schema of one resource type (and every data type it reaches) once.

    ``root_rules=False`` leaves out the resource-level choice/required rules (see resource_rules).
    ``keep``: declare only the required elements and these (see StructuralValidator.specialised)."""
    model = resource_model(resource_type)
    refs: dict[type, str] = {}
    pending: list[Model] = []
    root = _model_schema(model, refs, pending, top=True, rules=root_rules, keep=keep)
    definitions: list[cs.CoreSchema] = []
    done: set[type] = set()
    while pending:
        data_type = pending.pop()
        if data_type in done:
            continue
        done.add(data_type)
        definition = _model_schema(data_type, refs, pending, top=False, keep=keep)
        if data_type.__name__ == "Reference":
            definition = _with_reference_format(definition)
        definitions.append(definition)
    # cache_strings="keys": element names repeat, values mostly do not (ids, references, timestamps), so
    # caching every short value costs more than it saves (about 9% of the check on site-B-style data)
    return SchemaValidator(cs.definitions_schema(root, definitions), config=cs.CoreConfig(cache_strings="keys"))


def _with_reference_format(definition: cs.CoreSchema) -> cs.CoreSchema:
    """Reference.reference must be one of the allowed forms (FHIR R4 3.4.3.2), not just any string."""
    inner = definition["schema"] if definition["type"] == "function-after" else definition
    field = inner["fields"].get("reference")
    if field is not None:  # (a specialised validator may not declare it)
        field["schema"] = cs.str_schema(strict=True, pattern=f"^(?:{REFERENCE_PATTERN})$")
    return definition


# ---------------------------------------------------------------------------------------------------
# running it


class StructuralValidator:
    """Checks one resource type; ``parse_json`` parses and checks an NDJSON line in one go."""

    def __init__(self, resource_type: str) -> None:
        self.resource_type = resource_type
        self.model = resource_model(resource_type)
        self.root_rules = resource_rules(resource_type)
        # everything but root_rules; the full validator (same errors as before) is compiled on first need
        self._elements = _compiled(resource_type, root_rules=self.root_rules is None)
        self.parse_elements = self._elements.validate_json

    @property
    def _validator(self) -> SchemaValidator:
        return _compiled(self.resource_type) if self.root_rules is not None else self._elements

    def parse_json(self, line: bytes | str) -> dict:
        """The resource as a dict; raises pydantic_core.ValidationError when it is not valid.

        Hot loops may call ``parse_elements(line)`` and then ``root_rules(resource)`` (when not None):
        the same decision, without the validator calling back into Python for every resource."""
        resource = self.parse_elements(line)
        if self.root_rules is None or self.root_rules(resource):
            return resource
        return self._validator.validate_json(line)  # raises the rule's error

    def specialised(self, keep: Kept) -> typing.Callable[[bytes | str], dict]:
        """``parse_elements`` for resources made only of the elements in ``keep`` (see present_elements)
        plus the required ones: anything else is an undeclared element there, so the line fails.

        Why it is safe: each declared element keeps its full schema, so a line this accepts is accepted
        by ``parse_elements`` too, with the same result; a line it refuses must be decided by
        ``parse_elements``. Why it is faster: pydantic-core looks up every declared element of every
        object, present or not, and most types declare dozens that an export never uses. It includes the
        resource-level rules (no ``root_rules`` test after it): with one declared value per choice
        group and the required primitives required, they hold by construction and cost nothing."""
        return _compiled(self.resource_type, root_rules=True, keep=keep).validate_json

    def validate(self, resource: dict) -> dict:
        """Check an already-parsed resource; raises pydantic_core.ValidationError when it is not valid."""
        checked = self._elements.validate_python(resource)
        if self.root_rules is None or self.root_rules(checked):
            return checked
        return self._validator.validate_python(resource)

    def problems(self, resource: Any) -> list[StructuralProblem]:
        """Every defect in an already-parsed resource ([] when it is valid)."""
        try:
            self.validate(resource)
        except ValidationError as error:
            return self.explain(error)
        return []

    def explain(self, error: ValidationError) -> list[StructuralProblem]:
        """Turn pydantic-core errors into element paths and reasons a data steward can act on."""
        return [self._problem(item) for item in error.errors(include_url=False)]

    def _problem(self, item: Any) -> StructuralProblem:
        loc = [part for part in item["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        path = _format_path(loc)
        owner, element = _locate(self.model, loc)
        value = item.get("input")
        shown = value if isinstance(value, str) else _json_text(value)
        reason = _reason(item, owner, element, loc, value)
        context = item.get("ctx") or {}
        if item["type"] == "fhir_required":  # name the missing element, not just its parent
            path, shown = f"{path}.{context['name']}" if path else context["name"], ""
        elif item["type"] == "fhir_resource" and context.get("field"):  # inside a contained resource
            path, shown = f"{path}.{context['field']}", context.get("value", shown)
        return StructuralProblem(path, shown[:200], reason)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def _format_path(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _locate(model: Model, loc: list[Any]) -> tuple[Model | None, Element | None]:
    """The type owning the last element of ``loc`` and that element (None where unknown)."""
    owner: Model | None = model
    element: Element | None = None
    for part in loc:
        if isinstance(part, int):
            continue
        if owner is None:
            return None, None
        element = element_table(owner).get(part)
        if element is None:
            return owner, None
        if part is not loc[-1]:
            owner = element.model if not element.any_resource else None
    return owner, element


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if value is None:
        return "null"
    return type(value).__name__


def _unreal_date(item: Any, element: Element | None, value: Any) -> bool:
    """A date in the right format whose day does not exist (2021-02-30)."""
    if item.get("ctx", {}).get("pattern") == CALENDAR_PATTERN:
        return True
    if element is None or element.primitive not in DATE_PRIMITIVES or not element.pattern or type(value) is not str:
        return False
    return re.fullmatch(element.pattern, value) is not None


def _reason(item: Any, owner: Model | None, element: Element | None, loc: list[Any], value: Any) -> str:
    kind = item["type"]
    owner_name = type_name(owner) if owner is not None else "the resource"
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    if kind == "extra_forbidden":
        valid = list(element_table(owner)) if owner is not None else []
        close = difflib.get_close_matches(last, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"'{last}' is not an element of {owner_name}{hint}; rename or remove it"
    if kind == "missing":
        return f"required element '{last}' is missing from {owner_name}; add it"
    if kind == "literal_error" and last == "resourceType":
        return f"resourceType must be '{owner_name}'; put this resource in the file/source for its own type"
    if kind == "json_invalid":
        return f"invalid JSON ({item['ctx']['error']}); the line is truncated or not JSON - re-export the resource"
    if kind.startswith("fhir_"):
        return item["msg"] + ("" if kind == "fhir_resource" else "; fix the resource")
    if kind == "string_pattern_mismatch" and _unreal_date(item, element, value):
        return f"'{value}' is not a real calendar date; correct the value"
    if element is not None and last == "reference" and owner_name == "Reference" and kind == "string_pattern_mismatch":
        return f"malformed reference '{value}'; write it as {REFERENCE_FORMS}"
    if element is not None:
        if kind == "list_type":
            return f"'{last}' repeats in {owner_name} (0..*): give a JSON array, not {_json_kind(value)}"
        if kind == "too_short" and isinstance(value, list):
            return f"'{last}' is an empty array; FHIR forbids empty arrays - omit the element"
        if not isinstance(loc[-1], int) and element.is_list is False and isinstance(value, list):
            return f"'{last}' is a single value in {owner_name} (0..1), not an array; give one value"
        if value is None:
            return f"'{last}' is null; FHIR JSON does not allow null - omit the element"
        if element.primitive:
            form = PRIMITIVE_FORMS.get(element.primitive, "a non-empty string")
            return (
                f"'{last}' must be a FHIR {element.primitive}: {form}; got {_json_kind(value)} {_json_text(value)[:60]}"
            )
        if element.model is not None:
            return f"'{last}' must be a {type_name(element.model)} object; got {_json_kind(value)}"
    if kind in {"dict_type", "model_type"} and not loc:
        return f"a {owner_name} must be a JSON object; got {_json_kind(value)}"
    return f"{item['msg']}; fix the element"


LEARN_FROM = 200  # checked resources of a type whose elements are noted before specialising
REBUILDS = 8  # specialised validators built at most per type and process (then the full one stays)


class Specialisation:
    """Per process and resource type: the elements seen in checked resources so far, and a validator
    declaring only those (:meth:`StructuralValidator.specialised`) once LEARN_FROM resources were seen.
    A resource it refuses goes to the full validator; if that accepts it, its elements are noted and
    the specialised validator is rebuilt with them (at most REBUILDS times). Which resources are
    accepted, and how they read, never depends on it -- only how fast the check is."""

    def __init__(self, checker: StructuralValidator) -> None:
        self.checker = checker
        self.seen: set[tuple[type, str]] = set()
        self.examples = 0
        self.builds = 0
        self.parse: typing.Callable[[bytes | str], dict] | None = None

    @property
    def learning(self) -> bool:
        return self.parse is None and self.builds < REBUILDS

    def note(self, resource: dict) -> None:
        present_elements(self.checker.model, resource, self.seen)
        self.examples += 1

    def build(self) -> None:
        self.builds += 1
        self.parse = self.checker.specialised(frozenset(self.seen)) if self.builds <= REBUILDS else None


@cache
def specialisation(resource_type: str) -> Specialisation:
    """The process-wide :class:`Specialisation` of ``resource_type``."""
    return Specialisation(structural_validator(resource_type))


@cache
def structural_validator(resource_type: str) -> StructuralValidator:
    """The compiled structural checker of ``resource_type`` (built once per process)."""
    return StructuralValidator(resource_type)
