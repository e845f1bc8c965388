"""The `charter` command: check the charter, run the pipeline, see the copies.

Each command imports what it needs inside its function: `charter --help` or `charter diff`
must not pay for the runner, the stores and the buses (tests/test_cli_imports.py)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from charter.errors import CharterError, Error

if TYPE_CHECKING:
    from rich.console import Console

    from charter import diffing, model
    from charter.errors import MissingExtraError
    from charter.lanes import Lane
    from charter.records import Parked
    from charter.runner import Runner
    from charter.system import System

F = TypeVar("F", bound=Callable[..., Any])

# What the options offer, said here so that declaring them imports nothing
# (tests/test_cli_imports.py holds them equal to their modules' own).
DIFF_FORMATS = ("text", "json", "github")  # charter.diffing.FORMATS
EXPORT_KINDS = ("asyncapi", "jsonschema", "odcs")  # charter.exports.KINDS
EXPORT_FORMATS = ("yaml", "json")  # charter.exports.FORMATS
MAX_DIFFS = 10_000  # charter.reconcile.report.MAX_DIFFS


def escape(text: str) -> str:
    """rich's markup escaped (rich.markup imported when something is printed)."""
    from rich.markup import escape as escaped

    return escaped(text)


def _opened(path: Path, note: bool = True) -> System:
    """The system of a charter file, for a command that reads or runs it. A charter in
    memory:// lives in one process: a command sees it empty, and says so (on stderr, not
    with --json)."""
    from charter.stores.memory import in_this_process
    from charter.system import System

    system = System.load(path)
    stores = [c.store for c in system.charter.contexts.values()]
    if note and any(url.startswith("memory://") and not in_this_process(url) for url in stores):
        _console(stderr=True).print(
            "[yellow]note[/] this charter keeps its data in memory://, which lives and dies "
            "with one process: this command sees an empty system (use memory:// from "
            "Python, in tests; sqlite:/// or postgresql:// for a system to run)",
            highlight=False,
        )
    return system


def _console(stderr: bool = False) -> Console:
    """Piped or captured output is not squeezed into 80 columns: tables stay readable in logs."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 140
    return Console(stderr=stderr, width=width, soft_wrap=stderr)


EXIT_CHARTER = 1
EXIT_BREACH = 3
EXIT_DRIFT = 5
EXIT_BREAKING = 4  # charter diff, charter check --against: the change breaks a copy


def charter_file(func: F) -> F:
    return click.option(
        "-f",
        "--file",
        "path",
        default="charter.yaml",
        envvar="CHARTER_FILE",
        show_default=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="The charter file.",
    )(func)


def output_file(func: F) -> F:
    return click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write it to this file (default: print it).",
    )(func)


def reports_errors(func: F) -> F:
    """Turn charter's own errors into a clear message and exit status 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CharterError as exc:
            for problem in exc.problems:
                where = f"{problem.file}:{problem.line}" if problem.line else problem.file
                _console(stderr=True).print(
                    f"[bold red]error[/] {escape(where)}: {escape(problem.message)}"
                )
                if problem.hint:
                    _console(stderr=True).print(f"      [dim]hint:[/] {escape(problem.hint)}")
            count = len(exc.problems)
            _console(stderr=True).print(f"[red]{count} problem{'s' if count != 1 else ''}[/]")
            sys.exit(EXIT_CHARTER)
        except Error as exc:
            _console(stderr=True).print(f"[bold red]error[/] {escape(str(exc))}")
            sys.exit(EXIT_CHARTER)

    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="charter")
def main() -> None:
    """charter: one owner per record, read-only copies with contracts, enforced and measured."""


def _diff_format(func: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(DIFF_FORMATS),
        default="text",
        show_default=True,
        help="text for a person, json for a program, github for GitHub Actions annotations.",
    )(func)


