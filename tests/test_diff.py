"""`charter diff` and `charter check --against`: what a charter change breaks, before it is
merged.

The table is the heart of it: each row is BASE changed by small text edits (the old side
too, when the row needs one), the kinds of change it must report, the copies it must name
as broken (every other copy must not be), whom it must tell, and the exit code."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from charter import model
from charter.cli import main
from charter.diff import BREAKING, compare, deprecated_kept
from charter.errors import CharterError

BASE = """\
charter: 1
name: shop
bus: sqlite:///.charter/bus.db
contexts:
  customers: {team: customer-team, store: "sqlite:///.charter/customers.db"}
  orders:    {team: order-team,    store: "sqlite:///.charter/orders.db"}
  shipping:  {team: logistics,     store: "sqlite:///.charter/shipping.db"}
  calendar:  {team: scheduling,    store: "sqlite:///.charter/calendar.db"}
entities:
  Customer:
    owner: customers
    why: creates accounts; keeps e-mail addresses unique
    fields:
      email:    {type: string, unique: true}
      name:     {type: string}
      address:  {type: string, required: false}
      status:   {type: enum, values: [active, suspended, deleted], default: active}
      nickname: {type: string, required: false}
      password_hash: {type: string, private: true}
  Appointment:
    owner: calendar
    fields:
      user_id:   {type: uuid}
      starts_at: {type: timestamp}
      ends_at:   {type: timestamp}
    constraints:
      - no_overlap: {per: [user_id], range: [starts_at, ends_at]}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: order confirmations go to an outdated e-mail address
  shipping_customers:
    in: shipping
    of: Customer
    fields: [name, address, status]
    window: 1m
    breaks: parcels go to an old address
  order_appointments:
    in: orders
    of: Appointment
    fields: [user_id, starts_at]
    window: 10s
    breaks: pickups are booked at the wrong time
"""
COPIES = frozenset({"order_customers", "shipping_customers", "order_appointments"})


def edit(text: str, *pairs: tuple[str, str]) -> str:
    """`text` with each `before` (found exactly once) replaced by its `after`."""
    for before, after in pairs:
        assert text.count(before) == 1, f"{before!r} is not in the text exactly once"
        text = text.replace(before, after)
    return text


@dataclass(frozen=True)
class Case:
    name: str
    new: tuple[tuple[str, str], ...]
    kinds: frozenset[str]  # each must be reported (others may be too)
    breaks: frozenset[str] = frozenset()  # the copies it must name as broken; no other
    informs: frozenset[str] = frozenset()  # copies, or "@context": each must be told
    exit: int = 0
    old: tuple[tuple[str, str], ...] = ()  # edits to BASE for the old side
    says: str = ""  # a phrase the sentences must contain


def case(name: str, *new: tuple[str, str], **kw: object) -> Case:
    kw = {k: frozenset(v) if isinstance(v, set) else v for k, v in kw.items()}
    return Case(name, tuple(new), **kw)  # type: ignore[arg-type]


NAME = ("      name:     {type: string}\n", "")
EMAIL = "      email:    {type: string, unique: true}\n"
ORDER_FIELDS = "fields: [name, email]"
SHIP_FIELDS = "fields: [name, address, status]"
NICKNAME = "      nickname: {type: string, required: false}\n"
OLD_NICKNAME = "      nickname: {type: string, required: false, deprecated: true}\n"
OLD_EMAIL = "      email:    {type: string, unique: true, deprecated: true}\n"
SHIPPING_COPY = """  shipping_customers:
    in: shipping
    of: Customer
    fields: [name, address, status]
    window: 1m
    breaks: parcels go to an old address
