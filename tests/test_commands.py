"""G9 commands once: a context asks the owner for a change (`ctx.send`), the owner's
handler applies it at most once per idempotency key, in the same transaction as the key,
and the sender learns the result, the owner's refusal, or that it may still be applied.
On every backend; across processes, with the owner killed and started again; on NATS, the
server refusing a context the charter does not let send."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import charter
from charter.buses.nats import NatsBus, RefusedError
from charter.cli import main
from charter.commands import CommandWorker, Request, outcome, request
from charter.natsauth import explainer, password_variable, user_name
from charter.records import CommandDelivery
from charter.system import System
from tests import nats_servers
from tests.backends import CONTEXTS
from tests.command_handlers import append_note, register, with_commands
from tests.conftest import SHOP, charter_command
from tests.workers import WorkerProcess


@pytest.fixture
def commands_file(shop_file: Path) -> Path:
    with_commands(shop_file)
    return shop_file


@pytest.fixture
def system(commands_file: Path) -> Iterator[System]:
    shop = charter.load(commands_file)
    yield shop
    shop.close()


def customer(system: System, email: str = "ada@example.com") -> str:
    with system.context("customers").transaction() as tx:
        return tx.create("Customer", email=email, name="Ada", password_hash="h").id


def counting(system: System) -> list[str]:
    """Register the handlers, counting each run of AppendNote's; the keys it ran for."""
    register(system)
    ran: list[str] = []

    def counted(tx: charter.Transaction, cmd: Request) -> object:
        ran.append(cmd.key)
        return append_note(tx, cmd)

    system.context("customers").handles("AppendNote")(counted)
    return ran


def test_the_owner_applies_a_command_and_the_sender_gets_its_result(system: System) -> None:
    ada = customer(system)
    register(system)
    with charter.Runner(system) as runner:
        record = system.context("orders").send("ChangeEmail", id=ada, email="ada@lovelace.org")
        assert isinstance(record, charter.Record)
        assert (record.id, record.version, record.email) == (ada, 2, "ada@lovelace.org")
        assert "password_hash" not in record  # private fields never leave the owner
        assert runner.wait_until_synced()
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None and owned.email == "ada@lovelace.org"
    copied = system.context("orders").copy("order_customers").get(ada)
    assert copied is not None and copied.email == "ada@lovelace.org"  # as any change


def test_a_retry_with_the_same_key_is_not_applied_again(system: System) -> None:
    ada = customer(system)
    ran = counting(system)
    orders = system.context("orders")
    with charter.Runner(system):
        first = orders.send("AppendNote", id=ada, text="one", key="k-1")
        again = orders.send("AppendNote", id=ada, text="one", key="k-1")
        other = orders.send("AppendNote", id=ada, text="two", key="k-2")
    assert first == again == {"version": 2} and other == {"version": 3}
    assert ran == ["k-1", "k-2"]
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None and owned.address == "one;two;"


def test_a_duplicate_delivery_is_not_applied_again(system: System) -> None:
    """The bus may hand a command out twice (a taker that died, a lease that ran out):
    the owner's store answers the second one with the first one's answer."""
    ada = customer(system)
    ran = counting(system)
    system.bus.send_command(
        "orders", "customers", "AppendNote", "dup", _request(system, ada, "dup")
    )
    (delivery,) = system.bus.take_commands("customers", 10, 5.0)
    worker = _worker(system)
    answers = {worker.handle(delivery) for _ in range(3)}
    assert len(answers) == 1 and ran == ["dup"]
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None and owned.address == "dup;"