@main.command()
@charter_file
@click.option(
    "--offline", is_flag=True, help="Check the file only, not against the stores it names."
)
@click.option(
    "--against",
    metavar="REF",
    default=None,
    help="Then compare the file with its version committed at REF (git), as `charter diff "
    "git:REF` does, and exit 4 if the change breaks a copy.",
)
@_diff_format
@reports_errors
def check(path: Path, offline: bool, against: str | None, fmt: str) -> None:
    """Check the charter and summarise it. Exit 1, listing every problem, if it is bad:
    in the file, or (unless --offline) a change the data in a reachable store refuses.
    With --against REF, exit 4 if the change since REF breaks a copy (--format json or
    github print only the changes)."""
    from rich.table import Table

    from charter import diffing, model
    from charter.diff import deprecated_kept
    from charter.tables import seconds
    from charter.urls import redact

    charter = model.load(path)
    checked = "the file only" if offline else _check_stores(charter)
    for copy, field in deprecated_kept(charter):
        _console(stderr=True).print(
            f"[yellow]warning[/] {escape(f'{path}:{copy.line}')}: copy {escape(copy.name)} "
            f"keeps {escape(copy.of)}.{escape(field.name)}, which is deprecated: stop keeping "
            "it, so its owner can remove it",
            highlight=False,
        )
    for moving in charter.entities:  # a transfer left unfinished (charter transfer)
        state = path.parent / ".charter" / "transfers" / f"{moving}.json"
        if state.exists():
            phase = str(json.loads(state.read_text()).get("phase", ""))
            if phase not in ("done", "rolled back"):
                _console(stderr=True).print(
                    f"[yellow]warning[/] the transfer of {escape(moving)} stopped at "
                    f"'{escape(phase)}': its moving records are refused until it resumes "
                    f"(charter transfer {escape(moving)}) or rolls back (--rollback)",
                    highlight=False,
                )
    old: diffing.Side | None = None
    if against is not None:
        ref = against if against.startswith(diffing.GIT) else diffing.GIT + against
        old = diffing.read(ref, path)
        if fmt != "text":  # a program reads this output: the changes only
            _diff_print(fmt, old, diffing.Side(str(path), str(path), charter))
            return
    _console().print(f"[bold]{charter.name}[/]: {path} is valid (checked {checked})\n")
    contexts = Table("context", "team", title="contexts", title_justify="left")
    contexts.add_column("store", overflow="fold")
    for ctx in charter.contexts.values():
        contexts.add_row(*map(escape, (ctx.name, ctx.team, redact(ctx.store))))
    entities = Table("entity", "owner", "fields", "why", title="entities", title_justify="left")
    for entity in charter.entities.values():
        fields = ", ".join(
            f.name
            + (" (private)" if f.private else "")
            + (" (unique)" if f.unique else "")
            + (" (deprecated)" if f.deprecated else "")
            for f in entity.fields.values()
        )
        entities.add_row(*map(escape, (entity.name, entity.ownership(), fields, entity.why)))
    copies = Table("copy", "in", "of", "fields", "window", "breaks", title="copies")
    copies.title_justify = "left"
    for copy in charter.copies.values():
        cells = (copy.name, copy.context, copy.of, ", ".join(copy.fields))
        copies.add_row(*map(escape, cells), seconds(copy.window_s), escape(copy.breaks))
    _console().print(contexts, entities)
    if charter.copies:
        _console().print(copies)
    else:
        _console().print("copies: none (no context keeps a copy of another's entity)\n")
    if charter.commands:
        sent = Table("command", "entity", "owner", "senders", "fields", title="commands")
        sent.title_justify = "left"
        for command in charter.commands.values():
            cells = (command.name, command.entity, command.owner, ", ".join(command.senders))
            sent.add_row(*map(escape, (*cells, ", ".join(command.fields))))
        _console().print(sent)
    if charter.sagas:
        sagas = Table("saga", "orchestrated by", "its runs", title="sagas")
        sagas.title_justify = "left"
        for saga, context in charter.sagas.items():
            sagas.add_row(
                escape(saga), escape(context), f"records of {escape(saga)} in {escape(context)}"
            )
        _console().print(sagas)
    _console().print(f"bus: {escape(redact(charter.bus))}")
    if old is not None:
        _console().print()
        _diff_print(fmt, old, diffing.Side(str(path), str(path), charter))


@main.command(name="diff")
@charter_file
@click.argument("old")
@click.argument("new", required=False)
@_diff_format
@reports_errors
def diff_command(path: Path, old: str, new: str | None, fmt: str) -> None:
    """What a charter change breaks, before it is merged: every change from OLD to NEW
    (NEW defaults to the -f file), and for each one the copies it breaks and whom it tells.
    OLD or NEW may be git:REF, the same file as committed at REF (git:REF:PATH for
    another). Exit 0 when nothing breaks, 4 when something does."""
    from charter import diffing

    old_side, new_side = diffing.sides(old, new or str(path), path)
    _diff_print(fmt, old_side, new_side)


def _diff_print(fmt: str, old: diffing.Side, new: diffing.Side) -> None:
    """Print the changes from `old` to `new`; exit 4 when one breaks a copy."""
    from charter import diffing
    from charter.diff import compare

    changes = compare(old.charter, new.charter)
    if fmt == "json":
        click.echo(diffing.as_json(changes, old, new))
    elif fmt == "github":
        click.echo(diffing.github(changes, old, new))
    else:
        _console().print(diffing.text(changes, old, new), highlight=False, soft_wrap=True)
    if any(c.breaking for c in changes):
        sys.exit(EXIT_BREAKING)


def _check_stores(charter: model.Charter) -> str:
    """Each store the charter names, asked what `charter run` would refuse in it, changing
    nothing; and whether the drivers of the stores and the bus are installed. A store out
    of reach is a note, not a problem. Returns what was checked."""
    from charter.buses import check_driver
    from charter.errors import BackendError, MissingExtraError, Problem
    from charter.stores import open_store

    problems, reached, missed = [], [], []
    try:
        check_driver(charter.bus)
    except MissingExtraError as exc:
        problems.append(Problem(str(charter.path), 0, _without_hint(exc), _extra(exc)))
    for name, ctx in charter.contexts.items():
        try:
            store = open_store(ctx.store, name)
            try:
                found = store.check(charter, name)
            finally:
                store.close()
        except MissingExtraError as exc:
            problems.append(Problem(str(charter.path), ctx.line, _without_hint(exc), _extra(exc)))
            missed.append(name)
            continue
        except BackendError as exc:
            missed.append(name)
            _console(stderr=True).print(
                f"[yellow]note[/] not checked against it: {escape(str(exc))}"
            )
            continue
        reached.append(name)
        problems += [
            Problem(
                str(charter.path),
                exc.line,
                str(exc),
                f"the store of context '{name}' holds this data",
            )
            for exc in found
        ]
    if problems:
        raise CharterError(problems)
    if not missed:
        return "against every store"
    stores = ", ".join(reached) or "no context"
    return f"against the stores of {stores}; not {', '.join(missed)}: out of reach"


def _without_hint(exc: MissingExtraError) -> str:
    return str(exc).rpartition(": pip install")[0]


def _extra(exc: MissingExtraError) -> str:
    return f"pip install 'charter[{exc.extra}]'"


