"""YAML as a person wrote it: a key given twice is refused (plain yaml.safe_load keeps the
last one silently), and a number YAML read as a string is explained with the fix."""
from __future__ import annotations

import math
import re

import yaml


def safe_load_unique(stream):
    """(document, duplicates): yaml.safe_load's document, and (line, message) for every key
    given twice in one mapping."""
    loader = UniqueKeyLoader(stream)
    try:
        return loader.get_single_data(), list(loader.duplicates)
    finally:
        loader.dispose()


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (plain yaml.safe_load
    keeps the last one silently). Merge keys (``<<: *anchor``) are not duplicates: the keys
    written beside them override the merged ones, as YAML intends.

    ``duplicates``: (line, message) for every key given twice."""

    duplicates = ()  # an empty file has no document, so construct_document never runs

    def construct_document(self, node):
        self.duplicates = []
        self._find_duplicates(node, "", set())
        return super().construct_document(node)

    def _find_duplicates(self, node, path, seen_nodes):
        if id(node) in seen_nodes:  # an alias: its anchor was checked where it was defined
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self._find_duplicates(value_node, path, seen_nodes)
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                where = f"{path}.{key}" if path else str(key)
                if key is not None:
                    if key in first:
                        what = "section" if not path else "key"
                        self.duplicates.append(
                            (key_node.start_mark.line + 1,
                             f"{where}: duplicate {what} (first at line {first[key]}); "
                             f"allowed: each {what} once"))
                    else:
                        first[key] = key_node.start_mark.line + 1
                self._find_duplicates(value_node, where, seen_nodes)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._find_duplicates(item, f"{path}[{i}]", seen_nodes)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def number_hint(value, kind: str | None) -> str:
    """Why a number came out of YAML as a string, and how to write it, for a ``value`` meant
    as ``kind`` ("int" or "float"; any other kind: no hint). YAML 1.1 (PyYAML) reads ``1e-3``
    as a string (its floats need a dot, and a signed exponent)."""
    if not isinstance(value, str) or kind not in ("int", "float"):
        return ""
    text = value.strip()
    if not _FLOAT_TEXT.fullmatch(text) or not math.isfinite(float(text)):
        return ""
    if not isinstance(yaml.safe_load(text), str):  # YAML reads it unquoted as a number
        return f" (a quoted number: write {text} without quotes)"
    number = float(text)
    if kind == "int":
        if number != int(number):
            return ""
        fix = str(int(number))
    else:
        mantissa, _, exponent = text.lower().partition("e")
        if "." not in mantissa:
            mantissa += ".0"
        if exponent and exponent[0] not in "+-":
            exponent = "+" + exponent
        fix = mantissa + ("e" + exponent if exponent else "")
        if mantissa.startswith("."):
            fix = "0" + fix
        if yaml.safe_load(fix) != number:
            fix = repr(number)
    return f" (YAML reads {text} as a string: write {fix})"