"""

CASES = [
    case(
        "a field two copies keep, removed",
        NAME,
        (ORDER_FIELDS, "fields: [email]"),
        (SHIP_FIELDS, "fields: [address, status]"),
        kinds={"field_removed"},
        breaks={"order_customers", "shipping_customers"},
        exit=4,
    ),
    case(
        "a field no copy keeps, removed",
        (NICKNAME, ""),
        kinds={"field_removed"},
        says="(no copy kept it); breaks nobody",
    ),
    case(
        "a private field removed",
        ("      password_hash: {type: string, private: true}\n", ""),
        kinds={"field_removed"},
        says="private",
    ),
    case(
        "a kept field retyped",
        ("address:  {type: string,", "address:  {type: text,"),
        kinds={"field_retyped"},
        breaks={"shipping_customers"},
        exit=4,
    ),
    case(
        "a field no copy keeps, retyped",
        ("nickname: {type: string,", "nickname: {type: text,"),
        kinds={"field_retyped"},
        says="breaks nobody",
    ),
    case(
        "a private field retyped",
        ("password_hash: {type: string,", "password_hash: {type: text,"),
        kinds={"field_retyped"},
    ),
    case(
        "a kept field made private",
        (EMAIL, "      email:    {type: string, unique: true, private: true}\n"),
        (ORDER_FIELDS, "fields: [name]"),
        kinds={"field_made_private"},
        breaks={"order_customers"},
        exit=4,
    ),
    case(
        "a private field made public",
        ("password_hash: {type: string, private: true}", "password_hash: {type: string}"),
        kinds={"field_made_public"},
        informs={"@customers"},
    ),
    case(
        "a kept field made optional",
        (EMAIL, "      email:    {type: string, unique: true, required: false}\n"),
        kinds={"field_made_optional"},
        breaks={"order_customers"},
        exit=4,
        says="nulls may now arrive",
    ),
    case(
        "a default given to a kept field, which makes it optional",
        ("name:     {type: string}", "name:     {type: string, default: anonymous}"),
        kinds={"field_made_optional", "default_changed"},
        breaks={"order_customers", "shipping_customers"},
        exit=4,
        says="a default without required: true makes a field optional",
    ),
    case(
        "a field no copy keeps, made optional",
        ("ends_at:   {type: timestamp}", "ends_at:   {type: timestamp, required: false}"),
        kinds={"field_made_optional"},
    ),
    case(
        "a field made required",
        ("address:  {type: string, required: false}", "address:  {type: string}"),
        kinds={"field_made_required"},
        informs={"@customers"},
    ),
    case(
        "an enum value removed",
        ("values: [active, suspended, deleted]", "values: [active, suspended]"),
        kinds={"enum_values_removed"},
        breaks={"shipping_customers"},
        exit=4,
    ),
    case(
        "an enum value added",
        ("values: [active, suspended, deleted]", "values: [active, suspended, deleted, banned]"),
        kinds={"enum_values_added"},
        informs={"shipping_customers"},
    ),
    case(
        "a kept field no longer unique",
        (EMAIL, "      email:    {type: string}\n"),
        kinds={"unique_removed"},
        informs={"order_customers"},
    ),
    case(
        "an entity removed with its copy",
        (
            BASE[BASE.index("  Appointment:") : BASE.index("copies:")],
            "",
        ),
        (BASE[BASE.index("  order_appointments:") :], ""),
        kinds={"entity_removed"},
        breaks={"order_appointments"},
        exit=4,
    ),
    case(
        "the owner changed",
        ("    owner: customers\n", "    owner: calendar\n"),
        kinds={"owner_changed"},
        breaks={"order_customers", "shipping_customers"},
        informs={"@customers", "@calendar"},
        exit=4,
        says="ownership move",
    ),
    case(
        "a copy's window loosened",
        ("    window: 5s\n", "    window: 30s\n"),
        kinds={"window_loosened"},
        informs={"order_customers"},
        says="loosens from 5s to 30s",
    ),
    case(
        "a copy's window tightened",
        ("    window: 1m\n", "    window: 10s\n"),
        kinds={"window_tightened"},
        informs={"@customers"},
    ),
    case(
        "an optional field added",
        (NICKNAME, NICKNAME + "      phone: {type: string, required: false}\n"),
        kinds={"field_added"},
        says="breaks nobody",
    ),
    case(
        "a required field without default added",
        (NICKNAME, NICKNAME + "      phone: {type: string}\n"),
        kinds={"field_added"},
        informs={"@customers"},
        says="default",
    ),
    case(
        "a copy added",
        (
            SHIPPING_COPY,
            SHIPPING_COPY + "  shipping_appointments:\n    in: shipping\n    of: Appointment\n"
            "    fields: [starts_at]\n    window: 1h\n",
        ),
        kinds={"copy_added"},
        informs={"@calendar"},
    ),
    case(
        "a copy removed",
        (SHIPPING_COPY, ""),
        kinds={"copy_removed"},
        informs={"@customers", "shipping_customers"},
    ),
    case(
        "a copy stops keeping a field",
        (SHIP_FIELDS, "fields: [name, address]"),
        kinds={"copy_field_dropped"},
        says="no copy keeps Customer.status any more",
    ),
    case(
        "a copy starts keeping a field",
        (ORDER_FIELDS, "fields: [name, email, nickname]"),
        kinds={"copy_field_added"},
        informs={"@customers"},
    ),
    case(
        "a field no copy keeps, renamed",
        (NICKNAME, "      alias: {type: string, required: false}\n"),
        kinds={"field_renamed"},
        says="a rename?",
    ),
    case(
        "a kept field renamed",
        (EMAIL, "      mail:    {type: string, unique: true}\n"),
        (ORDER_FIELDS, "fields: [name, mail]"),
        kinds={"field_renamed", "copy_field_added"},
        breaks={"order_customers"},
        exit=4,
        says="order_customers now keeps mail",
    ),
    case(
        "a kept field deprecated",
        (EMAIL, "      email:    {type: string, unique: true, deprecated: true}\n"),
        kinds={"field_deprecated"},
        informs={"order_customers"},
    ),
    case(
        "a deprecated field no copy keeps, removed",
        (OLD_NICKNAME, ""),
        old=((NICKNAME, OLD_NICKNAME),),
        kinds={"field_removed"},
        says="deprecated and no copy kept it",
    ),
    case(
        "a deprecated field still kept, removed",
        (OLD_EMAIL, ""),
        (ORDER_FIELDS, "fields: [name]"),
        old=((EMAIL, OLD_EMAIL),),
        kinds={"field_removed"},
        breaks={"order_customers"},
        exit=4,
        says="deprecated, but still kept",
    ),
    case(
        "a context's team changed",
        ("team: logistics", "team: parcels"),
        kinds={"team_changed"},
        informs={"@shipping"},
        says="from logistics to parcels",
    ),
    case(
        "a context's store moved",
        ('"sqlite:///.charter/orders.db"', '"sqlite:///.charter/orders2.db"'),
        kinds={"store_changed"},
        informs={"@orders"},
    ),
    case(
        "a constraint removed",
        (
            "    constraints:\n      - no_overlap: {per: [user_id], range: [starts_at, ends_at]}\n",
            "",
        ),
        kinds={"constraint_removed"},
    ),
    case(
        "an entity added",
        ("copies:\n", "  Invoice:\n    owner: orders\n    fields:\n      total: number\ncopies:\n"),
        kinds={"entity_added"},
    ),
    case(
        "a copy keeping a deprecated field added",
        (
            SHIPPING_COPY,
            SHIPPING_COPY + "  mail_customers:\n    in: shipping\n    of: Customer\n"
            "    fields: [email]\n    window: 1h\n",
        ),
        old=((EMAIL, OLD_EMAIL),),
        kinds={"copy_added"},
        informs={"@customers"},
        says="it keeps deprecated email",
    ),
    case(
        "an entity's visibility made contract",
        ("    owner: customers\n", "    owner: customers\n    visibility: contract\n"),
        kinds={"visibility_changed"},
        informs={"@customers", "order_customers", "shipping_customers"},
        says="publishes each record's newest event again there",
    ),
    case(
        "the charter's visibility made public again",
        ("visibility: contract\n", "visibility: public\n"),
        old=(("name: shop\n", "name: shop\nvisibility: contract\n"),),
        kinds={"visibility_changed"},
        informs={"@customers", "@calendar", "order_customers", "order_appointments"},
        says="from contract to public",
    ),
]


def named(parties: object) -> set[str]:
    return {p.copy or f"@{p.context}" for p in parties}  # type: ignore[attr-defined]


def charters(row: Case) -> tuple[model.Charter, model.Charter]:
    old = edit(BASE, *row.old)
    return model.loads(old, "old.yaml"), model.loads(edit(old, *row.new), "new.yaml")


def test_the_table_has_at_least_twenty_rows() -> None:
    assert len(CASES) >= 20
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("row", CASES, ids=[c.name for c in CASES])
def test_each_change_names_the_copies_it_breaks_and_no_other(row: Case, tmp_path: Path) -> None:
    old, new = charters(row)
    changes = compare(old, new)
    kinds = {c.kind for c in changes}
    assert row.kinds <= kinds, kinds
    broken = set().union(*(named(c.breaks) for c in changes))
    assert broken == row.breaks  # must name these
    assert not broken & (COPIES - row.breaks)  # and must not name any other copy
    told = set().union(*(named(c.informs) for c in changes))
    assert row.informs <= told, told
    sentences = " | ".join(c.sentence for c in changes)
    assert row.says in sentences
    assert any(c.breaking for c in changes) == (row.exit == 4)
    for change in changes:  # a breaking change always names who, or why nobody is named
        assert change.breaks or change.severity != BREAKING or change.kind == "owner_changed"
        assert change.breaking or "breaks nobody" in change.sentence
    # the command says the same, with the exit code
    (tmp_path / "old.yaml").write_text(edit(BASE, *row.old))
    (tmp_path / "new.yaml").write_text(edit(edit(BASE, *row.old), *row.new))
    result = diff(tmp_path, "old.yaml", "new.yaml", "--format", "json")
    assert result.exit_code == row.exit, result.output
    doc = json.loads(result.output)
    assert doc["breaking"] == sum(c.breaking for c in changes)
    assert {c["kind"] for c in doc["changes"]} == kinds


def test_a_broken_copy_comes_with_its_context_team_and_breaks_text() -> None:
    old, new = charters(CASES[0])
    [removed] = [c for c in compare(old, new) if c.kind == "field_removed"]
    assert removed.entity == "Customer" and removed.field == "name"
    [ship] = [p for p in removed.breaks if p.copy == "shipping_customers"]
    assert (ship.context, ship.team, ship.breaks) == (
        "shipping",
        "logistics",
        "parcels go to an old address",
    )


def test_no_change_is_no_change() -> None:
    charter = model.loads(BASE, "charter.yaml")
    assert compare(charter, charter) == []


def test_the_line_is_in_the_new_file_or_the_old_one_when_gone() -> None:
    old, new = charters(CASES[0])  # name removed: at its entity in the new file
    [removed] = [c for c in compare(old, new) if c.kind == "field_removed"]
    assert (removed.line, removed.in_old) == (new.entities["Customer"].line, False)
    entity_gone = next(c for c in CASES if c.name == "an entity removed with its copy")
    old, new = charters(entity_gone)
    [gone] = [c for c in compare(old, new) if c.kind == "entity_removed"]
    assert (gone.line, gone.in_old) == (old.entities["Appointment"].line, True)
    retyped = next(c for c in CASES if c.name == "a kept field retyped")
    old, new = charters(retyped)
    [change] = compare(old, new)
    assert change.line == new.entities["Customer"].fields["address"].line


# the command


def diff(folder: Path, *args: str) -> Result:
    """`charter diff …` run in `folder` (relative paths are the user's)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return CliRunner().invoke(main, ["diff", *args])


def write(folder: Path, old: str, new: str) -> None:
    (folder / "old.yaml").write_text(old)
    (folder / "new.yaml").write_text(new)


def test_text_names_each_change_and_whom_it_breaks(tmp_path: Path) -> None:
    write(tmp_path, BASE, edit(BASE, *CASES[0].new))
    result = diff(tmp_path, "old.yaml", "new.yaml")
    assert result.exit_code == 4, result.output
    assert "BREAKING Customer.name removed" in result.output
    assert (
        "breaks shipping_customers in shipping (logistics): parcels go to an old address"
        in result.output
    )
    assert "1 breaking change" in result.output


def test_nothing_breaks_exit_0(tmp_path: Path) -> None:
    write(tmp_path, BASE, edit(BASE, ("    window: 5s\n", "    window: 30s\n")))
    result = diff(tmp_path, "old.yaml", "new.yaml")
    assert result.exit_code == 0, result.output
    assert "tells order_customers in orders (order-team)" in result.output
    same = diff(tmp_path, "old.yaml", "old.yaml")
    assert same.exit_code == 0 and "no changes" in same.output


def test_github_format_is_workflow_commands_on_the_new_files_lines(tmp_path: Path) -> None:
    new = edit(
        BASE,
        ("address:  {type: string,", "address:  {type: text,"),
        ("breaks: parcels go to an old address", "breaks: '5% of parcels, lost: returned'"),
        ("    window: 5s\n", "    window: 30s\n"),
    )
    write(tmp_path, BASE, new)
    result = diff(tmp_path, "old.yaml", "new.yaml", "--format", "github")
    assert result.exit_code == 4
    lines = result.output.splitlines()
    line = new.splitlines().index("      address:  {type: text, required: false}") + 1
    error = next(x for x in lines if x.startswith("::error "))
    props, message = error[len("::error ") :].split("::", 1)
    assert props == f"file=new.yaml,line={line},title=charter diff%3A field_retyped"
    assert "breaks shipping_customers in shipping (logistics): 5%25 of parcels, lost" in message
    assert any(x.startswith("::warning file=new.yaml,line=") for x in lines)  # the window
    assert any(x.startswith("::notice ") for x in lines)  # the breaks text changed
    assert lines[-1].startswith("charter diff old.yaml → new.yaml: ")


def test_json_format(tmp_path: Path) -> None:
    write(tmp_path, BASE, edit(BASE, *CASES[0].new))
    doc = json.loads(diff(tmp_path, "old.yaml", "new.yaml", "--format", "json").output)
    assert (doc["old"], doc["new"], doc["breaking"]) == ("old.yaml", "new.yaml", 1)
    first = doc["changes"][0]  # breaking changes come first
    assert first["kind"] == "field_removed" and first["severity"] == "breaking"
    assert first["file"] == "new.yaml"
    assert {"copy": "order_customers", "context": "orders", "team": "order-team"}.items() <= (
        first["breaks"][0].items()
    )


def test_a_bad_side_is_reported_without_a_traceback(tmp_path: Path) -> None:
    write(tmp_path, BASE, BASE.replace("window: 5s", "window: soon"))
    result = diff(tmp_path, "old.yaml", "new.yaml")
    assert result.exit_code == 1
    assert "new.yaml:" in result.output and "not a duration" in result.output
    missing = diff(tmp_path, "nope.yaml", "new.yaml")
    assert missing.exit_code == 1 and "cannot read the charter" in missing.output
    assert isinstance(result.exception, SystemExit)


def test_the_old_charter_loads_without_its_stores(tmp_path: Path) -> None:
    """Stores named by relative paths that do not exist (nor their folders): nothing is
    opened or created for either side."""
    old = BASE.replace(".charter/", "gone/away/")
    write(tmp_path, old, old.replace("window: 5s", "window: 6s"))
    assert diff(tmp_path, "old.yaml", "new.yaml").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.yaml", "old.yaml"]


# git:REF


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose charter (in a subfolder) is BASE at HEAD~1 and at HEAD with a
    breaking change committed; the work tree holds a third, safe, version."""
    git(tmp_path, "init", "-q")
    folder = tmp_path / "services"
    folder.mkdir()
    (folder / "charter.yaml").write_text(BASE)
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "base")
    (folder / "charter.yaml").write_text(edit(BASE, ("    window: 5s\n", "    window: 30s\n")))
    return folder


def test_git_ref_is_the_committed_version_of_the_same_file(repo: Path) -> None:
    result = diff(repo, "git:HEAD", "charter.yaml")
    assert result.exit_code == 0, result.output
    assert "git:HEAD:services/charter.yaml → charter.yaml" in result.output
    assert "window_loosened" in diff(repo, "git:HEAD", "--format", "json").output  # NEW: -f
    (repo / "charter.yaml").write_text(edit(BASE, *CASES[0].new))
    broken = diff(repo.parent, "git:HEAD", "services/charter.yaml", "--format", "github")
    assert broken.exit_code == 4
    assert "::error file=services/charter.yaml,line=" in broken.output


def test_git_ref_can_name_its_own_path_and_both_sides(repo: Path) -> None:
    (repo / "charter.yaml").write_text(edit(BASE, *CASES[0].new))
    git(repo, "commit", "-q", "-am", "break")
    result = diff(repo, "git:HEAD~1", "git:HEAD", "--format", "json")
    assert result.exit_code == 4, result.output
    doc = json.loads(result.output)
    assert (doc["old"], doc["new"]) == (
        "git:HEAD~1:services/charter.yaml",
        "git:HEAD:services/charter.yaml",
    )
    other = diff(repo.parent, "git:HEAD~1:services/charter.yaml", "services/charter.yaml")
    assert other.exit_code == 4


@pytest.mark.parametrize(
    ("old", "says"),
    [
        ("git:nosuchref", "git knows no revision 'nosuchref'"),
        ("git:HEAD:services/other.yaml", "services/other.yaml is not in revision 'HEAD'"),
        ("git:", "names no revision"),
    ],
)
def test_git_errors_are_clear(repo: Path, old: str, says: str) -> None:
    (repo / "other.yaml").write_text(BASE)  # not committed
    result = diff(repo.parent, old, "services/other.yaml")
    assert result.exit_code == 1, result.output
    assert says in result.output
    assert isinstance(result.exception, SystemExit)  # no traceback


def test_not_in_git(tmp_path: Path) -> None:
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "charter.yaml").write_text(BASE)
    if _in_git(outside):
        pytest.skip("the temporary folder is inside a git repository")
    result = diff(outside, "git:HEAD")
    assert result.exit_code == 1
    assert "is not in a git repository" in result.output


def _in_git(folder: Path) -> bool:
    done = subprocess.run(["git", "rev-parse"], cwd=folder, capture_output=True, check=False)
    return done.returncode == 0


def test_a_bad_charter_at_ref_is_named_by_its_revision(repo: Path) -> None:
    (repo / "charter.yaml").write_text(BASE.replace("window: 5s", "window: soon"))
    git(repo, "commit", "-q", "-am", "bad")
    (repo / "charter.yaml").write_text(BASE)
    result = diff(repo, "git:HEAD")
    assert result.exit_code == 1
    assert "git:HEAD:services/charter.yaml:" in result.output
    assert "not a duration" in result.output


# charter check


def check(folder: Path, *args: str) -> Result:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        return CliRunner().invoke(main, ["check", "--offline", *args])


def test_check_against_a_ref(repo: Path) -> None:
    safe = check(repo, "--against", "HEAD")
    assert safe.exit_code == 0, safe.output
    assert "is valid" in safe.output and "window of copy order_customers" in safe.output
    (repo / "charter.yaml").write_text(edit(BASE, *CASES[0].new))
    broken = check(repo, "--against", "git:HEAD")
    assert broken.exit_code == 4
    assert "BREAKING Customer.name removed" in broken.output
    doc = json.loads(check(repo, "--against", "HEAD", "--format", "json").output)
    assert doc["breaking"] == 1  # the changes only: no summary around them
    bad = check(repo, "--against", "nosuchref")
    assert bad.exit_code == 1 and "git knows no revision" in bad.output


def test_check_warns_about_a_copy_keeping_a_deprecated_field(tmp_path: Path) -> None:
    text = edit(BASE, (EMAIL, "      email:    {type: string, unique: true, deprecated: true}\n"))
    (tmp_path / "charter.yaml").write_text(text)
    charter = model.loads(text)
    assert [(c.name, f.name) for c, f in deprecated_kept(charter)] == [("order_customers", "email")]
    assert charter.entities["Customer"].fields["email"].deprecated
    result = check(tmp_path)
    assert result.exit_code == 0, result.output
    line = text.splitlines().index("  order_customers:") + 1
    assert f"charter.yaml:{line}: copy order_customers keeps Customer.email" in result.output
    assert "email (unique) (deprecated)" in result.output


def test_deprecated_must_be_a_field_option(tmp_path: Path) -> None:
    text = edit(BASE, ("    owner: calendar\n", "    owner: calendar\n    deprecated: true\n"))
    with pytest.raises(CharterError, match="unknown key 'deprecated'"):
        model.loads(text)