def _lane(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Lane | None:
    from charter.lanes import Lane

    try:
        return Lane.parse(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _address(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, int] | None:
    """HOST:PORT (or [IPv6]:PORT, or :PORT for every address) → (host, port)."""
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"expected HOST:PORT (say 127.0.0.1:9464), got {value!r}")
    return host.removeprefix("[").removesuffix("]") or "0.0.0.0", int(port)


def _serve_metrics(runner: Runner, address: tuple[str, int]) -> Any:
    """The runner's metrics served on `address` (charter.metrics)."""
    from charter.metrics import MetricsServer

    try:
        server = MetricsServer(runner, *address)
    except OSError as exc:
        host, port = address
        raise click.BadParameter(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
            param_hint="--metrics",
        ) from None
    _console().print(f"metrics on {server.url}", highlight=False)
    return server


@main.command()
@charter_file
@click.option("--context", "contexts", multiple=True, help="Run only this context (repeatable).")
@click.option("--once", is_flag=True, help="Drain everything that is waiting, then exit.")
@click.option("--relays/--no-relays", default=True, help="Run the relays (outbox → bus).")
@click.option(
    "--projectors/--no-projectors", default=True, help="Run the projectors (bus → copies)."
)
@click.option(
    "--poll", default=0.01, show_default=True, help="Longest sleep between polls, in seconds."
)
@click.option(
    "--lane",
    callback=_lane,
    metavar="K/N",
    help="Share the copies' work among N processes: this one applies lane K's ids.",
)
@click.option(
    "--metrics",
    "metrics",
    callback=_address,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics of the copies and outboxes run here at "
    "http://HOST:PORT/metrics (needs charter[metrics]).",
)
@click.option(
    "--handlers",
    "handlers",
    multiple=True,
    metavar="MODULE:FUNCTION",
    help="Call FUNCTION(system) first, which registers command handlers and sagas (repeatable).",
)
@click.option(
    "--concurrency",
    "concurrency",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Shares of its commands each context handles at once (one record's in one share, "
    "in order), and orchestrators sharing its sagas' runs.",
)
@reports_errors
def run(
    path: Path,
    contexts: tuple[str, ...],
    once: bool,
    relays: bool,
    projectors: bool,
    poll: float,
    lane: Lane | None,
    metrics: tuple[str, int] | None,
    handlers: tuple[str, ...],
    concurrency: int,
) -> None:
    """Run the relays (outbox → bus) and projectors (bus → copies) until SIGINT or SIGTERM,
    and the command handlers that --handlers registers."""
    from charter._sqlite import bound_heap
    from charter.runner import Runner
    from charter.tables import seconds

    if once and metrics:
        raise click.UsageError("--metrics serves a runner that keeps running, not --once")
    bound_heap()  # a long-running process: its SQLite page caches must not grow with the files
    with _opened(path) as system:
        for spec in handlers:
            registered(spec)(system)
        try:
            runner = Runner(
                system,
                contexts or None,
                poll_interval=poll,
                relays=relays,
                projectors=projectors,
                lane=lane,
                concurrency=concurrency,
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--lane") from None
        names = ", ".join(contexts) if contexts else "all contexts"
        names += f", lane {lane}" if lane else ""
        if once:
            moved = runner.drain()
            _console().print(f"drained {names}: {moved} events moved")
            return
        # The handler only appends to a list: it runs on the main thread between any two
        # bytecodes, and setting a threading.Event there deadlocks when the signal lands
        # while the main thread holds that Event's lock inside wait().
        signals: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            signals.append(signum)

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        served = _serve_metrics(runner, metrics) if metrics else None
        runner.start()
        _console().print(
            f"running {names}: {len(runner.workers)} workers; SIGINT or SIGTERM to stop",
            highlight=False,
        )
        for copy in runner.reconciler.copies:
            mends = ", ".join(copy.repair) or "nothing (report only)"
            _console().print(
                f"reconciling copy '{copy.name}' every {seconds(copy.reconcile_s)}, "
                f"repairing {mends}",
                highlight=False,
            )
        while not signals:
            time.sleep(0.1)
            for line in runner.reports.take():
                _console(stderr=True).print(f"[yellow]warning[/] {escape(line)}")
        runner.stop()
        if served is not None:
            served.close()
        for line in runner.reports.take():
            _console(stderr=True).print(f"[yellow]warning[/] {escape(line)}")
        _console().print("stopped cleanly")


def registered(spec: str) -> Callable[[System], Any]:
    """The function MODULE:FUNCTION names (`charter run --handlers`), imported. The current
    directory is searched first, as `python -m` does: the console script's own folder is
    what Python puts on the path, so a service's module beside it would not be found."""
    module, _, name = spec.partition(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module), name) if name else None
    except ImportError as exc:
        message = f"cannot import {module}: {exc}"
        raise click.BadParameter(message, param_hint="--handlers") from None
    except AttributeError:
        found = None
    if not callable(found):
        raise click.BadParameter(
            f"{spec}: no function there; give MODULE:FUNCTION, FUNCTION(system) registering "
            "the handlers",
            param_hint="--handlers",
        )
    return found  # type: ignore[no-any-return]


@main.command(name="transfer")
@charter_file
@click.argument("entity", required=False)
@click.option("--to", "to", metavar="CONTEXT", help="The context that will own them.")
@click.option(
    "--partitions",
    "parts",
    type=int,
    multiple=True,
    metavar="P",
    help="Move only these partitions of the record id (0-15, as on the bus); repeat it.",
)
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--status", is_flag=True, help="Where the entity's transfer is.")
@click.option("--rollback", is_flag=True, help="Undo an unfinished transfer (before promote).")
@click.option("--drain-timeout", default=30.0, show_default=True, help="Seconds to drain.")
@click.option("--json", "as_json", is_flag=True, help="--status or --dry-run as JSON.")
@click.pass_context
@reports_errors
def transfer_command(
    ctx: click.Context,
    path: Path,
    entity: str | None,
    to: str | None,
    parts: tuple[int, ...],
    dry_run: bool,
    status: bool,
    rollback: bool,
    drain_timeout: float,
    as_json: bool,
) -> None:
    """Move ownership of ENTITY (or of some partitions of its records) to another context,
    never with two writers (G10): fence the old owner in its own store, drain its events,
    promote the new owner at a new epoch, record the move in the charter, apply grants. An
    interrupted transfer resumes when run again, or --rollback (before promote)."""
    from charter import model, transfer
    from charter.urls import NATS, POSTGRES

    _transferable(model.load(path), entity, to)
    done = transfer.command(
        path,
        entity,
        to,
        list(parts) if parts else None,
        dry_run=dry_run,
        status=status,
        rollback=rollback,
        as_json=as_json,
        say=click.echo,
        drain_s=drain_timeout,
    )
    if done is not None:
        charter = model.load(path)
        enforced = charter.bus.startswith(NATS) or any(
            c.store.startswith(POSTGRES) for c in charter.contexts.values()
        )
        if enforced:
            ctx.invoke(
                apply_command,
                path=path,
                dry_run=False,
                nats_config=None,
                audit_only=False,
                mapping=(),
            )


def _transferable(charter: model.Charter, entity: str | None, to: str | None) -> None:
    """Refuse, saying what there is, an entity or a context the charter does not name, and a
    saga's state, which the charter derives from `sagas:` (it has no entry to record a move
    in): `charter transfer` would otherwise say that no transfer was started, or fail."""
    from charter.errors import ValidationError

    def named(word: str, kind: str, kinds: str, choices: tuple[str, ...]) -> str:
        hint = _near(word, choices)
        return f"no {kind} '{word}' in the charter; " + (
            hint or f"its {kinds}: {', '.join(choices)}"
        )

    owned = tuple(name for name in charter.entities if name not in charter.sagas)
    if entity is not None and entity in charter.sagas:
        raise ValidationError(
            f"{entity} is the state of saga {entity}, kept by the context that orchestrates "
            f"it ('{charter.sagas[entity]}'); charter transfer moves entities declared under "
            f"entities: ({', '.join(owned)})"
        )
    if entity is not None and entity not in charter.entities:
        raise ValidationError(named(entity, "entity", "entities", owned))
    if to is not None and to not in charter.contexts:
        raise ValidationError(named(to, "context", "contexts", tuple(charter.contexts)))


def _near(word: str, choices: tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean '{close[0]}'?" if close else ""


@main.command(name="apply")
@charter_file
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option(
    "--nats-config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the NATS authorization block here (default: .charter/nats-auth.conf "
    "beside the charter, when the bus is NATS).",
)
@click.option(
    "--audit-only",
    is_flag=True,
    help="Refuse nothing: set up pgAudit's object audit to log exactly what enforcement "
    "would refuse (`charter audit` lists it).",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="ROLE=CONTEXT",
    help="--audit-only: this role (one the system uses today) speaks for CONTEXT.",
)
@reports_errors
def apply_command(
    path: Path, dry_run: bool, nats_config: Path | None, audit_only: bool, mapping: tuple[str, ...]
) -> None:
    """Make the infrastructure enforce the charter: PostgreSQL roles and grants per
    context, and a NATS authorization block where each context publishes only what it owns.
    With --audit-only, nothing is enforced: what would be refused is logged by pgAudit."""
    from charter import model
    from charter.boundary import driver
    from charter.system import System
    from charter.urls import NATS, POSTGRES

    charter = model.load(path)
    if audit_only:
        _apply_audit_only(charter, dry_run, mapping)
        return
    if mapping:
        raise click.UsageError("--map goes with --audit-only")
    changes = 0
    stores = [ctx for ctx in charter.contexts.values() if ctx.store.startswith(POSTGRES)]
    if stores:
        with driver(f"the store of context '{stores[0].name}'", stores[0].store):
            from charter import grants
        if not dry_run:
            with System(charter) as system:
                for ctx in stores:
                    system.store(ctx.name)  # creates or extends its tables first
        statements = grants.plan(charter)
        changes = sum(len(s) for s in statements.values())
        for context, sqls in statements.items():
            for statement in sqls:
                click.echo(f"-- {context}\n{statement};" if dry_run else f"{context}: {statement}")
        if not dry_run:
            grants.execute(charter, statements)
    if charter.bus.startswith(NATS) or nats_config is not None:
        with driver("the NATS authorization block", charter.bus):
            from charter import natsauth
        block = natsauth.authorization(charter)
        target = nats_config or path.parent / ".charter" / "nats-auth.conf"
        stale = not target.exists() or target.read_text() != block
        if dry_run:
            click.echo(f"# {target}\n{block}")
            changes += 1 if stale else 0
        elif stale:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise click.FileError(str(target), exc.strerror) from None
            _written(target, block)
            changes += 1
            click.echo(f"wrote {target} (include it in nats-server's config, then reload)")
    verb = "would change" if dry_run else "changed"
    if not stores and not charter.bus.startswith(NATS) and nats_config is None:
        click.echo(
            "nothing to change: no store is PostgreSQL and the bus is not NATS (charter's API "
            "refuses a non-owner's writes, and on SQLite so do the store's own triggers)"
        )
        return
    click.echo(
        f"{verb} {changes} thing{'s' if changes != 1 else ''}" if changes else "nothing to change"
    )


def _apply_audit_only(charter: model.Charter, dry_run: bool, mapping: tuple[str, ...]) -> None:
    from charter.audit.actors import parse_mapping
    from charter.boundary import driver
    from charter.urls import POSTGRES

    stores = [ctx for ctx in charter.contexts.values() if ctx.store.startswith(POSTGRES)]
    if not stores:
        raise click.UsageError("--audit-only needs a context on PostgreSQL (with pgAudit)")
    with driver(f"the store of context '{stores[0].name}'", stores[0].store):
        from charter.audit import trial
    statements = trial.plan(charter, parse_mapping(mapping))
    changes = sum(len(s) for s in statements.values())
    for context, sqls in statements.items():
        for statement in sqls:
            click.echo(f"-- {context}\n{statement};" if dry_run else f"{context}: {statement}")
    if not dry_run:
        trial.execute(charter, statements)
    verb = "would change" if dry_run else "changed"
    if not changes:
        click.echo("nothing to change")
        return
    click.echo(f"{verb} {changes} thing{'s' if changes != 1 else ''}")
    click.echo(
        "what charter apply would refuse is now logged by pgAudit (AUDIT: OBJECT) for new "
        "sessions of those roles, and refused to none: see `charter audit`"
    )


@main.command(name="status")
@charter_file
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 3 when any copy is in BREACH, GAP, DRIFT (its last reconciliation found "
    "drift) or DEGRADED (parked events).",
)
@click.option(
    "--context",
    default=None,
    help="Only the copies this context keeps, reading only its store and the bus "
    "(what a service's own roles may read).",
)
@reports_errors
def status_command(path: Path, as_json: bool, strict: bool, context: str | None) -> None:
    """Every copy against its contract: lag in events and seconds, window, state.
    Exit 1 when a copy cannot be measured (UNKNOWN, the reason on stderr)."""
    from charter.status import FAILING, UNKNOWN, status
    from charter.tables import drift_line, kept_table, lanes_line, status_table

    with _opened(path, note=not as_json) as system:
        rows = status(system, context)
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        _console().print(status_table(rows))
        promise = kept_table(rows)
        if promise is not None:
            _console().print(promise)
        for row in rows:
            drifting = drift_line(row)
            if drifting:
                _console().print(drifting, highlight=False)
            if row.lanes:
                _console().print(lanes_line(row), highlight=False)
            if row.parked:
                _console().print(
                    f"{row.copy}: {_events(row.parked)}, see `charter parked {row.copy}`; "
                    "`--retry` once the cause is mended, `--drop` to forget them",
                    highlight=False,
                )
        if context:
            _console().print(
                f"lag counts what is on the bus for '{context}': the owners' events not yet "
                "relayed are in their stores, out of this context's reach",
                highlight=False,
            )
    for row in rows:
        if row.state == UNKNOWN:
            _console(stderr=True).print(
                f"[bold red]error[/] {escape(row.copy)}: {escape(row.error)}"
            )
    if any(row.state == UNKNOWN for row in rows):
        sys.exit(EXIT_CHARTER)
    if strict and any(row.state in FAILING for row in rows):
        sys.exit(EXIT_BREACH)


@main.command(name="sagas")
@charter_file
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--saga", default=None, help="Only the runs of this saga.")
@click.option(
    "--status",
    "state",
    type=click.Choice(["running", "compensating", "completed", "compensated", "parked"]),
    default=None,
    help="Only the runs in this state.",
)
@click.option("--strict", is_flag=True, help="Exit 3 when a run is parked.")
@click.option(
    "--resume", "resume_id", default=None, metavar="ID", help="A parked run compensates again."
)
@reports_errors
def sagas_command(
    path: Path,
    as_json: bool,
    saga: str | None,
    state: str | None,
    strict: bool,
    resume_id: str | None,
) -> None:
    """Every run of the charter's sagas: running, compensating, completed, compensated and
    parked (with its reason), read from each orchestrator's store."""
    from charter.sagas import listing

    with _opened(path, note=not as_json) as system:
        if resume_id is not None:
            resumed = listing.resume(system, resume_id)
            _console().print(f"{resumed.saga} {resumed.id}: compensating again", highlight=False)
            return
        rows = listing.listed(system, saga, state)
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        _console().print(listing.table(rows))
        _console().print(listing.counts(rows), highlight=False)
    if strict and any(row.status == "parked" for row in rows):
        sys.exit(EXIT_BREACH)


@main.command(name="reconcile")
@charter_file
@click.argument("copies", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--budget", default="30s", show_default=True, help="How long each copy's check may take."
)
@click.option(
    "--max-diffs",
    default=MAX_DIFFS,
    show_default=True,
    help="Stop a copy's check after this many differences.",
)
@click.option(
    "--repair",
    "repairs",
    is_flag=True,
    help="Have the owner publish the current state of each drifted id (tombstones for "
    "extras) for the copy's projector to apply; then check again.",
)
@click.option(
    "--accept-owner", is_flag=True, help="With --repair: move a copy ahead of its owner back."
)
@click.option(
    "--incremental/--full",
    default=True,
    help="Compare the digest buckets both databases keep as rows change (the default; built "
    "on the first check), or recompute every digest from the rows (--full: also finds what "
    "was written with triggers turned off).",
)
@reports_errors
def reconcile_command(
    path: Path,
    copies: tuple[str, ...],
    as_json: bool,
    budget: str,
    max_diffs: int,
    repairs: bool,
    accept_owner: bool,
    incremental: bool,
) -> None:
    """Compare each copy (every copy when none is named) with its owner's current state:
    missing, extra, stale, divergent, ahead, in flight. Exit 5 when there is drift (or a
    check stopped before the end), 1 when a store cannot be read."""
    from charter import model, reconcile
    from charter.reconcile import drift as reconcile_drift
    from charter.reconcile import show as reconcile_show

    budget_s = model.parse_duration(budget)
    if budget_s is None:
        raise click.BadParameter(
            f"{budget!r} is not a duration (e.g. 30s, 2m)", param_hint="--budget"
        )
    if accept_owner and not repairs:
        raise click.BadParameter("only with --repair", param_hint="--accept-owner")
    with _opened(path, note=not as_json) as system:
        reports = reconcile.check_all(system, copies, budget_s, max_diffs, incremental)
        mended = [
            reconcile.mend(system, r, budget_s, accept_owner=accept_owner, budget_s=budget_s)
            for r in reports
            if repairs and not r.error and r.drift
        ]
        docs = {m.before.copy: m for m in mended}
        unrecorded = reconcile_drift.keep_all(system, reports, docs)
    if as_json:
        out = [docs[r.copy].as_json() if r.copy in docs else r.as_json() for r in reports]
        click.echo(json.dumps(out, indent=2))
    else:
        _console().print(reconcile_show.table(reports))
        for report in reports:
            for line in reconcile_show.details(report):
                _console().print(line, highlight=False)
        for done in mended:
            for line in reconcile_show.repaired(done):
                _console().print(line, highlight=False)
    for line in unrecorded:
        _console(stderr=True).print(f"[yellow]warning[/] {escape(line)}", highlight=False)
    reports = [docs[r.copy].after if r.copy in docs else r for r in reports]
    if any(r.error for r in reports):
        sys.exit(EXIT_CHARTER)
    if not all(r.clean for r in reports):
        sys.exit(EXIT_DRIFT)


@main.command()
@charter_file
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the rules to this file (default: print them).",
)
@reports_errors
def alerts(path: Path, output: Path | None) -> None:
    """Prometheus alerting rules for every copy, from the metrics `charter run --metrics`
    serves: staler than its window for a while, parked events, nothing applying its
    events, drift at its last reconciliation, not checked on its schedule; each says what
    breaks and whom to call."""
    from charter import model
    from charter.alerts import rules as made
    from charter.alerts import text

    charter = model.load(path)
    rules = text(charter)
    if output is None:
        click.echo(rules, nl=False)
        return
    _written(output, rules)
    count = len(made(charter)["groups"][0]["rules"])
    click.echo(f"wrote {count} rule{'s' if count != 1 else ''} to {output}")


@main.command()
@charter_file
@click.argument("entity")
@click.argument("entity_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def history(path: Path, entity: str, entity_id: str, as_json: bool) -> None:
    """The owner's authoritative history of one record: each version's public values,
    who made it (a transaction's actor) and when; private fields by name only."""
    from charter import model
    from charter.tables import history_table, states_of

    with _opened(path, note=not as_json) as system:
        spec = system.charter.entities.get(entity)
        if spec is None:
            names = tuple(system.charter.entities)
            hint = model._hint(entity, names) or f"entities: {', '.join(names)}"
            raise click.BadParameter(f"no entity '{entity}'; {hint}", param_hint="ENTITY")
        rows = system.store(spec.owner).history(entity, entity_id)
    if not rows:
        _console(stderr=True).print(f"no history for {entity} {entity_id} in '{spec.owner}'")
        sys.exit(EXIT_CHARTER)
    states = states_of(rows)
    if as_json:
        docs = [
            {
                "version": r.version,
                "op": r.op,
                "changed": list(r.changed),
                "private_changed": list(r.private),
                "actor": r.actor,
                "time": r.time,
                "state": state,
            }
            for r, state in zip(rows, states, strict=True)
        ]
        click.echo(json.dumps(docs, indent=2))
        return
    table = history_table(rows, states, title=f"{entity} {entity_id}")
    _console().print(table)


@main.command()
@charter_file
@click.argument("copy", required=False)
@click.argument("ident", metavar="[ID]", required=False)
@click.option("--retry", is_flag=True, help="Apply them again, now that their cause is mended.")
@click.option("--drop", is_flag=True, help="Forget them, each noted in the log.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--context", default=None, help="Only the copies this context keeps.")
@reports_errors
def parked(
    path: Path,
    copy: str | None,
    ident: str | None,
    retry: bool,
    drop: bool,
    as_json: bool,
    context: str | None,
) -> None:
    """Events a copy could not apply, with the reason (all copies, or COPY; all records, or
    the record or event whose id is ID). --retry applies them again: those that apply now
    (or that a newer version has overtaken) leave the list, the others stay with their
    reason. --drop forgets them."""
    from rich.table import Table

    from charter import parking

    if retry and drop:
        raise click.UsageError("--retry or --drop, not both")
    outcomes: list[parking.Outcome] = []
    rows: list[Parked] = []
    unreadable: list[str] = []  # copies whose store this process cannot read
    with _opened(path, note=not as_json) as system:
        chosen = parking.copies(system, copy)  # an unknown copy fails here, with a hint
        if context is not None:
            system.context(context)  # an unknown name fails here, with a hint
            chosen = [c for c in chosen if c.context == context]
            if copy is not None and not chosen:
                raise click.BadParameter(f"'{context}' keeps no copy '{copy}'", param_hint="COPY")
        for spec in chosen:
            try:
                if retry:
                    tried = parking.retry(system, spec.name, ident)
                    outcomes += tried
                    rows += [o.parked for o in tried]
                elif drop:
                    rows += parking.drop(system, spec.name, ident)
                else:
                    rows += parking.parked(system, spec.name, ident)
            except Error as exc:  # the others are still worth showing
                unreadable.append(f"{spec.name}: {exc}")
    for line in unreadable:
        _console(stderr=True).print(f"[bold red]error[/] {escape(line)}")
    if unreadable and not rows:
        sys.exit(EXIT_CHARTER)
    if as_json:
        docs = [parking.as_json(p) for p in rows]
        if retry:
            for doc, o in zip(docs, outcomes, strict=True):
                doc["outcome"] = "resolved" if o.resolved else "parked"
                doc["reason"] = o.reason or doc["reason"]
        click.echo(json.dumps(docs, indent=2))
        sys.exit(EXIT_CHARTER if unreadable else 0)
    if not rows:
        where = f" in copy '{copy}'" if copy else ""
        what = f" for {ident!r}" if ident else ""
        _console().print(escape(f"nothing parked{what}{where}"), highlight=False)
        return
    table = Table("copy")
    table.add_column("id", no_wrap=True)  # whole, to paste into `charter parked COPY ID`
    table.add_column("version")
    table.add_column("event", no_wrap=True)
    table.add_column("reason")
    table.add_column("parked at")
    if retry:
        table.add_column("outcome")
    for n, p in enumerate(rows):
        cells = [p.copy, p.entity_id, str(p.version), p.event_id, p.reason, p.parked_at]
        if retry:
            outcome = outcomes[n]
            cells[4] = outcome.reason or p.reason
            cells.append("[green]resolved[/]" if outcome.resolved else "[red]still parked[/]")
        table.add_row(*map(escape, cells[:6]), *cells[6:])
    _console().print(table)
    if retry:
        done = sum(o.resolved for o in outcomes)
        _console().print(f"{done} of {_events(len(outcomes))} resolved", highlight=False)
    elif drop:
        _console().print(f"dropped {_events(len(rows))} (noted in the log)", highlight=False)
    if unreadable:
        sys.exit(EXIT_CHARTER)


def _events(count: int) -> str:
    return f"{count} parked event{'s' if count != 1 else ''}"


@main.command(name="export")
@charter_file
@click.argument("kind", type=click.Choice(EXPORT_KINDS))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default=None,
    help="yaml or json (default: from -o's suffix, else json for jsonschema and "
    "yaml for the others).",
)
@output_file
@click.option("--copy", default=None, help="odcs: only this copy's contract.")
@reports_errors
def export_command(
    path: Path, kind: str, fmt: str | None, output: Path | None, copy: str | None
) -> None:
    """Publish the contract where tools read it: asyncapi (the events: AsyncAPI 3.0),
    jsonschema (each entity's event data and each copy's row), odcs (a data contract per
    copy: Open Data Contract Standard v3.1). From the file alone; no private field."""
    from charter import exports, model

    if fmt is None:
        suffix = output.suffix.lower() if output else ""
        fmt = "json" if suffix == ".json" or (not suffix and kind == "jsonschema") else "yaml"
    _write(exports.render(exports.documents(model.load(path), kind, copy), fmt), output)


def _write(text: str, output: Path | None) -> None:
    """Print `text`, or write it to `output` (saying so on stderr)."""
    if output is None:
        click.echo(text, nl=False)
        return
    _written(output, text)
    _console(stderr=True).print(f"wrote {escape(str(output))}", highlight=False)


def _written(output: Path, data: str | bytes) -> None:
    """Write a command's output file; a folder that is not there or may not be written is
    a usage error naming the file, never a traceback."""
    try:
        if isinstance(data, bytes):
            output.write_bytes(data)
        else:
            output.write_text(data, encoding="utf-8")
    except OSError as exc:
        raise click.FileError(str(output), exc.strerror) from None


@main.command()
@charter_file
@click.option("--context", required=True, help="The context whose models to write.")
@output_file
@reports_errors
def codegen(path: Path, context: str, output: Path | None) -> None:
    """Typed models of one context's nouns: frozen dataclasses of what it owns (with typed
    create / update / delete through its transactions) and of each copy it keeps (read-only,
    only the copy's fields). Nothing of another context's private fields."""
    from charter import model
    from charter.codegen import generate

    _write(generate(model.load(path), context), output)


@main.command(name="audit")
@charter_file
@click.argument("logs", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--stat-statements",
    "stat_statements",
    metavar="URL",
    help="Also read the live pg_stat_statements of this PostgreSQL database.",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="NAME=CONTEXT",
    help="Sessions of this role or application name speak for CONTEXT (repeatable).",
)
@click.option("--since", metavar="WHEN", help="Only what happened since: 2h, 7d, or a time.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Exit 3 when there is any finding.")
@click.option("--suggest", is_flag=True, help="Infer a draft charter from the traffic instead.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the draft charter here (--suggest; default: print it).",
)
@click.option(
    "--columns-from",
    metavar="URL",
    help="--suggest: read the tables' columns and types from this database "
    "(default: the --stat-statements URL).",
)
@reports_errors
def audit_command(
    path: Path,
    logs: tuple[Path, ...],
    stat_statements: str | None,
    mapping: tuple[str, ...],
    since: str | None,
    as_json: bool,
    strict: bool,
    suggest: bool,
    output: Path | None,
    columns_from: str | None,
) -> None:
    """What the database really saw, against the charter: writes by non-owners, shared
    tables, cross-context reads and joins, tables no context owns, statements that could
    not be parsed. LOGS: PostgreSQL server logs (csvlog or jsonlog, with log_statement or
    pgAudit). With --suggest, a draft charter inferred from the traffic."""
    from charter import audit, model
    from charter.audit.actors import parse_mapping

    audit.require()
    if not logs and not stat_statements:
        raise click.UsageError("give a server log (csvlog or jsonlog) or --stat-statements URL")
    after = audit.since(since) if since else None
    names = parse_mapping(mapping)
    if suggest:
        from charter.audit.suggest import draft

        text = draft(list(logs), stat_statements, names, after, columns_from or stat_statements)
        if output is None:
            click.echo(text, nl=False)
            return
        if output.exists():
            raise click.UsageError(f"{output} exists: remove it or choose another name (-o)")
        _written(output, text)
        _console().print(f"wrote {escape(str(output))}: check it with `charter check -f {output}`")
        return
    report = audit.audit(model.load(path), list(logs), stat_statements, names, after)
    if as_json:
        click.echo(json.dumps(report.as_json(), indent=2))
    else:
        from charter.audit.report import render

        _console().print(*render(report))
    if strict and report.findings:
        sys.exit(EXIT_BREACH)


@main.command(name="map")
@charter_file
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "mermaid", "dot", "json"]),
    default=None,
    help="Default: what -o's suffix says (.svg .png .mmd .dot .json), else mermaid.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--findings",
    type=click.File("r"),
    default=None,
    help="Draw these audit findings in red (`charter audit --json` output; - for stdin).",
)
@click.option(
    "--no-status", is_flag=True, help="Do not ask the stores and the bus how copies stand."
)
@reports_errors
def map_command(
    path: Path, fmt: str | None, output: Path | None, findings: Any, no_status: bool
) -> None:
    """The system drawn: contexts with their teams, entities at their owners, copies as
    arrows labelled with fields and window, coloured by their live state; given audit
    findings, the undeclared readers and writers in red."""
    from charter import model, topology
    from charter.status import status

    chosen = topology.format_of(fmt, str(output) if output else None)
    if chosen == "png" and output is None:
        raise click.UsageError("--format png needs -o FILE")
    found: list[dict[str, Any]] = []
    if findings is not None:
        try:
            found = list(json.load(findings)["findings"])
        except (ValueError, KeyError, TypeError):
            raise click.BadParameter(
                "not the JSON of `charter audit --json`", param_hint="--findings"
            ) from None
    if no_status:
        drawn = topology.graph(model.load(path), (), found)
    else:
        with _opened(path, note=False) as system:
            drawn = topology.graph(system.charter, status(system), found)
    data = topology.render(drawn, chosen)
    if output is None:
        click.echo(data.decode(), nl=False)
    else:
        _written(output, data)
        _console().print(f"wrote {escape(str(output))} ({chosen})", highlight=False)


