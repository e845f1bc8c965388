"""`charter export asyncapi | jsonschema | odcs`: each export is valid against its
specification's official JSON Schema (vendored in tests/schemas/, resolved offline), holds
no private field, is the same text for the same charter, and is true to the wire: the
events and copy rows of a running system fit the schemas it exports."""

from __future__ import annotations

import copy as copying
import json
import re
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012
from ruamel.yaml import YAML

from charter import exports, model
from charter.cli import main
from charter.demo import SHOP_CHARTER
from charter.lanes import partition
from charter.runner import Runner
from charter.system import System
from tests.backends import CONTEXTS, NATS, POSTGRES
from tests.conftest import SHOP
from tests.test_extras import shop, tried, without_drivers

SCHEMAS = Path(__file__).resolve().parent / "schemas"
PRIVATE = "password_hash"  # the shop's one private field


def _asyncapi_validator() -> jsonschema.protocols.Validator:
    """The official AsyncAPI 3.0.0 schema: one bundle whose definitions are its parts, each
    under its own $id (and JSON Schema draft-07, which it builds on), so every $ref resolves
    from the file: nothing is fetched."""
    bundle = json.loads((SCHEMAS / "asyncapi" / "asyncapi-3.0.0.json").read_text())
    parts = [
        (uri, Resource.from_contents(part, default_specification=DRAFT7))
        for uri, part in bundle["definitions"].items()
    ]
    registry: Registry[Any] = Registry().with_resources(parts)
    cls = jsonschema.validators.validator_for(bundle)
    return cls(bundle, registry=registry, format_checker=cls.FORMAT_CHECKER)


def _odcs_validator() -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / "odcs" / "odcs-json-schema-v3.1.0.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


# uuid and date-time checked for real (jsonschema checks them only with extra packages)
FORMATS = jsonschema.FormatChecker()
_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    return not isinstance(value, str) or str(uuid.UUID(value)) == value.lower()


@FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or _DATE_TIME.match(value) is not None


ASYNCAPI = _asyncapi_validator()
ODCS = _odcs_validator()


def _charter(tmp_path: Path, kind: str) -> model.Charter:
    """The shop of the tests (on SQLite, memory, or PostgreSQL + NATS) or the demo's."""
    path = tmp_path / "charter.yaml"
    if kind == "demo":
        return model.loads(SHOP_CHARTER, path)
    if kind == "sqlite":
        urls = {c: f"sqlite:///{tmp_path}/{c}.db" for c in ("customers", "orders", "shipping")}
        urls |= {"calendar": f"sqlite:///{tmp_path}/calendar.db", "bus": f"sqlite:///{tmp_path}/b"}
    elif kind == "memory":
        urls = {c: f"memory://x/{c}" for c in ("customers", "orders", "shipping", "calendar")}
        urls["bus"] = "memory://x/bus"
    else:  # the URLs are only read: nothing is opened
        urls = {c: f"{POSTGRES}?schema=s_{c}" for c in ("customers", "orders", "shipping")}
        urls["calendar"] = f"sqlite:///{tmp_path}/calendar.db"
        urls["bus"] = f"{NATS},127.0.0.1:4223?replicas=3&partitions=8"
    return model.loads(SHOP.format(name="shop", **urls), path)


KINDS = ("demo", "sqlite", "memory", "postgres+nats")


def _errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    found = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in found]


@pytest.mark.parametrize("kind", KINDS)
def test_asyncapi_is_valid_against_the_official_schema(tmp_path: Path, kind: str) -> None:
    [doc] = exports.documents(_charter(tmp_path, kind), "asyncapi")
    assert _errors(ASYNCAPI, doc) == []
    assert doc["asyncapi"] == "3.0.0"


@pytest.mark.parametrize("kind", KINDS)
def test_each_odcs_contract_is_valid_against_the_official_schema(tmp_path: Path, kind: str) -> None:
    docs = exports.documents(_charter(tmp_path, kind), "odcs")
    assert [d["name"] for d in docs] == ["order_customers", "shipping_customers"]
    for doc in docs:
        assert _errors(ODCS, doc) == [], doc["name"]


