"""The command's side of `charter diff`: reading each charter compared (a file, or `git:REF`
for the committed version of the same file, read with `git show`), and printing the changes
as text, JSON or GitHub Actions workflow commands. Reading a charter opens no store, so an
old one loads even where its stores no longer exist."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from charter import model
from charter.diff import BREAKING, INFORMS, SAFE, SEVERITIES, Change
from charter.errors import CharterError, Problem

GIT = "git:"
FORMATS = ("text", "json", "github")


@dataclass(frozen=True)
class Side:
    """One of the two charters compared. `label`: how it is named to the user (a path, or
    git:REF:PATH); `file`: the path its lines are reported against (for git:, the same file
    in the work tree); `charter`: what it says."""

    label: str
    file: str
    charter: model.Charter


def sides(old: str, new: str, default: Path) -> tuple[Side, Side]:
    """The two charters of `charter diff OLD NEW`. A `git:REF` side is the committed version
    of the other side's file (of `default` when both are git:); `git:REF:PATH` names it."""
    new_file = default if new.startswith(GIT) else Path(new)
    old_file = new_file if old.startswith(GIT) else Path(old)
    return read(old, old_file), read(new, new_file)


def read(spec: str, file: Path) -> Side:
    """A file, or with `git:REF[:PATH]` the version of `file` (or PATH) committed at REF."""
    if not spec.startswith(GIT):
        return Side(str(file), str(file), model.load(file))
    ref, _, named = spec[len(GIT) :].partition(":")
    if named:
        file = Path(named)
    if not ref:
        raise _git_problem(spec, "names no revision", "write it like git:main or git:HEAD~1")
    text, label = committed(ref, file)
    try:
        return Side(label, str(file), model.loads(text, file))
    except CharterError as exc:  # say which version is bad: the one at REF
        problems = [dataclasses.replace(p, file=label) for p in exc.problems]
        raise CharterError(problems) from None


def committed(ref: str, file: Path) -> tuple[str, str]:
    """The text of `file` as committed at `ref` (its path taken relative to the root of the
    repository it is in), and its label git:REF:PATH. CharterError when there is no git, no
    repository, no such revision or no such file in it."""
    label = f"{GIT}{ref}:{file}"
    folder = file.resolve().parent
    if not folder.is_dir():
        raise _git_problem(label, f"the folder {folder} does not exist")
    top = _git(folder, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        raise _git_problem(
            label, f"{folder} is not in a git repository", "compare two files instead"
        )
    root = Path(top.stdout.strip()).resolve()
    try:
        relative = file.resolve().relative_to(root).as_posix()
    except ValueError:  # a link to a file outside the repository
        raise _git_problem(label, f"{file.resolve()} is not inside {root}") from None
    label = f"{GIT}{ref}:{relative}"
    known = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if known.returncode != 0:
        raise _git_problem(
            label, f"git knows no revision '{ref}'", "a branch, tag or commit: git log --oneline"
        )
    shown = _git(root, "show", f"{ref}:{relative}")
    if shown.returncode != 0:
        raise _git_problem(
            label,
            f"{relative} is not in revision '{ref}'",
            f"see what it holds: git ls-tree --name-only {ref}",
        )
    return shown.stdout, label


def _git(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(folder), *args], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise _git_problem("git", f"cannot run git: {exc.strerror}", "install git") from None


def _git_problem(where: str, message: str, hint: str = "") -> CharterError:
    return CharterError([Problem(where, 0, f"cannot read the charter: {message}", hint)])


# printing


def ordered(changes: list[Change]) -> list[Change]:
    """Breaking changes first, then those that tell someone, then the safe ones."""
    return sorted(changes, key=lambda c: SEVERITIES.index(c.severity))


def where(change: Change, old: Side, new: Side) -> tuple[str, int]:
    """The file and line a change is about: in the new file, or the old one when gone."""
    return (old.file if change.in_old else new.file), change.line


def summary(changes: list[Change]) -> str:
    counts = {s: sum(c.severity == s for c in changes) for s in SEVERITIES}
    if not changes:
        return "no changes"
    total = f"{len(changes)} change{'s' if len(changes) != 1 else ''}"
    return (
        f"{total}: {counts[BREAKING]} breaking, {counts[INFORMS]} to tell someone, "
        f"{counts[SAFE]} safe"
    )


def text(changes: list[Change], old: Side, new: Side) -> str:
    """For a person: a line per change, then whom it breaks or tells (rich markup)."""
    lines = [f"[bold]charter diff[/] {escape(old.label)} → {escape(new.label)}: "]
    lines[0] += escape(summary(changes))
    marks = {BREAKING: "[bold red]BREAKING[/]", INFORMS: "[yellow]tell    [/]"}
    for change in ordered(changes):
        mark = marks.get(change.severity, "[green]safe    [/]")
        file, line = where(change, old, new)
        at = f" [dim]({escape(old.label if change.in_old else file)}:{line})[/]" if line else ""
        lines.append(f"{mark} {escape(change.sentence)}{at}")
        lines += [f"         breaks {escape(str(p))}" for p in change.breaks]
        lines += [f"         tells {escape(str(p))}" for p in change.informs]
    count = sum(c.breaking for c in changes)
    if count:
        lines.append(
            f"[bold red]{count} breaking change{'s' if count != 1 else ''}[/]: "
            f"agree {'it' if count == 1 else 'them'} with the teams named, or keep what "
            "they rely on"
        )
    return "\n".join(lines)


def as_json(changes: list[Change], old: Side, new: Side) -> str:
    """For a program: the sides, the counts and every change with its file."""
    docs = []
    for change in ordered(changes):
        doc = change.as_json()
        doc["file"] = where(change, old, new)[0]
        docs.append(doc)
    return json.dumps(
        {
            "old": old.label,
            "new": new.label,
            "breaking": sum(c.breaking for c in changes),
            "changes": docs,
        },
        indent=2,
    )


def github(changes: list[Change], old: Side, new: Side) -> str:
    """GitHub Actions workflow commands: an error per breaking change, a warning per change
    that tells someone, a notice per safe one, each on its line of the charter."""
    level = {BREAKING: "error", INFORMS: "warning"}
    lines = []
    for change in ordered(changes):
        file, line = where(change, old, new)
        props = f"file={_property(file)}"
        if line:
            props += f",line={line}"
        props += f",title={_property('charter diff: ' + change.kind)}"
        message = "; ".join(
            [
                change.sentence,
                *(f"breaks {p}" for p in change.breaks),
                *(f"tells {p}" for p in change.informs),
            ]
        )
        lines.append(f"::{level.get(change.severity, 'notice')} {props}::{_data(message)}")
    lines.append(f"charter diff {old.label} → {new.label}: {summary(changes)}")
    return "\n".join(lines)


def _data(text: str) -> str:
    """A workflow command's message, escaped as the runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