@pytest.mark.races
def test_a_command_handled_twice_at_once_is_applied_once(system: System) -> None:
    """Two owner processes (here threads) handling one delivery at the same moment: the
    key's primary key lets one commit; the other answers what the first recorded."""
    ada = customer(system)
    ran = counting(system)
    for round_ in range(5):
        key = f"race-{round_}"
        system.bus.send_command(
            "orders", "customers", "AppendNote", key, _request(system, ada, key)
        )
        (delivery,) = system.bus.take_commands("customers", 10, 5.0)
        workers = [_worker(system) for _ in range(4)]
        barrier = threading.Barrier(len(workers))
        answers: list[bytes] = []

        def handle(
            worker: CommandWorker,
            d: CommandDelivery = delivery,
            barrier: threading.Barrier = barrier,
            answers: list[bytes] = answers,
        ) -> None:
            barrier.wait()
            answers.append(worker.handle(d))

        threads = [threading.Thread(target=handle, args=(w,)) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(answers) == 4 and len(set(answers)) == 1, answers
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None
    assert owned.address == "".join(f"race-{n};" for n in range(5))
    assert len(set(ran)) == 5  # a handler may run more than once; it commits once


def test_a_refused_command_returns_the_owners_error(system: System) -> None:
    ada, bob = customer(system), customer(system, "bob@example.com")
    register(system)
    orders = system.context("orders")
    with charter.Runner(system):
        with pytest.raises(charter.ConstraintError, match="email must be unique") as taken:
            orders.send("ChangeEmail", id=bob, email="ada@example.com")
        assert "refused by 'customers' for command ChangeEmail" in taken.value.__notes__[0]
        assert str(taken.value) == (  # on every store: PostgreSQL refuses it at commit
            "Customer.email must be unique: 'ada@example.com' is already used by another Customer"
        )
        with pytest.raises(charter.NotFoundError, match="no Customer with id nobody"):
            orders.send("ChangeEmail", id="nobody", email="x@example.com")
        with pytest.raises(charter.ValidationError, match="this note is not welcome"):
            orders.send("AppendNote", id=ada, text="refuse me", key="refused")
        # a key's outcome is final, a refusal too: the same key answers the same refusal
        with pytest.raises(charter.ValidationError, match="this note is not welcome"):
            orders.send("AppendNote", id=ada, text="welcome now", key="refused")
    owned = system.context("customers").get("Customer", bob)
    assert owned is not None and owned.email == "bob@example.com" and owned.version == 1


def test_the_sender_checks_a_command_against_the_charter(system: System) -> None:
    ada = customer(system)
    orders, shipping = system.context("orders"), system.context("shipping")
    with pytest.raises(charter.ValidationError, match="did you mean 'ChangeEmail'"):
        orders.send("ChangeMail", id=ada, email="x@example.com")
    with pytest.raises(charter.ValidationError, match="'shipping' may not send AppendNote"):
        shipping.send("AppendNote", id=ada, text="x")
    with pytest.raises(charter.ValidationError, match="as Customer's owner, change it in a"):
        system.context("customers").send("AppendNote", id=ada, text="x")
    with pytest.raises(charter.ValidationError, match="has no field name"):
        orders.send("ChangeEmail", id=ada, name="x")
    with pytest.raises(charter.ValidationError, match="text is required"):
        orders.send("AppendNote", id=ada)
    with pytest.raises(charter.ValidationError, match=r"AppendNote\.text: expected a string"):
        orders.send("AppendNote", id=ada, text=12)
    with pytest.raises(charter.OwnershipError, match="'customers'") as handling:
        orders.handles("ChangeEmail")
    assert "'orders' may not handle ChangeEmail: it changes Customer" in str(handling.value)
    assert "system.context('customers').handles('ChangeEmail')" in str(handling.value)
    assert system.bus.take_commands("customers", 10, 0.0) == []  # nothing was sent


def test_a_non_owner_is_told_which_command_to_send(system: System) -> None:
    ada = customer(system)
    with (
        pytest.raises(charter.OwnershipError) as refused,
        system.context("orders").transaction() as tx,
    ):
        tx.update("Customer", ada, email="x@example.com")
    message = str(refused.value)
    assert "ctx.send('ChangeEmail', …) or ctx.send('AppendNote', …)" in message
    with (
        pytest.raises(charter.OwnershipError) as shipping,
        system.context("shipping").transaction() as tx,
    ):
        tx.update("Customer", ada, email="x@example.com")
    assert "ctx.send('ChangeEmail', …)" in str(shipping.value)
    assert "AppendNote" not in str(shipping.value)
    with (
        pytest.raises(charter.OwnershipError) as calendar,
        system.context("calendar").transaction() as tx,
    ):
        tx.update("Customer", ada, email="x@example.com")
    assert "Ask 'customers' to make the change" in str(calendar.value)


def test_the_owner_down_gives_a_timeout_then_the_command_applies_once(
    system: System,
) -> None:
    ada = customer(system)
    orders = system.context("orders")
    with pytest.raises(charter.CommandTimeoutError) as waited:
        orders.send("AppendNote", id=ada, text="while down", key="down-1", timeout=0.3)
    assert waited.value.key == "down-1" and "may still be applied" in str(waited.value)
    ran = counting(system)
    with charter.Runner(system):  # the owner comes back
        _until(lambda: ran == ["down-1"])
        assert orders.send("AppendNote", id=ada, text="while down", key="down-1") == {"version": 2}
    assert ran == ["down-1"]
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None and owned.address == "while down;"


@pytest.mark.processes
def test_commands_across_processes_with_the_owner_killed_and_started_again(
    commands_file: Path, system: System
) -> None:
    """The owner serves commands in `charter run --handlers` (another process); a sender
    here sends 40 non-idempotent commands, each retried with its key after a timeout,
    while the owner is killed with SIGKILL twice and started again. Every command is
    answered, and applied exactly once."""
    ada = customer(system)
    args = ("run", "-f", str(commands_file), "--context", "customers")
    handlers = ("--handlers", "tests.command_handlers:register")

    def owner() -> WorkerProcess:
        process = WorkerProcess(charter_command(*args, *handlers))
        process.wait_for(lambda line: line.startswith("running"))
        return process

    orders = system.context("orders")
    answered: list[int] = []
    timeouts = [0]
    failed: list[BaseException] = []

    def send_all() -> None:
        try:
            for n in range(40):
                while True:
                    try:
                        got = orders.send(
                            "AppendNote", id=ada, text=f"n{n}", key=f"p-{n}", timeout=1
                        )
                        answered.append(got["version"])
                        break
                    except charter.CommandTimeoutError:
                        timeouts[0] += 1  # the owner is down: the same key again
        except BaseException as exc:
            failed.append(exc)

    process = owner()
    sender = threading.Thread(target=send_all)
    sender.start()
    try:
        for kills in (10, 25):
            _until(lambda kills=kills: len(answered) >= kills or bool(failed), 60)
            process.kill()
            time.sleep(1.5)  # commands wait on the bus meanwhile
            process = owner()
        sender.join(120)
    finally:
        process.kill()
    assert not failed and not sender.is_alive()
    assert timeouts[0] > 0, "the owner was never seen down"
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None
    assert owned.address == "".join(f"n{n};" for n in range(40)), "applied twice or lost"
    assert answered == list(range(2, 42)) and owned.version == 41


def test_charter_run_says_when_handlers_cannot_be_found(commands_file: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "-f", str(commands_file), "--once", "--handlers", "tests.nowhere:register"]
    )
    assert result.exit_code != 0 and "cannot import tests.nowhere" in result.output
    result = CliRunner().invoke(
        main,
        ["run", "-f", str(commands_file), "--once", "--handlers", "tests.command_handlers:nope"],
    )
    assert result.exit_code != 0 and "no function there" in result.output