@pytest.mark.parametrize("kind", KINDS)
def test_jsonschema_is_a_valid_2020_12_schema(tmp_path: Path, kind: str) -> None:
    [doc] = exports.documents(_charter(tmp_path, kind), "jsonschema")
    jsonschema.Draft202012Validator.check_schema(doc)
    assert sorted(doc["$defs"]) == [
        "Appointment",
        "Customer",
        "Order",
        "copy.order_customers",
        "copy.shipping_customers",
    ]


def test_the_official_schemas_refuse_a_broken_export(tmp_path: Path) -> None:
    """The validation can fail: a wrong action, a payload schema that is no schema, a
    contract without its SLA's value are each refused."""
    c = _charter(tmp_path, "demo")
    [doc] = exports.documents(c, "asyncapi")
    wrong = copying.deepcopy(doc)
    wrong["operations"]["Customer.send"]["action"] = "publish"
    assert _errors(ASYNCAPI, wrong)
    wrong = copying.deepcopy(doc)
    wrong["components"]["schemas"]["Customer"]["properties"]["name"]["type"] = "text"
    assert _errors(ASYNCAPI, wrong)
    wrong = copying.deepcopy(doc)
    wrong["servers"]["sqlite"].pop("protocol")
    assert _errors(ASYNCAPI, wrong)
    [contract, _] = exports.documents(c, "odcs")
    wrong = copying.deepcopy(contract)
    wrong["slaProperties"][0].pop("value")
    assert _errors(ODCS, wrong)
    wrong = copying.deepcopy(contract)
    wrong["schema"][0]["properties"][0]["logicalType"] = "uuid"
    assert _errors(ODCS, wrong)
    [schema] = exports.documents(c, "jsonschema")
    schema["$defs"]["Customer"]["required"] = "email"
    with pytest.raises(jsonschema.SchemaError):
        jsonschema.Draft202012Validator.check_schema(schema)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def _pointer(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_every_reference_resolves_inside_the_asyncapi_document(tmp_path: Path) -> None:
    """What a JSON Schema cannot check: each $ref points at something in the document, and
    each operation's messages are messages of its channel (AsyncAPI 3.0 requires it)."""
    [doc] = exports.documents(_charter(tmp_path, "postgres+nats"), "asyncapi")
    refs = _refs(doc)
    assert refs
    for ref in refs:
        assert _pointer(doc, ref) is not None
    for name, operation in doc.get("operations", {}).items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


def test_the_asyncapi_document_says_who_sends_and_who_receives(tmp_path: Path) -> None:
    [doc] = exports.documents(_charter(tmp_path, "postgres+nats"), "asyncapi")
    ops = doc["operations"]
    assert sorted(ops) == [
        "Appointment.send",
        "Customer.send",
        "Order.send",
        "order_customers.receive",
        "shipping_customers.receive",
    ]
    assert ops["Customer.send"]["action"] == "send"
    assert ops["Customer.send"]["x-charter-context"] == "customers"
    receive = ops["order_customers.receive"]
    assert (receive["action"], receive["x-charter-context"]) == ("receive", "orders")
    assert receive["x-charter-window-seconds"] == 5
    schemas = doc["components"]["schemas"]
    assert list(schemas["copy.order_customers"]["properties"]) == ["name", "email"]
    assert "additionalProperties" not in schemas["copy.order_customers"]  # it ignores others
    assert list(schemas["Customer"]["properties"]) == ["email", "name", "address", "status"]
    assert schemas["Customer"]["additionalProperties"] is False
    assert schemas["Customer"]["properties"]["address"]["type"] == ["string", "null"]
    assert schemas["Appointment"]["properties"]["starts_at"]["format"] == "date-time"
    assert schemas["Order"]["properties"]["customer_id"]["format"] == "uuid"
    assert doc["channels"]["Customer"]["address"] == "charter.shop.Customer.{partition}"
    assert doc["channels"]["Customer"]["parameters"]["partition"]["enum"] == [
        str(p) for p in range(8)
    ]
    assert sorted(doc["servers"]) == ["nats-1", "nats-2"]
    assert doc["servers"]["nats-1"] == {
        "host": "127.0.0.1:4222",
        "protocol": "nats",
        "title": "NATS JetStream",
        "description": "stream CHARTER_SHOP, 3 replicas, 8 partitions per entity",
    }


def test_an_odcs_contract_holds_the_owner_the_team_the_fields_and_the_window(
    tmp_path: Path,
) -> None:
    [contract] = exports.documents(_charter(tmp_path, "postgres+nats"), "odcs", "order_customers")
    assert contract["team"]["name"] == "customer-team"
    assert contract["domain"] == "customers"
    [table] = contract["schema"]
    assert [p["name"] for p in table["properties"]] == [
        "id",
        "version",
        "name",
        "email",
        "synced_at",
    ]
    assert table["properties"][0]["primaryKey"] is True
    assert table["properties"][3]["unique"] is True  # email
    [sla] = contract["slaProperties"]
    assert (sla["property"], sla["value"], sla["unit"]) == ("latency", 5, "s")
    assert contract["servers"] == [
        {
            "server": "orders",
            "type": "postgresql",
            "host": "127.0.0.1",
            "port": 5432,
            "database": "test",
            "schema": "s_orders",
        }
    ]
    [contract] = exports.documents(_charter(tmp_path, "sqlite"), "odcs", "shipping_customers")
    assert contract["servers"][0]["path"] == "shipping.db"  # beside the charter: relative
    assert contract["slaProperties"][0]["value"] == 60


@pytest.mark.parametrize("kind", KINDS)
def test_no_private_field_appears_in_any_export(tmp_path: Path, kind: str) -> None:
    c = _charter(tmp_path, kind)
    assert PRIVATE in c.entities["Customer"].fields
    for what in exports.KINDS:
        for fmt in exports.FORMATS:
            assert PRIVATE not in exports.render(exports.documents(c, what), fmt)


@pytest.mark.parametrize("what", exports.KINDS)
def test_yaml_and_json_are_the_same_document_and_the_same_text_each_time(
    tmp_path: Path, what: str
) -> None:
    """Deterministic: the same charter gives the same text, from any folder (a store file
    beside the charter is named relative to it)."""
    first, second = tmp_path / "a", tmp_path / "b"
    texts = []
    for folder in (first, second):
        folder.mkdir()
        c = _charter(folder, "sqlite")
        texts.append(exports.render(exports.documents(c, what), "yaml"))
        as_json = json.loads(exports.render(exports.documents(c, what), "json"))
        loaded = list(YAML(typ="safe", pure=True).load_all(texts[-1]))
        assert (loaded if len(loaded) > 1 else loaded[0]) == as_json
    assert texts[0] == texts[1]


def test_a_changed_contract_has_a_new_version(tmp_path: Path) -> None:
    c = _charter(tmp_path, "demo")
    text = SHOP_CHARTER.replace("window: 5s", "window: 10s")
    changed = model.loads(text, tmp_path / "charter.yaml")
    before = {d["name"]: d["version"] for d in exports.documents(c, "odcs")}
    after = {d["name"]: d["version"] for d in exports.documents(changed, "odcs")}
    assert before["order_customers"] != after["order_customers"]
    assert before["shipping_customers"] == after["shipping_customers"]
    versions = [exports.documents(x, "asyncapi")[0]["info"]["version"] for x in (c, changed)]
    assert versions[0] != versions[1]


def _validator(doc: dict[str, Any], ref: str, spec: Any) -> jsonschema.protocols.Validator:
    """A validator for the schema at `ref` inside the exported `doc`."""
    resource = Resource.from_contents(doc, default_specification=spec)
    registry: Registry[Any] = Registry().with_resource("urn:export", resource)
    cls = jsonschema.Draft7Validator if spec is DRAFT7 else jsonschema.Draft202012Validator
    schema = {"$ref": f"urn:export{ref}"}
    return cls(schema, registry=registry, format_checker=FORMATS)


def _json(value: object) -> object:
    """A row's value as JSON holds it: a datetime (PostgreSQL's synced_at) in ISO 8601."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(type(value))


def test_the_events_and_rows_of_a_running_system_fit_the_exports(shop: System) -> None:
    """On every backend: each CloudEvent the owner published fits the AsyncAPI message of
    its entity and of each copy; each copy row fits the JSON Schema of its copy. On NATS
    each event travels on the channel address the document names."""
    with shop.context("customers").transaction(actor="support:ada") as tx:
        ada = tx.create("Customer", email="ada@example.com", name="Ada", password_hash="x")
        bob = tx.create("Customer", email="bob@example.com", name="Bob", password_hash="y")
    with shop.context("customers").transaction() as tx:
        tx.update("Customer", ada.id, address="1 Mill Lane", status="suspended")
        tx.delete("Customer", bob.id)
    with shop.context("calendar").transaction() as tx:
        tx.create(
            "Appointment",
            user_id=ada.id,
            starts_at="2030-01-07T08:00:00Z",
            ends_at="2030-01-07T10:00:00+01:00",
        )
    with Runner(shop) as runner:
        assert runner.wait_until_synced()
    [api] = exports.documents(shop.charter, "asyncapi")
    [schemas] = exports.documents(shop.charter, "jsonschema")
    checks = {
        name: _validator(api, f"#/components/schemas/{name}", DRAFT7)
        for name in (
            "Customer.event",
            "copy.order_customers.event",
            "copy.shipping_customers.event",
        )
    }
    owner = shop.store("customers")
    events = [json.loads(r.body) for i in (ada.id, bob.id) for r in owner.history("Customer", i)]
    assert [e["type"] for e in events] == [
        "Customer.created",
        "Customer.updated",
        "Customer.created",
        "Customer.deleted",
    ]
    for event in events:
        for name, check in checks.items():
            assert _errors(check, event) == [], (name, event)
    check = _validator(api, "#/components/schemas/Appointment.event", DRAFT7)
    [(appointment, _)] = [
        (json.loads(r.body), r)
        for r in shop.store("calendar").outbox(0, 10)
        if r.entity == "Appointment"
    ]
    assert _errors(check, appointment) == []
    for copy in ("order_customers", "shipping_customers"):
        spec = shop.charter.copies[copy]
        rows = list(shop.store(spec.context).copy_rows(spec))
        assert len(rows) == 1
        row_check = _validator(schemas, f"#/$defs/copy.{copy}", DRAFT202012)
        assert _errors(row_check, json.loads(json.dumps(rows[0], default=_json))) == []
    wrong = dict(events[0], data={**events[0]["data"], PRIVATE: "x"})
    assert _errors(checks["Customer.event"], wrong)  # the owner's message is closed
    assert not _errors(checks["copy.order_customers.event"], wrong)  # a reader ignores more
    assert _errors(checks["Customer.event"], dict(events[0], subject="not-an-id"))
    assert _errors(checks["Customer.event"], dict(events[0], time="2030-01-07 08:00"))
    if shop.charter.bus.startswith("nats://"):
        bus: Any = shop.bus
        address = api["channels"]["Customer"]["address"]
        for event in events:
            subject = address.replace(
                "{partition}", str(partition(event["subject"], bus.partitions))
            )
            assert subject == bus._subject("Customer", event["subject"])


def _cli(tmp_path: Path, *args: str) -> Any:
    path = tmp_path / "charter.yaml"
    if not path.exists():
        path.write_text(SHOP_CHARTER)
    return CliRunner().invoke(main, ["export", *args, "-f", str(path)])


def test_the_command_prints_or_writes_each_export(tmp_path: Path) -> None:
    c = model.loads(SHOP_CHARTER, tmp_path / "charter.yaml")
    result = _cli(tmp_path, "asyncapi")
    assert result.exit_code == 0, result.output
    assert result.output == exports.render(exports.documents(c, "asyncapi"), "yaml")
    result = _cli(tmp_path, "jsonschema")  # JSON by default: JSON Schema is read as JSON
    assert json.loads(result.output) == exports.documents(c, "jsonschema")[0]
    target = tmp_path / "order_customers.odcs.json"
    result = _cli(tmp_path, "odcs", "--copy", "order_customers", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert json.loads(target.read_text()) == exports.documents(c, "odcs", "order_customers")[0]
    result = _cli(tmp_path, "odcs", "--format", "json")
    assert [d["name"] for d in json.loads(result.output)] == [
        "order_customers",
        "shipping_customers",
    ]
    result = _cli(tmp_path, "odcs")
    assert result.output.count("apiVersion: v3.1.0") == 2 and "\n---\n" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("odcs", "--copy", "order_customer"),
            "no copy 'order_customer' in the charter; did you mean",
        ),
        (("asyncapi", "--copy", "order_customers"), "only an odcs export is per copy"),
    ],
)
def test_the_command_says_what_is_wrong(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = _cli(tmp_path, *args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_bad_charter_or_an_unwritable_file_is_a_message(tmp_path: Path) -> None:
    (tmp_path / "charter.yaml").write_text("charter: 1\nname: x\ncontexts: {a: {}}\n")
    result = _cli(tmp_path, "asyncapi")
    assert result.exit_code == 1 and "has no team" in result.output
    (tmp_path / "charter.yaml").write_text(SHOP_CHARTER)
    result = _cli(tmp_path, "asyncapi", "-o", str(tmp_path / "missing" / "x.yaml"))
    assert result.exit_code != 0 and "Could not open file" in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)


def test_exports_need_no_driver_but_the_nats_subjects(tmp_path: Path) -> None:
    """From the file alone: a charter on PostgreSQL and NATS exports, and writes models,
    without psycopg or nats-py; only AsyncAPI asks NATS's own names of its subjects, and
    without nats-py it names the extra to install."""
    shop(tmp_path, POSTGRES + "?schema=extras_{name}", NATS)
    for command in (
        ["export", "jsonschema"],
        ["export", "odcs"],
        ["codegen", "--context", "orders"],
    ):
        result = without_drivers(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert tried(result) == "[]", command
    result = without_drivers("export", "asyncapi", cwd=tmp_path)
    assert result.returncode == 1
    assert "pip install 'charter[nats]'" in result.stderr
    assert "Traceback" not in result.stderr
    shop(tmp_path, POSTGRES + "?schema=extras_{name}", "sqlite:///.charter/bus.db")
    result = without_drivers("export", "asyncapi", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert tried(result) == "[]"


def test_numbers_as_defaults_export_as_yaml(tmp_path: Path) -> None:
    """The charter's loader reads `default: 0` as ruamel's ScalarInt, which the safe YAML
    dumper could not write (a traceback from `charter export asyncapi`)."""
    path = tmp_path / "charter.yaml"
    path.write_text(
        SHOP.format(
            name="shop", bus="sqlite:///bus.db", **{c: f"sqlite:///{c}.db" for c in CONTEXTS}
        ).replace(
            "name:    {type: string}",
            "name:    {type: string}\n      visits:  {type: integer, default: 0}\n"
            "      score:   {type: number, default: 1.5}",
        )
    )
    for kind in ("asyncapi", "jsonschema", "odcs"):
        result = CliRunner().invoke(main, ["export", kind, "-f", str(path), "--format", "yaml"])
        assert result.exit_code == 0, result.output
    doc = YAML(typ="safe").load(
        CliRunner()
        .invoke(main, ["export", "jsonschema", "-f", str(path), "--format", "yaml"])
        .output
    )
    fields = doc["$defs"]["Customer"]["properties"]
    assert fields["visits"]["default"] == 0 and fields["score"]["default"] == 1.5