@main.command()
@charter_file
@click.option("--host", default="127.0.0.1", show_default=True, help="Where to listen.")
@click.option(
    "--port",
    default=8800,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="0: any free one.",
)
@click.option(
    "--token",
    envvar="CHARTER_DASHBOARD_TOKEN",
    default=None,
    help="The token actions need (default: a new one, printed). Or $CHARTER_DASHBOARD_TOKEN.",
)
@click.option("--read-only", is_flag=True, help="No actions at all, whatever the token.")
@click.option(
    "--audit",
    "audit_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Show these audit findings: a server log (csvlog, jsonlog) or `charter audit --json` "
    "output, read again when it changes (repeatable).",
)
@click.option(
    "--map",
    "mapping",
    multiple=True,
    metavar="NAME=CONTEXT",
    help="--audit: sessions of this role or application name speak for CONTEXT (repeatable).",
)
@reports_errors
def serve(
    path: Path,
    host: str,
    port: int,
    token: str | None,
    read_only: bool,
    audit_files: tuple[Path, ...],
    mapping: tuple[str, ...],
) -> None:
    """The live dashboard: the map, every copy against its window, parked events (retry,
    drop: with the token), one record's story, audit findings, /metrics. Serves until
    SIGINT or SIGTERM; exit 1 when it cannot start (the charter, the port)."""
    from charter.audit.actors import parse_mapping
    from charter.dashboard.serve import serve as run_dashboard

    run_dashboard(path, host, port, token, read_only, audit_files, parse_mapping(mapping))


