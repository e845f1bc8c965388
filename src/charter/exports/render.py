"""Export documents as text: YAML or JSON, the same document either way and the same text
for the same charter (keys in the order the exporter built them, never a set's order)."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from charter.model import Charter

FORMATS = ("yaml", "json")


def render(documents: list[dict[str, Any]], fmt: str) -> str:
    """One document as itself; several as a YAML stream (--- between them) or a JSON list."""
    if fmt == "json":
        doc: Any = documents[0] if len(documents) == 1 else documents
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    if fmt != "yaml":
        raise ValueError(f"unknown format '{fmt}' (one of {', '.join(FORMATS)})")
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    yaml.sort_base_mapping_type_on_output = False  # type: ignore[assignment]  # keep order
    yaml.width = 4096  # a long description stays on one line
    yaml.allow_unicode = True
    out = io.StringIO()
    if len(documents) == 1:
        yaml.dump(documents[0], out)
    else:
        yaml.explicit_start = True
        yaml.dump_all(documents, out)
    return out.getvalue()


def fingerprint(document: dict[str, Any]) -> str:
    """A contract's version: 12 hex digits of its content, so it changes exactly when the
    contract does (the charter numbers nothing itself)."""
    text = json.dumps(document, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def beside(charter: Charter, path: str) -> str:
    """A file in the charter's folder as a path relative to it, so an export is the same
    text on every machine that checks the charter out; any other path as it is."""
    base, target = charter.path.resolve().parent, Path(path)
    return str(target.relative_to(base)) if target.is_relative_to(base) else path


def seconds(value: float) -> int | float:
    """A window in seconds as a person writes it: 5, not 5.0; 0.5 as it is."""
    return int(value) if value == int(value) else value
