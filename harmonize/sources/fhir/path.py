"""A small FHIRPath subset for mapping FHIR elements to columns, compiled once and evaluated per resource.

Grammar (see the "FHIR sources" section of docs/mapping.md)::

    expression := path ( "|" path )*                 first non-empty alternative wins
    path       := step ( "." step )*
    step       := NAME [ "[" INTEGER "]" ] | function
    function   := where(condition) | first() | last() | extension('url') | exists() | count()
                | resolve_id() | resolve_identifier()
    condition  := test ( "and" test )*
    test       := path ( "=" | "!=" ) literal | path ending in exists()   (a boolean path: "= true")
    literal    := 'text' | number | true | false

Evaluation follows FHIRPath collection semantics: each step maps over every item and flattens lists;
the column value is the first item of the result (or null). When a ``resource_type`` is given, element
names are checked against the fhir.resources R4B model at compile time, so a typo in a mapping fails
before any data is read, and the column's polars dtype follows the FHIR type of the selected element.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import polars as pl

from fedomop.harmonize.ground.errors import MappingError, SourceError
from fedomop.harmonize.sources.fhir.structure import Element, Model, element_table, resource_model, type_name

Items = list[Any]
Step = Callable[[Items, Mapping[str, str]], Items]
# depth-first form of the rest of a path: (item, context) -> first value or None
Lazy = Callable[[Any, Mapping[str, str]], Any]

FUNCTIONS = ("where", "first", "last", "extension", "exists", "count", "resolve_id", "resolve_identifier")
_TOKEN = re.compile(
    r"\s*(?:(?P<string>'(?:[^'\\]|\\.)*')|(?P<number>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>!=|[.|()\[\]=,]))"
)
_DTYPES: dict[str, pl.DataType] = {
    "decimal": pl.Float64(),
    "integer": pl.Int64(),
    "unsignedInt": pl.Int64(),
    "positiveInt": pl.Int64(),
    "integer64": pl.Int64(),
    "boolean": pl.Boolean(),
}


@dataclass(frozen=True)
class _Type:
    """What a step yields at compile time: a model class, a FHIR primitive name, or unknown (None, None)."""

    model: Model | None = None
    primitive: str | None = None

    @property
    def known(self) -> bool:
        return self.model is not None or self.primitive is not None

    def describe(self) -> str:
        return type_name(self.model) if self.model is not None else (self.primitive or "unknown")


ANY = _Type()


@dataclass(frozen=True)
class _Op:
    """One compiled step, in two forms: ``collect`` maps a collection to a collection (FHIRPath
    semantics, always available); ``chain`` wraps the rest of the path so that the first value is found
    depth-first without building lists (None for steps that need the whole collection, e.g. count())."""

    collect: Step
    chain: Callable[[Lazy | None], Lazy] | None = None
    name: str | None = None  # an element step whose element is known to be single (0..1)
    first: bool = False
    presence: bool = False  # exists() / count(): the result says whether items are there, not what they hold
    # what the step does, for the generated evaluator (:func:`_generate`); None: only ``collect``/``chain``
    spec: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        match = _TOKEN.match(expression, pos)
        if match is None or match.end() == pos:
            start = pos + len(expression[pos:]) - len(expression[pos:].lstrip())
            raise _syntax(expression, start, f"unexpected character {expression[start]!r}")
        kind = match.lastgroup or "op"
        tokens.append(_Token(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    tokens.append(_Token("end", "", len(expression)))
    return tokens


def _syntax(expression: str, pos: int, message: str) -> MappingError:
    pointer = expression + "\n" + " " * pos + "^"
    return MappingError(
        f"FHIR path expression {expression!r}: {message} at position {pos}\n{pointer}",
        fix="write a dotted element path, e.g. code.coding.where(system='http://snomed.info/sct').code "
        "(see docs/mapping.md, FHIR sources)",
    )


class CompiledPath:
    """A compiled expression: ``evaluate(resource)`` gives the column value (first item or None)."""

    def __init__(self, expression: str, alternatives: list[list[_Op]], result: _Type) -> None:
        self.expression = expression
        self._alternatives = [[op.collect for op in ops] for ops in alternatives]
        self._lazy = [_depth_first(ops) for ops in alternatives]
        self.result_type = result
        self.dtype: pl.DataType = _dtype(result)
        self.stringifies = self.dtype == pl.String  # text columns take non-text leaves as their text
        self.operations = alternatives
        generated = _generate(self)
        self.generated = generated is not None
        if generated is not None:  # the same value as the generic evaluate(), in one flat Python function
            self.evaluate = generated  # type: ignore[method-assign]  # per instance: the generated form wins

    def evaluate_all(self, resource: Any, urn_ids: Mapping[str, str] | None = None) -> Items:
        """Every item the expression selects (the first alternative that selects anything)."""
        context = urn_ids if urn_ids is not None else {}
        for steps in self._alternatives:
            items: Items = [resource]
            for step in steps:
                items = step(items, context)
            if items:
                return items
        return []

    def evaluate(self, resource: Any, urn_ids: Mapping[str, str] | None = None) -> Any:
        """The column value: the first selected item, converted to the column's dtype (None if nothing).

        Replaced on the instance by a generated function when every step has one (see :func:`_generate`);
        :meth:`evaluate_generic` is this composed form, kept as the reference the generated one must equal.
        """
        return self.evaluate_generic(resource, urn_ids)

    def evaluate_generic(self, resource: Any, urn_ids: Mapping[str, str] | None = None) -> Any:
        """:meth:`evaluate` through the composed per-step closures."""
        context = urn_ids if urn_ids is not None else _NO_URNS
        value = None
        for index, lazy in enumerate(self._lazy):
            if lazy is not None:
                value = lazy(resource, context)
            else:
                items: Items = [resource]
                for step in self._alternatives[index]:
                    items = step(items, context)
                value = items[0] if items else None
            if value is not None:
                break
        if value is None or not self.stringifies or type(value) is str:
            return value
        return _as_text(value)

    def read_paths(self) -> tuple[tuple[str, ...], ...]:
        """The element paths the expression reads, one per alternative, as element names from the root: it
        reads at or under each (``code.coding.where(system='x').code`` -> ``code.coding``: where() and
        resolve_id() read their element's subtree; an index, first(), last(), exists() and count() select
        without reading another element; ``extension('url')`` reads ``extension``). List positions are not
        kept (``name[0]`` reads under ``name``): a conservative answer for the modifierExtension scope.
        An alternative ending in exists() or count() reads no content (``component.exists()``: whether there are
        components, which no modifier extension changes) and gives no path."""
        paths: list[tuple[str, ...]] = []
        for ops in self.operations:
            if ops and ops[-1].presence:
                continue
            names: list[str] = []
            for op in ops:
                kind = op.spec[0] if op.spec is not None else None
                if kind == "element":
                    names.append(op.spec[1])  # type: ignore[index]
                elif kind == "extension":
                    names.append("extension")
                elif kind is not None:  # where(), resolve_*(): the element's whole subtree is read
                    break
            paths.append(tuple(names))
        return tuple(paths)

    def __repr__(self) -> str:
        return f"CompiledPath({self.expression!r}, dtype={self.dtype})"


_NO_URNS: Mapping[str, str] = {}


def _as_text(value: Any) -> str:
    """A non-string value selected for a string column: JSON text for objects, arrays and booleans."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list, bool)) else str(value)