@main.command()
@click.option("--changes", default=3000, show_default=True, help="How many changes to make.")
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Build the shop in this folder and keep it, with its PostgreSQL schemas and NATS "
    "stream (default: a temporary folder, and everything removed at the end).",
)
@click.option(
    "--postgres",
    metavar="URL",
    default=None,
    help="Keep every context's store in this PostgreSQL database, each in a schema of its "
    "own, <run>_<context> (default: SQLite files).",
)
@click.option(
    "--nats",
    metavar="URL",
    default=None,
    help="Move the events on this NATS JetStream server, in a stream of this run's own "
    "(default: an SQLite bus).",
)
@reports_errors
def demo(changes: int, keep: Path | None, postgres: str | None, nats: str | None) -> None:
    """Build the shop from the essays and watch ownership, copies and contracts work.

    Everything is SQLite files in one folder unless --postgres and/or --nats put the
    stores and/or the bus on servers:

    \b
      charter demo --postgres postgresql://postgres@127.0.0.1:5432/test \\
                   --nats nats://127.0.0.1:4222

    Each run names its schemas and stream after a fresh id (demo_<8 hex>), so runs never
    collide, and removes them at the end unless --keep is given."""
    from charter.demo import run_demo

    run_demo(_console(), changes=changes, folder=keep, postgres=postgres, nats=nats)


if __name__ == "__main__":
    main()
