"""Load a mapping YAML (merging ``include:`` files) and fail fast, before any data is read.

Errors name the file, the key path (``tables.person[0].fields.gender_concept_id``) and the valid choices.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from fedomop.harmonize.ground.errors import MappingError
from fedomop.harmonize.ground.resources import mappings_dir
from fedomop.harmonize.mapping.models import ColumnExpr, ConceptFieldExpr, ConstantExpr, DateExpr, MapExpr, Mapping

_MERGED_DICTS = ("sources", "tables", "unit_aliases")
_MERGED_LISTS = ("units", "fhir_inventory", "fhir_understood_modifier_extensions")
_FIELD_TAGS: dict[str, type[BaseModel]] = {
    "column": ColumnExpr,
    "constant": ConstantExpr,
    "date": DateExpr,
    "map": MapExpr,
    "concept": ConceptFieldExpr,
}


class _DuplicateKey(Exception):
    def __init__(self, key: object, line: int) -> None:
        super().__init__(key, line)
        self.key, self.line = key, line


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping: YAML keeps only the last one, so writing
    ``tables.measurement`` twice would silently drop the first block."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *anchor`` then a key of one's own is an override, not a duplicate
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MappingError("mapping file not found", where=str(path), fix="check the --mapping path")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as dup:
        raise MappingError(
            f"key {dup.key!r} is written twice in the same block: YAML would keep only the last one",
            where=f"{path} line {dup.line}",
            fix=f"merge the two {dup.key!r} blocks into one",
        ) from None
    except UnicodeDecodeError as exc:
        raise MappingError(f"the mapping is not UTF-8 text: {exc.reason}", where=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        raise MappingError(
            f"not valid YAML: {getattr(exc, 'problem', exc)}", where=where, fix="fix the YAML syntax"
        ) from None
    if not isinstance(data, dict):
        raise MappingError("a mapping file must be a YAML mapping (key: value)", where=str(path))
    return data


def _merge_include(base: dict[str, Any], part: dict[str, Any], part_path: Path, root: Path) -> None:
    """Merge one included file: tables/sources are merged by key, units/inventory appended; nothing is overwritten
    (a key two files set to the same value is no conflict; replacing a value is what ``override:`` is for)."""
    for key, value in part.items():
        if key in _MERGED_DICTS:
            target = base.setdefault(key, {})
            for name, item in (value or {}).items():
                if key == "tables":
                    target.setdefault(name, []).extend(item or [])
                elif name in target and target[name] != item:
                    raise MappingError(
                        f"{key}.{name} is defined twice",
                        where=f"{part_path} (included from {root})",
                        fix=f"keep one, or replace the included one under override: {key}: {name}",
                    )
                else:
                    target[name] = item
        elif key in _MERGED_LISTS:
            base.setdefault(key, []).extend(value or [])
        elif key in base and base[key] != value:
            raise MappingError(
                f"key {key!r} is already set by the including file",
                where=f"{part_path} (included from {root})",
                fix=f"an included file may add {', '.join(_MERGED_DICTS + _MERGED_LISTS)}; set other keys once, "
                f"or replace the included value under override: {key}",
            )
        else:
            base[key] = value


_OVERRIDE_ENTRIES = ("sources", "tables", "unit_aliases", "min_coverage")  # overridden entry by entry


def _deep_merge(base: Any, change: Any) -> Any:
    """``change`` laid over ``base``: mappings merged key by key, anything else (a list, a scalar) replaced."""
    if isinstance(base, dict) and isinstance(change, dict):
        merged = dict(base)
        for key, value in change.items():
            merged[key] = _deep_merge(base.get(key), value)
        return merged
    return change


def _apply_override(
    data: dict[str, Any], override: object, included: set[str], path: Path, origin: dict[str, Path]
) -> None:
    """The declared override rule (docs/mapping.md "include and override"): every value an including file
    replaces is listed under ``override:`` and must exist in an included file. A mapping (a source, cdm_source,
    vocabulary) is merged key by key down to the keys listed; a list or a scalar (a table's rules, fhir_inventory,
    site) is replaced whole. Anything else an included file defines is kept; a second definition outside
    ``override:`` is still refused, so nothing is replaced by accident."""
    if not override:
        return
    if not isinstance(override, dict):
        raise MappingError("override: must be a mapping of the keys to replace", where=f"{path}: override")
    for key, value in override.items():
        entries = [f"{key}.{name}" for name in value or {}] if key in _OVERRIDE_ENTRIES else [key]
        if key in _OVERRIDE_ENTRIES and not isinstance(value, dict):
            raise MappingError(f"override: {key} must be a mapping of names", where=f"{path}: override.{key}")
        for entry in entries:
            if entry not in included:
                raise MappingError(
                    f"override: {entry} replaces nothing: no included file defines it",
                    where=f"{path}: override.{entry}",
                    fix=f"declare it outside override: (as {entry.replace('.', ': ', 1)}), or fix the name",
                )
        if key in _OVERRIDE_ENTRIES:
            target = data.setdefault(key, {})
            for name, item in value.items():
                target[name] = item if key == "tables" else _deep_merge(target.get(name), item)
                origin[f"{key}.{name}"] = path
        else:
            data[key] = _deep_merge(data.get(key), value)


def _included_file(path: Path, include: str) -> Path:
    """An ``include:`` file must lie in the mapping's folder (symlinks resolved) or be one of the mappings shipped
    with fedomop: a mapping cannot pull in, or echo in an error, a file from elsewhere on the machine.

    A name that is not a file beside the mapping is looked up among the shipped mappings, so a site's mapping
    anywhere on disk can say ``include: [fhir_r4.yaml]``; a file beside it of the same name wins."""
    folder = path.parent.resolve()
    part = (path.parent / str(include)).resolve()
    shipped_folder = mappings_dir().resolve()
    shipped = (shipped_folder / str(include)).resolve()
    if not part.is_file() and shipped.is_file() and shipped.is_relative_to(shipped_folder):
        return shipped  # a mapping shipped with fedomop, named as in mappings/ (e.g. fhir_r4.yaml)
    if part.is_relative_to(folder) or part.is_relative_to(shipped_folder):
        return part  # the mapping's own folder, or a mapping shipped with fedomop (mappings/)
    raise MappingError(
        f"include {include!r} is outside the mapping's folder",
        where=f"{path}: include",
        fix="put included files in the mapping's folder (or a folder below it) and name them relative to it, "
        "or include a mapping shipped with fedomop",
    )


def read_mapping_dict(path: Path) -> tuple[dict[str, Any], dict[str, Path]]:
    """The merged raw mapping, and which file each top-level table/source came from (for error messages)."""
    path = Path(path)
    data = _read_yaml(path)
    override = data.pop("override", None)
    for key in override if isinstance(override, dict) else {}:
        if key in data and key not in _OVERRIDE_ENTRIES:
            raise MappingError(
                f"key {key!r} is set both at the top level and under override:",
                where=f"{path}: override.{key}",
                fix="keep it in one place",
            )
    for name in (override or {}).get("tables") or {} if isinstance(override, dict) else {}:
        if name in (data.get("tables") or {}):
            raise MappingError(
                f"tables.{name} has rules both at the top level and under override:",
                where=f"{path}: override.tables.{name}",
                fix="under override: the rules replace the included ones; put all of this table's rules there",
            )
    origin: dict[str, Path] = {}
    included: set[str] = set()
    includes = data.get("include") or []
    if isinstance(includes, str):  # `include: base.yaml` would iterate its letters
        raise MappingError(
            f"include: {includes!r} is a single name, not a list",
            where=f"{path}: include",
            fix=f"write include: [{includes}]",
        )
    for include in includes:
        part_path = _included_file(path, include)
        if not part_path.is_file():
            raise MappingError(
                f"included mapping {include!r} not found (beside the mapping or among the shipped mappings)",
                where=f"{path}: include",
                fix="name a file relative to this mapping's folder, or a shipped mapping such as fhir_r4.yaml",
            )
        part = _read_yaml(part_path)
        for key, value in part.items():
            names = value if key in _OVERRIDE_ENTRIES and isinstance(value, dict) else {}
            included.update([key, *(f"{key}.{name}" for name in names)])
        for key in _MERGED_DICTS:
            for name in part.get(key) or {}:
                origin[f"{key}.{name}"] = part_path
        _merge_include(data, part, part_path, path)
    _apply_override(data, override, included, path, origin)
    return data, origin


def _loc_text(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _model_candidates(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_candidates(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if origin in (typing.Union, types.UnionType) or origin in (list, dict, tuple):
        found: list[Any] = []
        for arg in typing.get_args(annotation):
            found += _model_candidates(arg)
        return found
    return []


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the object at ``loc`` (to list the keys it accepts)."""
    current: list[Any] = [Mapping]
    for index, part in enumerate(loc):
        if not isinstance(part, str):
            continue
        if index >= 2 and loc[index - 2] == "fields" and part in _FIELD_TAGS:
            current = [_FIELD_TAGS[part]]
            continue
        by_name = [m for m in current if part in m.model_fields]
        if by_name:
            current = _model_candidates(by_name[0].model_fields[part].annotation)
    return current[0] if current else None