MAX_LOOPS = 12  # nested for-loops in one generated block (CPython allows 20 nested blocks)


class _Emitter:
    """Writes Python source that stores the value of a path in a variable: plain ``dict.get`` lookups
    and a ``for`` loop per element that may repeat, stopping at the first value found. Depth-first, so
    the value equals the first item of the FHIRPath collection, as :func:`_depth_first` finds it with
    closures -- but with no call per step, which is most of the cost of extracting a column.

    Each alternative is a ``while True:`` block. A dead end leaves it with ``break`` (inside a loop:
    ``continue`` with the next item); a found value is stored, then ``break`` leaves every loop."""

    def __init__(self, constants: dict[str, Any], *, checked: bool = True, validated: bool = False) -> None:
        self.lines: list[str] = []
        self.constants = constants  # shared by every block of one generated function
        # unchecked: call .get without testing for a dict first -- only JSON objects have .get, so any
        # other value raises AttributeError and the caller evaluates that resource the checked way
        self.checked = checked and not validated
        # validated: the resource passed the structural check, so a typed element that repeats is a
        # JSON array (of non-null objects, for complex types) and a string-typed primitive is a str
        self.validated = validated
        self._names = 0

    def var(self) -> str:
        self._names += 1
        return f"_v{self._names}"

    def constant(self, value: Any) -> str:
        for name, known in self.constants.items():
            if known is value:
                return name
        name = f"_K{len(self.constants)}"
        self.constants[name] = value
        return name

    def out(self, depth: int, text: str) -> None:
        self.lines.append("    " * depth + text)

    def block(self, path: CompiledPath, target: str, depth: int) -> bool:
        """Lines setting ``target`` to ``path``'s value (None when nothing); False if a step has no
        generated form (count(), last(), an index ...) -- the caller then calls ``path.evaluate``."""
        start = len(self.lines)
        self.out(depth, f"{target} = None")
        for number, ops in enumerate(path.operations):
            while ops and ops[-1].first:
                ops = ops[:-1]
            loops = sum(1 for op in ops if op.name is None and op.spec and op.spec[0] in ("element", "extension"))
            if not ops or loops > MAX_LOOPS or any(op.spec is None and op.name is None for op in ops):
                del self.lines[start:]
                return False
            inner = depth
            if number:
                self.out(depth, f"if {target} is None:")
                inner += 1
            self.out(inner, "while True:")
            self.emit(ops, 0, "r", inner + 1, "break", target, path.stringifies and not self.gives_text(ops[-1]))
            self.out(inner + 1, "break")
        return True

    def gives_text(self, last: _Op) -> bool:
        """Whether the value of a path ending with ``last`` is always a str (no conversion needed)."""
        if last.spec is not None and last.spec[0] == "resolve":
            return True  # _reference_id and _reference_identifier give a str or None
        if not self.validated or last.spec is None or last.spec[0] != "element" or last.spec[2] is None:
            return False
        primitive = last.spec[2].primitive
        return primitive is not None and primitive not in _DTYPES

    def lookup(self, var: str, names: tuple[str, ...], depth: int, fail: str) -> str:
        """``var.name1.name2...`` for single elements; ``fail`` when a step is missing or not an object."""
        for name in names:
            found = self.var()
            if self.checked:
                self.out(depth, f"if type({var}) is not dict: {fail}")
            self.out(depth, f"{found} = {var}.get({name!r})")
            self.out(depth, f"if {found} is None: {fail}")
            var = found
        return var

    def emit(self, ops: list[_Op], index: int, var: str, depth: int, fail: str, target: str, text: bool) -> None:
        if index == len(ops):
            value = var if not text else f"{var} if type({var}) is str else _as_text({var})"
            self.out(depth, f"{target} = {value}")
            self.out(depth, "break")
            return
        op = ops[index]
        if op.name is not None:  # a run of single (0..1) elements
            end = index
            while end < len(ops) and ops[end].name is not None:
                end += 1
            names = _single_names(ops[index:end])
            self.emit(ops, end, self.lookup(var, names, depth, fail), depth, fail, target, text)
            return
        spec = op.spec
        assert spec is not None, "an op without a name has a spec (_generate declines the others)"
        kind = spec[0]
        if kind == "where":
            _kind, keep, simple = spec
            if simple is None:
                self.out(depth, f"if not {self.constant(keep)}({var}): {fail}")
            else:  # where(single.path = literal): compared in place, as `literal in [value]` does
                names, literal = simple
                wanted = self.constant(literal)
                value = var
                for name in names:
                    found = self.var()
                    self.out(depth, f"{found} = {value}.get({name!r}) if type({value}) is dict else None")
                    value = found
                self.out(depth, f"if {value} is None or not ({value} is {wanted} or {value} == {wanted}): {fail}")
            self.emit(ops, index + 1, var, depth, fail, target, text)
        elif kind == "resolve":
            found, resolve = self.var(), self.constant(spec[1])
            if spec[1] is _reference_id:
                # the usual 'Type/id' in one regex match; anything else takes _reference_id
                match = self.var()
                self.out(depth, f"{match} = _plain_reference({var}) if type({var}) is str else None")
                self.out(depth, f"{found} = {match}[1] if {match} is not None else {resolve}({var}, u)")
            else:
                self.out(depth, f"{found} = {resolve}({var}, u)")
            self.out(depth, f"if {found} is None: {fail}")
            self.emit(ops, index + 1, found, depth, fail, target, text)
        else:  # "element" (may repeat) or "extension" (the extension elements with that url)
            values, entry = self.var(), self.var()
            name = spec[1] if kind == "element" else "extension"
            element = spec[2] if kind == "element" else None
            if self.checked:
                self.out(depth, f"if type({var}) is not dict: {fail}")
            self.out(depth, f"{values} = {var}.get({name!r})")
            if self.validated and element is not None and element.is_list:
                self.out(depth, f"if {values} is None: {fail}")
            else:
                self.out(depth, f"if type({values}) is not list: {values} = () if {values} is None else ({values},)")
            self.out(depth, f"for {entry} in {values}:")
            if not (self.validated and element is not None and element.model is not None):
                self.out(depth + 1, f"if {entry} is None: continue")
            if kind == "extension":
                url = self.constant(spec[1])
                self.out(depth + 1, f"if not (type({entry}) is dict and {entry}.get('url') == {url}): continue")
            self.emit(ops, index + 1, entry, depth + 1, "continue", target, text)
            self.out(depth, "else:")  # no item led to a value
            self.out(depth + 1, fail)
            self.out(depth, "break")  # a value was found inside the loop


