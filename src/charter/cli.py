"""The `charter` command: check the charter, run the pipeline, see the copies."""

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
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charter import model, parking
from charter._sqlite import bound_heap
from charter.boundary import driver
from charter.buses import check_driver
from charter.errors import BackendError, CharterError, Error, MissingExtraError, Problem
from charter.lanes import Lane
from charter.records import Parked
from charter.runner import Runner
from charter.status import FAILING, UNKNOWN, status
from charter.stores import open_store
from charter.stores.memory import in_this_process
from charter.system import System
from charter.tables import history_table, lanes_line, seconds, states_of, status_table
from charter.urls import NATS, POSTGRES, redact

F = TypeVar("F", bound=Callable[..., Any])


def _opened(path: Path, note: bool = True) -> System:
    """The system of a charter file, for a command that reads or runs it. A charter in
    memory:// lives in one process: a command sees it empty, and says so (on stderr, not
    with --json)."""
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
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or "COLUMNS" in os.environ else 140
    return Console(stderr=stderr, width=width, soft_wrap=stderr)


EXIT_CHARTER = 1
EXIT_BREACH = 3


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


@main.command()
@charter_file
@click.option(
    "--offline", is_flag=True, help="Check the file only, not against the stores it names."
)
@reports_errors
def check(path: Path, offline: bool) -> None:
    """Check the charter and summarise it. Exit 1, listing every problem, if it is bad:
    in the file, or (unless --offline) a change the data in a reachable store refuses."""
    charter = model.load(path)
    checked = "the file only" if offline else _check_stores(charter)
    _console().print(f"[bold]{charter.name}[/]: {path} is valid (checked {checked})\n")
    contexts = Table("context", "team", title="contexts", title_justify="left")
    contexts.add_column("store", overflow="fold")
    for ctx in charter.contexts.values():
        contexts.add_row(*map(escape, (ctx.name, ctx.team, redact(ctx.store))))
    entities = Table("entity", "owner", "fields", "why", title="entities", title_justify="left")
    for entity in charter.entities.values():
        fields = ", ".join(
            f.name + (" (private)" if f.private else "") + (" (unique)" if f.unique else "")
            for f in entity.fields.values()
        )
        entities.add_row(*map(escape, (entity.name, entity.owner, fields, entity.why)))
    copies = Table("copy", "in", "of", "fields", "window", "breaks", title="copies")
    copies.title_justify = "left"
    for copy in charter.copies.values():
        cells = (copy.name, copy.context, copy.of, ", ".join(copy.fields))
        copies.add_row(*map(escape, cells), seconds(copy.window_s), escape(copy.breaks))
    _console().print(contexts, entities, copies)
    if charter.commands:
        sent = Table("command", "entity", "owner", "senders", "fields", title="commands")
        sent.title_justify = "left"
        for command in charter.commands.values():
            cells = (command.name, command.entity, command.owner, ", ".join(command.senders))
            sent.add_row(*map(escape, (*cells, ", ".join(command.fields))))
        _console().print(sent)
    _console().print(f"bus: {escape(redact(charter.bus))}")


def _check_stores(charter: model.Charter) -> str:
    """Each store the charter names, asked what `charter run` would refuse in it, changing
    nothing; and whether the drivers of the stores and the bus are installed. A store out
    of reach is a note, not a problem. Returns what was checked."""
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
    try:
        return Lane.parse(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
    "--handlers",
    "handlers",
    multiple=True,
    metavar="MODULE:FUNCTION",
    help="Call FUNCTION(system) first, which registers command handlers (repeatable).",
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
    handlers: tuple[str, ...],
) -> None:
    """Run the relays (outbox → bus) and projectors (bus → copies) until SIGINT or SIGTERM,
    and the command handlers that --handlers registers."""
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
        runner.start()
        _console().print(
            f"running {names}: {len(runner.workers)} workers; SIGINT or SIGTERM to stop",
            highlight=False,
        )
        while not signals:
            time.sleep(0.1)
            for line in runner.reports.take():
                _console(stderr=True).print(f"[yellow]warning[/] {escape(line)}")
        runner.stop()
        for line in runner.reports.take():
            _console(stderr=True).print(f"[yellow]warning[/] {escape(line)}")
        _console().print("stopped cleanly")


def registered(spec: str) -> Callable[[System], Any]:
    """The function MODULE:FUNCTION names (`charter run --handlers`), imported."""
    module, _, name = spec.partition(":")
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
@reports_errors
def apply_command(path: Path, dry_run: bool, nats_config: Path | None) -> None:
    """Make the infrastructure enforce the charter: PostgreSQL roles and grants per
    context, and a NATS authorization block where each context publishes only what it owns."""
    charter = model.load(path)
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
        if dry_run:
            click.echo(f"# {target}\n{block}")
        elif not target.exists() or target.read_text() != block:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block)
            changes += 1
            click.echo(f"wrote {target} (include it in nats-server's config, then reload)")
    verb = "would change" if dry_run else "changed"
    click.echo(
        f"{verb} {changes} thing{'s' if changes != 1 else ''}" if changes else "nothing to change"
    )


@main.command(name="status")
@charter_file
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--strict",
    is_flag=True,
    help="Exit 3 when any copy is in BREACH, GAP or DEGRADED (parked events).",
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
    with _opened(path, note=not as_json) as system:
        rows = status(system, context)
    if as_json:
        click.echo(json.dumps([row.as_json() for row in rows], indent=2))
    else:
        _console().print(status_table(rows))
        for row in rows:
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


@main.command()
@charter_file
@click.argument("entity")
@click.argument("entity_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@reports_errors
def history(path: Path, entity: str, entity_id: str, as_json: bool) -> None:
    """The owner's authoritative history of one record: each version's public values,
    who made it (a transaction's actor) and when; private fields by name only."""
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
        docs = [_parked_json(p) for p in rows]
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


def _parked_json(p: Parked) -> dict[str, Any]:
    return {
        "copy": p.copy,
        "id": p.entity_id,
        "version": p.version,
        "event_id": p.event_id,
        "position": p.position,
        "reason": p.reason,
        "parked_at": p.parked_at,
    }


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