def test_charter_check_lists_the_commands(commands_file: Path) -> None:
    result = CliRunner().invoke(main, ["check", "-f", str(commands_file), "--offline"])
    assert result.exit_code == 0, result.output
    assert "AppendNote" in result.output and "orders, shipping" in result.output


def test_a_command_with_unknown_senders_or_fields_is_a_charter_problem(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    urls = {ctx: f"sqlite:///{tmp_path}/{ctx}.db" for ctx in CONTEXTS}
    path.write_text(SHOP.format(name="shop", bus=f"sqlite:///{tmp_path}/bus.db", **urls))
    with_commands(path)
    text = path.read_text().replace("[orders, shipping]", "[orders, shiping]")
    path.write_text(text.replace("fields: [email]", "fields: [mail]"))
    result = CliRunner().invoke(main, ["check", "-f", str(path), "--offline"])
    assert result.exit_code == 1
    assert "command 'ChangeEmail' is sent by unknown context 'shiping'" in result.output
    assert "did you mean 'shipping'?" in result.output
    assert "command 'ChangeEmail' takes unknown field Customer.mail" in result.output


# -- NATS: the server refuses what the charter does not let a context send ---------------


def test_on_nats_a_context_may_send_only_the_commands_the_charter_lets_it(
    tmp_path: Path,
) -> None:
    """Under `charter apply`'s permissions: orders sends AppendNote and hears the answer of
    customers (each under its own NATS user); shipping may not send it, and the server
    refuses it at once, in the charter's words."""
    urls = {ctx: f"sqlite:///{tmp_path}/{ctx}.db" for ctx in CONTEXTS}
    path = tmp_path / "charter.yaml"
    path.write_text(SHOP.format(name="guarded", bus="nats://127.0.0.1:4222", **urls))
    with_commands(path)
    applied = CliRunner().invoke(main, ["apply", "-f", str(path)])
    assert applied.exit_code == 0, applied.output
    block = (tmp_path / ".charter" / "nats-auth.conf").read_text()
    assert '"charter.guarded._cmd.customers.AppendNote"' in block
    loaded = charter.model.load(path)
    users = [user_name("guarded", who) for who in ("admin", *CONTEXTS)]
    passwords = {user: "pw" + secrets.token_hex(8) for user in users}
    env = {password_variable(user): password for user, password in passwords.items()}
    with nats_servers.single(extra=block, env=env) as servers:

        def as_user(who: str) -> System:
            user = user_name("guarded", who)
            url = servers.url.replace("nats://", f"nats://{user}:{passwords[user]}@")
            own = tmp_path / f"charter-{who}.yaml"
            own.write_text(path.read_text().replace("nats://127.0.0.1:4222", url))
            return charter.load(own)

        with as_user("admin") as admin:
            assert admin.bus.head("Customer") == 0  # creates the stream
        with as_user("customers") as owner, as_user("orders") as sender:
            ada = customer(owner)
            register(owner)
            with charter.Runner(owner, ["customers"]):
                got = sender.context("orders").send("AppendNote", id=ada, text="hi")
                assert got == {"version": 2}
        with as_user("shipping") as shipping:
            user = user_name("guarded", "shipping")
            bus = NatsBus(shipping.charter.bus, "guarded", explainer(loaded, user))
            with pytest.raises(RefusedError) as refused:
                bus.send_command("shipping", "customers", "AppendNote", "k", b"{}")
            assert (
                "context 'shipping' (NATS user 'guarded_shipping') may not send AppendNote to "
                "'customers'" in str(refused.value)
            )
            assert "the charter lets only orders send it" in str(refused.value)
            with bus:  # what it may send, it sends
                bus.send_command("shipping", "customers", "ChangeEmail", "k", b"{}")  # its own


def _request(system: System, entity_id: str, key: str) -> bytes:
    """AppendNote of `key` as orders sends it, for a test that puts it on the bus itself."""
    fields = {"text": key}
    return request(system.charter, "orders", "AppendNote", key, entity_id, fields)[2]


def _worker(system: System) -> CommandWorker:
    return CommandWorker(
        "customers",
        system.charter,
        system.bus,
        lambda: system.store("customers"),
        system.context("customers").transaction,
        system.handlers["customers"],
    )


def _until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_commands_of_different_records_are_handled_at_once_and_each_records_in_order(
    system: System,
) -> None:
    """A command worker with concurrency: 60 non-idempotent AppendNotes over three
    customers, sent at once, each applied exactly once and each customer's in the order
    sent (a record's commands are handled one after another, records' at once)."""
    register(system)
    ids = [customer(system, f"c{n}@example.com") for n in range(3)]
    orders = system.context("orders")
    with charter.Runner(system, ["customers"], concurrency=4):
        waits = []
        for n in range(20):
            for who in ids:
                _, key, body = request(
                    system.charter, "orders", "AppendNote", f"k{n}-{who}", who, {"text": f"n{n}"}
                )
                waits.append(
                    system.bus.send_command("orders", "customers", "AppendNote", key, body)
                )
        system.signals.notify("commands:customers")
        assert all(wait(30) is not None for wait in waits)
        again = orders.send("AppendNote", id=ids[0], text="n0", key=f"k0-{ids[0]}")
        assert again["version"] == 2, "a key handled before answers as then"
    for who in ids:
        owned = system.context("customers").get("Customer", who)
        assert owned is not None and owned.version == 21
        assert owned.address == "".join(f"n{n};" for n in range(20))


def test_a_batch_of_one_senders_commands_commits_once_each_applied_once(system: System) -> None:
    """Commands of one sender and name taken together are handled in one owner
    transaction, each in a savepoint with its key: a refused one undoes only its own
    change and is recorded as refused; a key twice in the batch is applied once; the
    others commit, once."""
    ran = counting(system)
    ada = customer(system)
    sent = [("k-a", "a"), ("k-b", "b"), ("k-refused", "refuse me"), ("k-c", "c"), ("k-a", "a")]

    def put(key: str, text: str) -> Callable[[float], bytes | None]:
        _, key, body = request(system.charter, "orders", "AppendNote", key, ada, {"text": text})
        return system.bus.send_command("orders", "customers", "AppendNote", key, body)

    waits = [put(key, text) for key, text in sent]
    worker = _worker(system)
    assert worker.step() in (4, 5)  # a bus may keep one waiting per key (SQLite, memory)
    assert all(wait(5) is not None for wait in waits)
    owned = system.context("customers").get("Customer", ada)
    assert owned is not None and owned.address == "a;b;c;", "one change each, the refused undone"
    assert sorted(ran) == ["k-a", "k-b", "k-c", "k-refused"]
    history = [r for r in system.store("customers").outbox(0, 100) if r.entity_id == ada]
    assert [h.version for h in history] == [1, 2, 3, 4]
    again = put("k-refused", "refuse me")
    worker.step()
    answer = again(5)
    assert answer is not None
    spec = system.charter.commands["AppendNote"]
    with pytest.raises(charter.ValidationError, match="not welcome"):
        outcome(system.charter, spec, "k-refused", answer)
    assert sorted(ran) == ["k-a", "k-b", "k-c", "k-refused"], "a refusal is the key's outcome"