def _compile_source(source: str, title: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Compile generated source once. Element names come from the parsed expression and were checked
    as identifiers; literals and functions are passed in ``namespace``, never pasted into the text."""
    namespace.update({"_as_text": _as_text, "_NO_URNS": _NO_URNS, "_plain_reference": _PLAIN_REFERENCE})
    exec(compile(source, f"<{title}>", "exec"), namespace)  # noqa: S102
    return namespace


def _generate(path: CompiledPath) -> Callable[..., Any] | None:
    """``path.evaluate`` as one flat generated function, or None when a step has no generated form."""
    emitter = _Emitter({})
    if not emitter.block(path, "value", 1):
        return None
    source = "def evaluate(r, u=None):\n    if u is None: u = _NO_URNS\n" + "\n".join(emitter.lines)
    source += "\n    return value\n"
    function = _compile_source(source, f"fhirpath {path.expression!r}", emitter.constants)["evaluate"]
    function.source = source
    return function


def row_extractor(paths: Sequence[CompiledPath], *, validated: bool = False) -> Callable[..., Callable[..., None]]:
    """See :func:`_row_extractor` (compiled once per combination of paths).

    ``validated=True`` gives a faster form for resources that passed the structural check
    (:mod:`fedomop.harmonize.sources.fhir.structure`); on any other input it may differ from ``evaluate``."""
    return _row_extractor(tuple(paths), validated)


@lru_cache(maxsize=256)
def _row_extractor(paths: tuple[CompiledPath, ...], validated: bool) -> Callable[..., Callable[..., None]]:
    """A factory ``make(append)`` of ``add(resource, source_file, source_row, urn_ids)``, which appends
    the row ``(value of each path..., source_file, source_row)`` with ``append`` -- the whole row in one
    generated function, without a call per step or per column.

    The values are those of ``path.evaluate`` (a resource that is not made of plain JSON objects takes
    that slower, checked way)."""
    emitter = _Emitter({}, checked=False, validated=validated)
    lines = ["def add(r, f, row, u):", "    if u is None: u = _NO_URNS", "    try:", "        pass"]
    for number, path in enumerate(paths):
        emitter.lines = []
        if emitter.block(path, f"_c{number}", 2):
            lines += emitter.lines
        else:
            lines.append(f"        _c{number} = {emitter.constant(path.evaluate)}(r, u)")
    lines += ["    except AttributeError:  # not a JSON object where one was expected: the checked way", "        pass"]
    lines += [f"        _c{number} = {emitter.constant(path.evaluate)}(r, u)" for number, path in enumerate(paths)]
    lines.append(f"    _append(({''.join(f'_c{n}, ' for n in range(len(paths)))}f, row))")
    body = "\n".join("    " + line for line in lines)
    source = f"def make(_append):\n{body}\n    return add\n"
    maker = _compile_source(source, "FHIR row extraction", emitter.constants)["make"]
    maker.source = source
    return maker


def _single_names(ops: Sequence[_Op]) -> tuple[str, ...]:
    """The element names of a run of single-element ops (callers have checked that every op has a name)."""
    return tuple(op.name for op in ops if op.name is not None)


def _depth_first(ops: list[_Op]) -> Lazy | None:
    """Compose the ops' chains (first value, depth-first) -- the same value as the first item of the
    collection, because flattening keeps document order. None if a step needs the whole collection."""
    while ops and ops[-1].first:
        ops = ops[:-1]
    if not ops or any(op.chain is None for op in ops):
        return None
    lazy: Lazy | None = None
    index = len(ops)
    while index > 0:
        index -= 1
        chain = ops[index].chain
        if ops[index].name is None and chain is not None:  # (not None: checked above)
            lazy = chain(lazy)
            continue
        start = index
        while start > 0 and ops[start - 1].name is not None:
            start -= 1
        lazy = _single_run(_single_names(ops[start : index + 1]), lazy)
        index = start
    return lazy


def _single_run(names: tuple[str, ...], rest: Lazy | None) -> Lazy:
    """Consecutive single (0..1) elements: plain dict lookups."""

    def run(item: Any, context: Mapping[str, str]) -> Any:
        for name in names:
            if type(item) is not dict:
                return None
            item = item.get(name)
            if item is None:
                return None
        return item if rest is None else rest(item, context)

    return run


def _element_chain(name: str) -> Callable[[Lazy | None], Lazy]:
    """An element that may repeat: try each item in order."""

    def wrap(rest: Lazy | None) -> Lazy:
        def element(item: Any, context: Mapping[str, str]) -> Any:
            if type(item) is not dict:
                return None
            value = item.get(name)
            if type(value) is not list:
                return value if rest is None or value is None else rest(value, context)
            for entry in value:
                if entry is not None:
                    found = entry if rest is None else rest(entry, context)
                    if found is not None:
                        return found
            return None

        return element

    return wrap


def _filter_chain(keep: Callable[[Any], bool]) -> Callable[[Lazy | None], Lazy]:
    def wrap(rest: Lazy | None) -> Lazy:
        def where(item: Any, context: Mapping[str, str]) -> Any:
            if not keep(item):
                return None
            return item if rest is None else rest(item, context)

        return where

    return wrap


def _resolve_chain(resolve: Callable[[Any, Mapping[str, str]], str | None]) -> Callable[[Lazy | None], Lazy]:
    def wrap(rest: Lazy | None) -> Lazy:
        def resolved(item: Any, context: Mapping[str, str]) -> Any:
            value = resolve(item, context)
            return value if rest is None or value is None else rest(value, context)

        return resolved

    return wrap


def _dtype(result: _Type) -> pl.DataType:
    if result.primitive is not None:
        return _DTYPES.get(result.primitive, pl.String())
    return pl.String()


class _Parser:
    def __init__(self, expression: str, root: _Type) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.index = 0
        self.root = root

    # -- token helpers -----------------------------------------------------------------------------
    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def take(self, kind: str, text: str | None = None) -> _Token:
        token = self.token
        if token.kind != kind or (text is not None and token.text != text):
            wanted = repr(text) if text else kind
            found = repr(token.text) if token.kind != "end" else "the end of the expression"
            raise _syntax(self.expression, token.pos, f"expected {wanted}, found {found}")
        self.index += 1
        return token

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.token.kind == kind and (text is None or self.token.text == text)

    # -- grammar ----------------------------------------------------------------------------------
    def parse(self) -> CompiledPath:
        alternatives: list[list[_Op]] = []
        types: list[_Type] = []
        while True:
            steps, result = self.path(self.root)
            alternatives.append(steps)
            types.append(result)
            if not self.at("op", "|"):
                break
            self.take("op", "|")
        self.take("end")
        result = types[0] if all(_dtype(t) == _dtype(types[0]) for t in types) else _Type(primitive="string")
        return CompiledPath(self.expression, alternatives, result)

    def path(self, start: _Type) -> tuple[list[_Op], _Type]:
        steps: list[_Op] = []
        current = start
        while True:
            step, current = self.step(current)
            steps.append(step)
            while self.at("op", "["):
                self.take("op", "[")
                number = self.take("number")
                if "." in number.text or number.text.startswith("-"):
                    raise _syntax(self.expression, number.pos, "an index must be a whole number >= 0")
                self.take("op", "]")
                steps.append(_Op(_index_step(int(number.text))))
            if not self.at("op", "."):
                return steps, current
            self.take("op", ".")

    def step(self, current: _Type) -> tuple[_Op, _Type]:
        name = self.take("name")
        if self.at("op", "("):
            return self.function(name, current)
        element = self.child(name, current)
        spec = ("element", name.text, element)
        if element is None:
            return _Op(_element_step(name.text), _element_chain(name.text), spec=spec), ANY
        single = name.text if not element.is_list else None
        return _Op(_element_step(name.text), _element_chain(name.text), single, spec=spec), _element_type(element)

    def child(self, name: _Token, current: _Type) -> Element | None:
        """The element ``name`` of the current type (None when the type is not known statically)."""
        if not current.known:
            return None
        if current.model is None:
            raise _syntax(
                self.expression,
                name.pos,
                f"'{current.primitive}' is a primitive value; it has no element '{name.text}'",
            )
        table = element_table(current.model)
        element = table.get(name.text)
        if element is None:
            raise _syntax(self.expression, name.pos, _unknown_element(name.text, current.model, table))
        return element

    def function(self, name: _Token, current: _Type) -> tuple[_Op, _Type]:
        self.take("op", "(")
        if name.text == "where":
            condition, simple = self.condition(current)
            self.take("op", ")")
            return _Op(_where_step(condition), _filter_chain(condition), spec=("where", condition, simple)), current
        if name.text == "extension":
            url = _string_literal(self.take("string").text)
            self.take("op", ")")
            extension = ANY
            if current.model is not None and "extension" in element_table(current.model):
                extension = _element_type(element_table(current.model)["extension"])
            extension_chain = _element_chain("extension")
            matches = _filter_chain(lambda item: type(item) is dict and item.get("url") == url)
            op = _Op(_extension_step(url), lambda rest: extension_chain(matches(rest)), spec=("extension", url))
            return op, extension
        self.take("op", ")")
        functions: dict[str, tuple[_Op, _Type]] = {
            "first": (_Op(lambda items, _ctx: items[:1], first=True), current),
            "last": (_Op(lambda items, _ctx: items[-1:]), current),
            "exists": (_Op(lambda items, _ctx: [bool(items)], presence=True), _Type(primitive="boolean")),
            "count": (_Op(lambda items, _ctx: [len(items)], presence=True), _Type(primitive="integer")),
            "resolve_id": (
                _Op(_resolve_step(_reference_id), _resolve_chain(_reference_id), spec=("resolve", _reference_id)),
                _Type(primitive="id"),
            ),
            "resolve_identifier": (
                _Op(
                    _resolve_step(_reference_identifier),
                    _resolve_chain(_reference_identifier),
                    spec=("resolve", _reference_identifier),
                ),
                _Type(primitive="string"),
            ),
        }
        if name.text not in functions:
            close = difflib.get_close_matches(name.text, FUNCTIONS, n=1)
            hint = f" (did you mean {close[0]}()?)" if close else ""
            raise _syntax(
                self.expression,
                name.pos,
                f"unknown function {name.text}(){hint}; available: {', '.join(f + '()' for f in FUNCTIONS)}",
            )
        is_reference = current.model is not None and type_name(current.model) == "Reference"
        if name.text.startswith("resolve_") and current.known and not is_reference and current.primitive != "string":
            raise _syntax(
                self.expression, name.pos, f"{name.text}() applies to a Reference, not to {current.describe()}"
            )
        return functions[name.text]

    def condition(self, current: _Type) -> tuple[Callable[[Any], bool], tuple[tuple[str, ...], Any] | None]:
        """The where() test, and (element names, literal) when it is one ``single.path = literal``."""
        tests: list[tuple[Callable[[Any], Items], bool, Any]] = []
        simple: tuple[tuple[str, ...], Any] | None = None
        while True:
            ops, result = self.path(current)
            if result.primitive == "boolean" and not (self.at("op", "=") or self.at("op", "!=")):
                tests.append((_values_of(ops), True, True))  # where(coding[1].exists()): the test is the path
            else:
                operator = self.take("op").text
                if operator not in ("=", "!="):
                    raise _syntax(self.expression, self.tokens[self.index - 1].pos, "expected = or != in where()")
                tests.append((_values_of(ops), operator == "=", self.literal()))
            if all(op.name is not None for op in ops):
                simple = (_single_names(ops), tests[-1][2])
            if not self.at("name", "and"):
                break
            self.take("name", "and")
        if len(tests) == 1 and tests[0][1]:
            values_of, _equal, wanted = tests[0]
            return (lambda item: wanted in values_of(item)), simple

        def matches(item: Any) -> bool:
            return all((literal in values_of(item)) == equal for values_of, equal, literal in tests)

        return matches, None

    def literal(self) -> Any:
        token = self.token
        if token.kind == "string":
            self.index += 1
            return _string_literal(token.text)
        if token.kind == "number":
            self.index += 1
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "name" and token.text in ("true", "false"):
            self.index += 1
            return token.text == "true"
        raise _syntax(self.expression, token.pos, "expected a literal ('text', a number, true or false)")


def _values_of(ops: list[_Op]) -> Callable[[Any], Items]:
    """All values of a sub-path of where(); single elements are plain lookups."""
    if all(op.name is not None for op in ops):
        lookup = _single_run(_single_names(ops), None)

        def single(item: Any) -> Items:
            value = lookup(item, _NO_URNS)
            return [] if value is None else [value]

        return single
    steps = [op.collect for op in ops]

    def collect(item: Any) -> Items:
        values: Items = [item]
        for step in steps:
            values = step(values, _NO_URNS)
        return values

    return collect


def _string_literal(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _element_type(element: Element) -> _Type:
    if element.any_resource:
        return ANY
    return _Type(model=element.model, primitive=element.primitive)


def _unknown_element(name: str, model: Model, table: Mapping[str, Element]) -> str:
    choices = sorted(e.name for e in table.values() if e.choice_group == name)
    owner = type_name(model)
    if choices:
        return f"'{name}' is a choice element of {owner}; name the type: {' | '.join(choices)}"
    valid = [n for n in table if not n.startswith("_")]
    close = difflib.get_close_matches(name, valid, n=3)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    return f"'{name}' is not an element of {owner}{hint}"


def _element_step(name: str) -> Step:
    def step(items: Items, _ctx: Mapping[str, str]) -> Items:
        out: Items = []
        for item in items:
            if type(item) is dict:
                value = item.get(name)
                if value is None:
                    continue
                if type(value) is list:
                    out.extend(v for v in value if v is not None)
                else:
                    out.append(value)
        return out

    return step


def _index_step(index: int) -> Step:
    return lambda items, _ctx: items[index : index + 1]


def _where_step(matches: Callable[[Any], bool]) -> Step:
    return lambda items, _ctx: [item for item in items if matches(item)]


def _extension_step(url: str) -> Step:
    def step(items: Items, _ctx: Mapping[str, str]) -> Items:
        out: Items = []
        for item in items:
            if type(item) is dict:
                out.extend(e for e in item.get("extension", ()) if type(e) is dict and e.get("url") == url)
        return out

    return step


def _resolve_step(resolve: Callable[[Any, Mapping[str, str]], str | None]) -> Step:
    def step(items: Items, context: Mapping[str, str]) -> Items:
        out: Items = []
        for item in items:
            resolved = resolve(item, context)
            if resolved is not None:
                out.append(resolved)
        return out

    return step


# 'Type/id' (one slash, no '?', '#' or 'urn:'): _reference_id gives the part after the slash
_PLAIN_REFERENCE = re.compile(r"[A-Za-z][A-Za-z0-9]*/([A-Za-z0-9\-.]+)").fullmatch


def _reference_id(reference: Any, urn_ids: Mapping[str, str]) -> str | None:
    """The logical id a reference points to: 'Patient/1', 'http://x/fhir/Patient/1/_history/2', and in Bundles
    'urn:uuid:...' through the entries' fullUrl. Conditional references give None.

    A '#c1' reference points inside the referring resource (a contained resource), never to a resource of the
    export: it stays '#c1', which no logical id can equal (ids are [A-Za-z0-9-.]), so an Observation whose
    subject is a contained Patient does not join an export Patient that happens to share the id."""
    if type(reference) is dict:
        reference = reference.get("reference")
    if type(reference) is not str:
        return None
    if reference.startswith("urn:"):
        return urn_ids.get(reference)
    if reference.startswith("#"):
        return reference if len(reference) > 1 else None
    if "?" in reference:
        return None
    if "/_history/" in reference:
        reference = reference.partition("/_history/")[0]
    head, slash, tail = reference.rstrip("/").rpartition("/")
    return tail if slash and head and tail else urn_ids.get(reference)


def _reference_identifier(reference: Any, _urn_ids: Mapping[str, str]) -> str | None:
    """The identifier value of a conditional reference 'Type?identifier=system|value' (Synthea style),
    or of a logical reference {"identifier": {"system": ..., "value": ...}} without a reference string."""
    if type(reference) is dict:
        text = reference.get("reference")
        if text is None:
            identifier = reference.get("identifier")
            value = identifier.get("value") if type(identifier) is dict else None
            return value if type(value) is str else None
        reference = text
    if type(reference) is not str or "?identifier=" not in reference:
        return None
    token = reference.split("?identifier=", 1)[1].split("&", 1)[0]
    return token.rsplit("|", 1)[-1] or None


@lru_cache(maxsize=4096)
def compile_path(expression: str, resource_type: str | None = None) -> CompiledPath:
    """Compile ``expression`` once; with ``resource_type`` element names are checked against R4B.

    Raises MappingError naming the expression and the position for a syntax error or an unknown element.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise MappingError(
            f"empty FHIR path expression {expression!r}", fix="write an element path such as 'birthDate'"
        )
    try:
        root = _Type(model=resource_model(resource_type)) if resource_type else ANY
    except SourceError as error:
        raise MappingError(f"FHIR path expression {expression!r}: {error.message}", fix=error.fix) from None
    return _Parser(expression, root).parse()
