"""Point a mapping's ``vocabulary:`` block at the files ``codes apply`` wrote, editing the YAML text in place.

A steward's mapping carries comments and TODOs that a load-and-dump would lose, so the file is edited where the
YAML parser says the block is (node positions from ``yaml.compose``): a missing key is inserted as a line at
the block's indentation, an ``extensions`` list gains an item. A flow-style block (``{folder: ..}``) is
rewritten as one flow mapping (comments inside its braces, if any, are lost).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fedomop.harmonize.ground.errors import MappingError

Edit = tuple[int, int, str]  # (start, end, replacement) as character offsets in the file


def _child(node: yaml.Node, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key:
                return k, v
    return None


def _line_after(text: str, node: yaml.Node) -> int:
    """Offset of the line after ``node`` ends (a block node ends at column 0 of the line after it)."""
    end = node.end_mark
    if end.column == 0:
        return int(end.index)
    newline = text.find("\n", end.index)
    return len(text) if newline < 0 else newline + 1


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def _block_edits(text: str, block: yaml.MappingNode, stcm: str | None, extension: str | None) -> list[Edit]:
    indent = " " * block.value[0][0].start_mark.column
    at = _line_after(text, block.value[-1][1])
    edits: list[Edit] = []
    if stcm is not None and _child(block, "source_to_concept_map") is None:
        edits.append((at, at, f"{indent}source_to_concept_map: {json.dumps(stcm)}\n"))
    if extension is None:
        return edits
    found = _child(block, "extensions")
    if found is None:
        edits.append((at, at, f"{indent}extensions: [{json.dumps(extension)}]\n"))
        return edits
    items = found[1]
    assert isinstance(items, yaml.SequenceNode)
    if items.flow_style or not items.value:
        listed = [i.value for i in items.value]
        edits.append((items.start_mark.index, items.end_mark.index, _flow([*listed, extension])))
    else:
        item_indent = " " * (items.value[0].start_mark.column - 2)
        line = _line_after(text, items.value[-1])
        edits.append((line, line, f"{item_indent}- {json.dumps(extension)}\n"))
    return edits


def wire_vocabulary(path: Path, *, source_to_concept_map: str | None = None, extension: str | None = None) -> list[str]:
    """Make the mapping read ``source_to_concept_map`` (when it names none) and ``extension`` (when it does not
    list it yet). Returns what changed, one line each; an unchanged mapping returns []."""
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    vocabulary = data.get("vocabulary") if isinstance(data, dict) else None
    root = yaml.compose(text)
    found = _child(root, "vocabulary") if root is not None else None
    if not isinstance(vocabulary, dict) or found is None or not isinstance(found[1], yaml.MappingNode):
        raise MappingError("the mapping has no vocabulary: block of its own", where=f"{path}: vocabulary",
                           fix="add vocabulary: {folder: ...} to the site mapping")  # fmt: skip
    stcm = source_to_concept_map if not vocabulary.get("source_to_concept_map") else None
    ext = extension if extension is not None and extension not in vocabulary.get("extensions", []) else None
    changes = ([f"vocabulary.source_to_concept_map: {stcm}"] if stcm else []) + (
        [f"vocabulary.extensions += {ext}"] if ext else []
    )
    if not changes:
        return []
    block = found[1]
    if block.flow_style:
        updated = dict(vocabulary)
        if stcm:
            updated["source_to_concept_map"] = stcm
        if ext:
            updated["extensions"] = [*vocabulary.get("extensions", []), ext]
        edits = [(block.start_mark.index, block.end_mark.index, _flow(updated))]
    else:
        edits = _block_edits(text, block, stcm, ext)
    for start, end, replacement in sorted(edits, reverse=True):
        text = text[:start] + replacement + text[end:]
    path.write_text(text, encoding="utf-8")
    return changes
