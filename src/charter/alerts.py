"""Prometheus alerting rules from the charter (`charter alerts`): for every copy, one rule
that fires when it stays staler than its window for a while, one when it has parked
events, one when its last reconciliation found drift, and (for a copy that declares
`reconcile:`) one when it has not been checked for three of its intervals; each saying
what breaks (the copy's `breaks`) and whom to call (the owner's team).
They read the metrics `charter run --metrics` serves (charter.metrics)."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML

from charter.model import Charter, Copy

MIN_FOR_S = 60.0  # a staleness rule waits its window, and at least this long, before firing


def rules(charter: Charter) -> dict[str, Any]:
    """The rules file as a document: one group, two rules per copy."""
    found: list[dict[str, Any]] = []
    for copy in charter.copies.values():
        found += [_stale(charter, copy), _parked(charter, copy), _drift(charter, copy)]
        if copy.reconcile_s > 0:
            found.append(_unchecked(charter, copy))
    return {"groups": [{"name": f"charter_{charter.name}", "rules": found}]}


def text(charter: Charter) -> str:
    """The rules file, as YAML."""
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096  # a long expression or annotation stays on one line
    out = io.StringIO()
    out.write(
        f"# Prometheus alerting rules, written by `charter alerts` from {charter.path.name}\n"
    )
    yaml.dump(rules(charter), out)
    return out.getvalue()


def _labels(charter: Charter, copy: Copy, severity: str) -> dict[str, str]:
    owner = charter.entities[copy.of].owner
    return {
        "severity": severity,
        "copy": copy.name,
        "of": copy.of,
        "owner": owner,
        "in": copy.context,
        "team": charter.contexts[owner].team,
    }


def _annotations(charter: Charter, copy: Copy, summary: str) -> dict[str, str]:
    owner = charter.entities[copy.of].owner
    team, keeper = charter.contexts[owner].team, charter.contexts[copy.context].team
    breaks = _literal(copy.breaks) or "(the charter does not say: add `breaks:` to the copy)"
    return {
        "summary": summary,
        "breaks": breaks,
        "team": team,
        "description": (
            f"What breaks: {breaks}. {copy.of} is owned by '{owner}' (team {team}); the copy "
            f"'{copy.name}' is kept in '{copy.context}' (team {keeper}). See `charter status` "
            f"and `charter parked {copy.name}`."
        ),
    }


def _stale(charter: Charter, copy: Copy) -> dict[str, Any]:
    window = _duration(copy.window_s)
    return {
        "alert": "CharterCopyStale",
        "expr": f'charter_copy_staleness_seconds{{copy="{copy.name}"}} > {copy.window_s:g}',
        "for": _duration(max(copy.window_s, MIN_FOR_S)),
        "labels": _labels(charter, copy, "critical"),
        "annotations": _annotations(
            charter,
            copy,
            f"copy {copy.name} of {copy.of} is {{{{ $value | humanizeDuration }}}} behind its "
            f"owner, beyond its window of {window}",
        ),
    }


def _parked(charter: Charter, copy: Copy) -> dict[str, Any]:
    return {
        "alert": "CharterCopyParked",
        "expr": f'charter_copy_parked_events{{copy="{copy.name}"}} > 0',
        "labels": _labels(charter, copy, "warning"),
        "annotations": _annotations(
            charter,
            copy,
            f"copy {copy.name} of {copy.of} has {{{{ $value }}}} parked events: those records "
            "are wrong in it however fresh it is",
        ),
    }


def _drift(charter: Charter, copy: Copy) -> dict[str, Any]:
    return {
        "alert": "CharterCopyDrift",
        "expr": f'sum(charter_drift{{copy="{copy.name}"}}) > 0',
        "labels": _labels(charter, copy, "critical"),
        "annotations": _annotations(
            charter,
            copy,
            f"copy {copy.name} of {copy.of} differed from its owner in {{{{ $value }}}} ids "
            f"at its last reconciliation: see `charter reconcile {copy.name}`",
        ),
    }


UNCHECKED_INTERVALS = 3  # a scheduled copy not checked for this many intervals is an alert


def _unchecked(charter: Charter, copy: Copy) -> dict[str, Any]:
    late = UNCHECKED_INTERVALS * copy.reconcile_s
    return {
        "alert": "CharterCopyUnchecked",
        "expr": (
            f'time() - charter_drift_last_check_timestamp_seconds{{copy="{copy.name}"}} > {late:g}'
        ),
        "labels": _labels(charter, copy, "warning"),
        "annotations": _annotations(
            charter,
            copy,
            f"copy {copy.name} of {copy.of} was last checked against its owner "
            f"{{{{ $value | humanizeDuration }}}} ago; it should be every "
            f"{_duration(copy.reconcile_s)} (is `charter run` running for "
            f"'{copy.context}'?)",
        ),
    }


def _duration(seconds: float) -> str:
    """A Prometheus duration: 1m, 1h30m, 90ms."""
    millis = round(seconds * 1000)
    if millis % 1000:
        return f"{millis}ms"
    rest, parts = millis // 1000, []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def _literal(value: str) -> str:
    """Text from the charter as a template shows it as written (no `{{` starts an action)."""
    return value.replace("{{", '{{ "{{" }}')