def _describe(error: dict[str, Any], owner_loc: tuple[Any, ...]) -> tuple[str, str | None]:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        owner = _model_at(owner_loc)
        keys = ", ".join(f.alias or n for n, f in owner.model_fields.items()) if owner else "see docs/mapping.md"
        if owner is Mapping:  # read by the loader before the model: a key of the file all the same
            keys += ", override"
        return f"unknown key {loc[-1]!r}", f"valid keys here: {keys}"
    if error["type"] == "missing":
        return f"required key {loc[-1]!r} is missing", "add it (see docs/mapping.md)"
    return error["msg"], "see docs/mapping.md for the mapping language"


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Drop pydantic's tagged-union markers so the location reads like the YAML key path."""
    return tuple(
        p
        for i, p in enumerate(loc)
        if not (
            isinstance(p, str)
            and (p.startswith("function-") or (i >= 2 and loc[i - 2] == "fields" and p in _FIELD_TAGS))
        )
    )


def load_mapping(path: Path | str) -> Mapping:
    """Read, merge and validate a mapping file; raises MappingError naming file, key path and valid choices."""
    path = Path(path)
    data, origin = read_mapping_dict(path)
    try:
        return Mapping.model_validate(data)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        raw_loc = tuple(first["loc"])
        loc = _clean_loc(raw_loc)
        file = origin.get(".".join(str(p) for p in loc[:2]), path)
        message, fix = _describe({**first, "loc": loc}, raw_loc[:-1])
        more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise MappingError(message + more, where=f"{file}: {_loc_text(loc)}", fix=fix) from None
