"""Prometheus alerting rules from the charter (`charter alerts`): for every copy, one rule
that fires when it stays staler than its window for a while, one when it has parked
events, one when nothing applies its events (its projector failing or stopped, or no
process serving it: a copy with no writes coming never goes stale, and would not say so),
one when its last reconciliation found drift, and (for a copy that declares `reconcile:`)
one when it has not been checked for three of its intervals; each saying what breaks (the
copy's `breaks`) and whom to call (the owner's team; for a copy nothing applies, the team
of the context keeping it, which runs its projector). They read the metrics `charter run
--metrics` serves (charter.metrics)."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML

from charter.model import Charter, Copy

MIN_FOR_S = 60.0  # a staleness rule waits its window, and at least this long, before firing
DOWN_FOR_S = 60.0  # a projector failing this long is down, not a server failing over


def rules(charter: Charter) -> dict[str, Any]:
    """The rules file as a document: one group, the rules of every copy."""
    found: list[dict[str, Any]] = []
    for copy in charter.copies.values():
        found += [_stale(charter, copy), _parked(charter, copy), _down(charter, copy)]
        found.append(_drift(charter, copy))
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


def _labels(charter: Charter, copy: Copy, severity: str, team: str | None = None) -> dict[str, str]:
    """`team`: whom it pages (default: the owner's)."""
    owner = charter.entities[copy.of].owner
    return {
        "severity": severity,
        "copy": copy.name,
        "of": copy.of,
        "owner": owner,
        "in": copy.context,
        "team": charter.contexts[owner].team if team is None else team,
    }


def _annotations(
    charter: Charter, copy: Copy, summary: str, team: str | None = None
) -> dict[str, str]:
    owner = charter.entities[copy.of].owner
    owners, keeper = charter.contexts[owner].team, charter.contexts[copy.context].team
    breaks = _literal(copy.breaks) or "(the charter does not say: add `breaks:` to the copy)"
    return {
        "summary": summary,
        "breaks": breaks,
        "team": owners if team is None else team,
        "description": (
            f"What breaks: {breaks}. {copy.of} is owned by '{owner}' (team {owners}); the copy "
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


def _down(charter: Charter, copy: Copy) -> dict[str, Any]:
    """Some process's projector of the copy is failing or stopped (with lanes, one lane's
    ids wait), or no process serves it at all (absent: each copy needs a runner serving
    `--metrics`)."""
    metric = f'charter_copy_projector_up{{copy="{copy.name}"}}'
    keeper = charter.contexts[copy.context].team  # who runs its projector: whom it pages
    return {
        "alert": "CharterCopyDown",
        "expr": f"min by (copy) ({metric}) == 0 or absent({metric})",
        "for": _duration(DOWN_FOR_S),
        "labels": _labels(charter, copy, "critical", keeper),
        "annotations": _annotations(
            charter,
            copy,
            f"nothing applies the events of copy {copy.name} of {copy.of} in "
            f"{copy.context}: its projector is failing, stopped, or run by no process "
            f"serving metrics (see `charter run`'s warnings); it will breach its window of "
            f"{_duration(copy.window_s)} at its owner's next change",
            keeper,
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
