"""The charter file: loading, validation (every problem, with its line and a hint) and
`charter check`.

Every bad charter here is the DESIGN.md example (GOOD) changed by a small text edit, and
every expected line number is found by searching the edited text for the offending line,
so the tests read like the mistakes they describe.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from charter import model
from charter.cli import main
from charter.errors import CharterError, Problem

# The example from DESIGN.md, with the `calendar` context it needs to be valid.
GOOD = """\
charter: 1
name: shop
bus: sqlite:///.charter/bus.db         # the embedded default
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
      email:   {type: string, unique: true}
      name:    {type: string}
      address: {type: string, required: false}
      status:  {type: enum, values: [active, suspended, deleted], default: active}
      password_hash: {type: string, private: true}   # never leaves the owner
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
"""

FILE = "charter.yaml"


# --- helpers ---------------------------------------------------------------------------


def edit(old: str, new: str, text: str = GOOD) -> str:
    """`text` with the one occurrence of `old` replaced by `new`."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def lines_of(text: str, needle: str) -> list[int]:
    """The 1-based numbers of every line that contains `needle`."""
    return [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]


def line_of(text: str, needle: str) -> int:
    """The 1-based number of the one line that contains `needle`."""
    found = lines_of(text, needle)
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


def problems(text: str) -> list[Problem]:
    with pytest.raises(CharterError) as caught:
        model.loads(text, FILE)
    found = caught.value.problems
    assert found, "CharterError without problems"
    assert all(p.file == FILE for p in found)
    return found


def only_problem(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def check(path: Path, columns: int = 1000) -> Result:
    """`charter check -f path` with a console `columns` wide (wide: no table wrapping)."""
    runner = CliRunner(env={"COLUMNS": str(columns)})
    return runner.invoke(main, ["check", "-f", str(path)])


def cells(output: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in output.splitlines():
        row = [c.strip() for c in line.split("│")[1:-1]]
        if row and row[0] == first:
            return row
    raise AssertionError(f"no table row for {first!r} in:\n{output}")


# --- the baseline ----------------------------------------------------------------------


def test_design_example_is_valid() -> None:
    charter = model.loads(GOOD, FILE)
    assert charter.name == "shop"
    assert list(charter.contexts) == ["customers", "orders", "shipping", "calendar"]
    assert charter.contexts["shipping"].team == "logistics"
    assert charter.entities["Customer"].owner == "customers"
    assert charter.entities["Customer"].public_names == ("email", "name", "address", "status")
    assert charter.entities["Customer"].fields["password_hash"].private
    overlap = charter.entities["Appointment"].constraints[0]
    assert (overlap.per, overlap.start, overlap.end) == (("user_id",), "starts_at", "ends_at")
    copy = charter.copies["order_customers"]
    assert (copy.context, copy.of, copy.fields, copy.window_s) == (
        "orders",
        "Customer",
        ("name", "email"),
        5.0,
    )
    assert copy.line == line_of(GOOD, "order_customers:")


def test_load_reads_the_file_and_resolves_stores_next_to_it(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(GOOD)
    charter = model.load(path)
    store = charter.contexts["customers"].store
    assert store == f"sqlite:///{(tmp_path / '.charter' / 'customers.db').resolve()}"
    assert charter.path == path


def test_load_reports_problems_with_the_files_path(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    text = edit("owner: customers", "owner: customer")
    path.write_text(text)
    with pytest.raises(CharterError) as caught:
        model.load(path)
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert problem.line == line_of(text, "owner: customer")
    assert f"{path}:{problem.line}: " in str(caught.value)


# --- owners ----------------------------------------------------------------------------


def test_unknown_owner_context_with_did_you_mean() -> None:
    text = edit("owner: customers", "owner: customer")
    problem = only_problem(text)
    assert problem.message == "entity 'Customer' is owned by unknown context 'customer'"
    assert problem.line == line_of(text, "owner: customer")
    assert problem.hint == "did you mean 'customers'?"


def test_unknown_owner_context_far_from_any_name() -> None:
    text = edit("owner: calendar", "owner: billing")
    problem = only_problem(text)
    assert problem.message == "entity 'Appointment' is owned by unknown context 'billing'"
    assert problem.line == line_of(text, "owner: billing")
    assert "contexts:" in problem.hint


# --- entities declared twice -----------------------------------------------------------


def test_entity_declared_twice() -> None:
    text = edit("  Appointment:\n", "  Customer:\n    owner: customers\n  Appointment:\n")
    first, second = lines_of(text, "  Customer:")
    problem = only_problem(text)
    assert problem.line == second
    assert re.search(rf"\bline {first}\b", problem.message)
    assert problem.message == f"entity 'Customer' is declared twice (first at line {first})"
    assert problem.hint


def test_entity_declared_twice_names_both_lines() -> None:
    """The part of the duplicate check that does not depend on the exact wording."""
    text = edit("  Appointment:\n", "  Customer:\n    owner: customers\n  Appointment:\n")
    first, second = lines_of(text, "  Customer:")
    problem = only_problem(text)
    assert problem.line == second
    assert "'Customer'" in problem.message
    assert "declared twice" in problem.message
    assert f"line {first}" in problem.message
    assert "merge" in problem.hint


# --- copies ----------------------------------------------------------------------------


def test_copy_of_unknown_entity() -> None:
    text = edit("of: Customer", "of: Customr")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' is of unknown entity 'Customr'"
    assert problem.line == line_of(text, "of: Customr")
    assert problem.hint == "did you mean 'Customer'?"


def test_copy_of_unknown_entity_far_from_any_name() -> None:
    text = edit("of: Customer", "of: Invoice")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' is of unknown entity 'Invoice'"
    assert problem.line == line_of(text, "of: Invoice")
    assert "entities:" in problem.hint


def test_copy_of_private_field() -> None:
    text = edit("fields: [name, email]", "fields: [name, password_hash]")
    problem = only_problem(text)
    assert problem.message == (
        "copy 'order_customers' depends on Customer.password_hash, which is private"
    )
    assert problem.line == line_of(text, "fields: [name, password_hash]")
    assert problem.hint == "private fields never leave 'customers'"


def test_copy_of_unknown_field_in_a_block_list() -> None:
    text = edit("    fields: [name, email]\n", "    fields:\n      - name\n      - emial\n")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' depends on unknown field Customer.emial"
    assert problem.line == line_of(text, "- emial")
    assert problem.hint == "did you mean 'email'?"


def test_copy_of_unknown_field_in_a_flow_list() -> None:
    text = edit("fields: [name, email]", "fields: [name, emial]")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' depends on unknown field Customer.emial"
    assert problem.line == line_of(text, "fields: [name, emial]")
    assert problem.hint == "did you mean 'email'?"


def test_copy_of_unknown_field_in_a_flow_list_over_several_lines() -> None:
    text = edit("fields: [name, email]", "fields: [name,\n             emial]")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' depends on unknown field Customer.emial"
    assert problem.line == line_of(text, "emial]")


def test_copy_of_unknown_field_far_from_any_name_lists_the_public_fields() -> None:
    text = edit("fields: [name, email]", "fields: [name, shoe_size]")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' depends on unknown field Customer.shoe_size"
    assert problem.hint == "public fields of Customer: email, name, address, status"
    assert "password_hash" not in problem.hint


def test_copy_placed_in_the_owners_own_context() -> None:
    text = edit("in: orders", "in: customers")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' is placed in 'customers', which owns Customer"
    assert problem.line == line_of(text, "in: customers")
    assert "other contexts" in problem.hint


def test_copy_in_unknown_context() -> None:
    text = edit("in: orders", "in: order")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers' is kept in unknown context 'order'"
    assert problem.line == line_of(text, "in: order")
    assert problem.hint == "did you mean 'orders'?"


# --- windows ---------------------------------------------------------------------------


def test_window_in_parsecs() -> None:
    text = edit("window: 5s", "window: 5 parsecs")
    problem = only_problem(text)
    assert problem.message == "copy 'order_customers': window '5 parsecs' is not a duration"
    assert problem.line == line_of(text, "window: 5 parsecs")
    assert "500ms" in problem.hint
    assert "5s" in problem.hint


@pytest.mark.parametrize("window", ["soon", "-5s", "5 weeks", "true", "s"])
def test_other_unreadable_windows(window: str) -> None:
    text = edit("window: 5s", f"window: {window}")
    problem = only_problem(text)
    assert "is not a duration" in problem.message
    assert problem.line == line_of(text, f"window: {window}")
    assert problem.hint


@pytest.mark.parametrize(
    ("window", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("7", 7.0),
        ("1.5s", 1.5),
        ("0.25", 0.25),
    ],
)
def test_valid_windows(window: str, seconds: float) -> None:
    charter = model.loads(edit("window: 5s", f"window: {window}"), FILE)
    assert charter.copies["order_customers"].window_s == pytest.approx(seconds)
    assert model.parse_duration(window) == pytest.approx(seconds)


def test_parse_duration_rejects_what_is_not_a_duration() -> None:
    for value in ("5 parsecs", "", "ms", "-1", True, None, -3):
        assert model.parse_duration(value) is None, value


def test_copy_without_a_window_says_so() -> None:
    text = edit("    window: 5s\n", "")
    problem = only_problem(text)
    assert problem.line == line_of(text, "order_customers:")
    assert "window" in problem.message
    assert "None" not in problem.message, problem.message
    assert problem.hint


# --- fields ----------------------------------------------------------------------------


def test_unknown_field_type() -> None:
    text = edit("name:    {type: string}", "name:    {type: strng}")
    problem = only_problem(text)
    assert problem.message == "Customer.name has unknown type 'strng'"
    assert problem.line == line_of(text, "{type: strng}")
    assert problem.hint == "did you mean 'string'?"


def test_unknown_field_type_far_from_any_type_lists_them_all() -> None:
    text = edit("name:    {type: string}", "name:    {type: blob}")
    problem = only_problem(text)
    assert problem.message == "Customer.name has unknown type 'blob'"
    assert problem.hint == "use one of: " + ", ".join(model.FIELD_TYPES)


def test_unknown_field_type_in_the_short_form() -> None:
    """`name: strng` is short for `name: {type: strng}`; the line is still the field's."""
    text = edit("name:    {type: string}", "name:    strng")
    problem = only_problem(text)
    assert problem.message == "Customer.name has unknown type 'strng'"
    assert problem.hint == "did you mean 'string'?"
    assert problem.line == line_of(text, "name:    strng")


def test_field_without_a_type_says_so() -> None:
    text = edit("name:    {type: string}", "name:    {unique: true}")
    problem = only_problem(text)
    assert problem.line == line_of(text, "name:    {unique: true}")
    assert "type" in problem.message
    assert "''" not in problem.message, problem.message
    assert problem.hint


# --- constraints -----------------------------------------------------------------------


def test_no_overlap_on_unknown_field() -> None:
    text = edit("per: [user_id]", "per: [usr_id]")
    problem = only_problem(text)
    assert problem.message == "Appointment: constraint no_overlap names unknown field 'usr_id'"
    assert problem.line == line_of(text, "no_overlap:")
    assert problem.hint == "did you mean 'user_id'?"


def test_no_overlap_on_unknown_range_fields_reports_each() -> None:
    text = edit("range: [starts_at, ends_at]", "range: [start, finish]")
    found = problems(text)
    line = line_of(text, "no_overlap:")
    assert [(p.line, p.message) for p in found] == [
        (line, "Appointment: constraint no_overlap names unknown field 'start'"),
        (line, "Appointment: constraint no_overlap names unknown field 'finish'"),
    ]
    assert all(p.hint for p in found)


CANCELLABLE = (
    "      ends_at:   {type: timestamp}\n"
    "      status:    {type: enum, values: [booked, cancelled], default: booked}\n"
    "      note:      {type: text, required: false}\n"
    "    constraints:\n"
    "      - no_overlap:\n"
    "          per: [user_id]\n"
    "          range: [starts_at, ends_at]\n"
)


def cancellable(unless: str) -> str:
    """GOOD with a status on appointments and the no_overlap rule taking `unless`."""
    text = edit(
        "      ends_at:   {type: timestamp}\n    constraints:\n"
        "      - no_overlap: {per: [user_id], range: [starts_at, ends_at]}\n",
        CANCELLABLE + (f"          unless: {unless}\n" if unless else ""),
    )
    return text


def test_no_overlap_may_leave_out_records_by_an_enum_or_string_field() -> None:
    charter = model.loads(cancellable("{status: [cancelled]}"), FILE)
    rule = charter.entities["Appointment"].constraints[0]
    assert rule.unless == ("status", ("cancelled",))
    assert model.loads(cancellable(""), FILE).entities["Appointment"].constraints[0].unless is None


@pytest.mark.parametrize(
    ("unless", "message", "hint"),
    [
        ("{statu: [cancelled]}", "no_overlap unless names unknown field 'statu'", "'status'"),
        ("{status: [canceled]}", "unless status: 'canceled' is not one of", "'cancelled'"),
        ("{note: [x]}", "unless needs an enum or string field; note is text", ""),
        ("{status: []}", "unless status lists no values", "status: [cancelled]"),
        ("{status: [cancelled], note: [x]}", "unless takes one field", "status: [cancelled]"),
        ("[cancelled]", "unless takes one field", ""),
    ],
)
def test_a_bad_no_overlap_condition_is_reported_on_its_line(
    unless: str, message: str, hint: str
) -> None:
    text = cancellable(unless)
    problem = only_problem(text)
    assert message in problem.message and problem.message.startswith("Appointment: ")
    assert problem.line == line_of(text, "unless:")
    assert hint in problem.hint


def test_a_mistyped_no_overlap_key_is_reported_not_ignored() -> None:
    text = edit("range: [starts_at, ends_at]}", "range: [starts_at, ends_at], unles: {}}")
    problem = only_problem(text)
    assert problem.message == "Appointment: no_overlap: unknown key 'unles'"
    assert problem.hint == "did you mean 'unless'?"
    assert problem.line == line_of(text, "unles:")


# --- many problems at once -------------------------------------------------------------

MANY_EDITS = [
    # a context declared twice
    ("  calendar:  {team", "  shipping:  {team: logistics}\n  calendar:  {team"),
    ("owner: calendar", "owner: calendr"),  # unknown owner
    ("name:    {type: string}", "name:    {type: strng}"),  # unknown type
    ("per: [user_id]", "per: [usr_id]"),  # constraint on an unknown field
    ("fields: [name, email]", "fields: [name, password_hash]"),  # private field
    ("window: 5s", "window: 5 parsecs"),  # not a duration
]
MORE_COPIES = """\
  customer_notes:
    in: customers
    of: Customer
    fields:
      - name
      - emial
    window: 1m
  order_invoices:
    in: orders
    of: Invoice
    fields: [total]
    window: 1m
"""


def many_problems() -> tuple[str, list[tuple[int, str]]]:
    """A charter with one of each mistake, and its (line, message) pairs in line order."""
    text = GOOD
    for old, new in MANY_EDITS:
        text = edit(old, new, text)
    text += MORE_COPIES
    expected = [
        (
            lines_of(text, "  shipping:  {team")[1],
            "context 'shipping' is declared twice (first at line "
            f"{lines_of(text, '  shipping:  {team')[0]})",
        ),
        (line_of(text, "{type: strng}"), "Customer.name has unknown type 'strng'"),
        (
            line_of(text, "owner: calendr"),
            "entity 'Appointment' is owned by unknown context 'calendr'",
        ),
        (
            line_of(text, "no_overlap:"),
            "Appointment: constraint no_overlap names unknown field 'usr_id'",
        ),
        (
            line_of(text, "password_hash]"),
            "copy 'order_customers' depends on Customer.password_hash, which is private",
        ),
        (
            line_of(text, "5 parsecs"),
            "copy 'order_customers': window '5 parsecs' is not a duration",
        ),
        (
            line_of(text, "in: customers"),
            "copy 'customer_notes' is placed in 'customers', which owns Customer",
        ),
        (
            line_of(text, "- emial"),
            "copy 'customer_notes' depends on unknown field Customer.emial",
        ),
        (line_of(text, "of: Invoice"), "copy 'order_invoices' is of unknown entity 'Invoice'"),
    ]
    return text, expected


def test_many_problems_are_all_reported_in_line_order() -> None:
    text, expected = many_problems()
    found = problems(text)
    assert len(found) == len(expected) == 9
    assert [p.line for p in found] == sorted(p.line for p in found)
    assert [p.line for p in found] == [line for line, _ in expected]
    # Messages are compared without runs of spaces, which the duplicate test covers.
    assert [" ".join(p.message.split()) for p in found] == [m for _, m in expected]
    assert all(p.hint for p in found), [str(p) for p in found if not p.hint]


def test_charter_error_text_lists_every_problem() -> None:
    text, expected = many_problems()
    with pytest.raises(CharterError) as caught:
        model.loads(text, FILE)
    message = str(caught.value)
    assert message.startswith(f"{len(expected)} problems in the charter:")
    for line, _ in expected:
        assert f"{FILE}:{line}: " in message


# --- not a charter at all --------------------------------------------------------------


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a sentence\n", "", "# only a comment\n"])
def test_not_a_mapping(text: str) -> None:
    problem = only_problem(text)
    assert problem.message == "the charter must be a YAML mapping"
    assert problem.line == 1


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("    window: 5s", "    window: 5s: 6s", "5s: 6s"),
        ("    window: 5s", "\twindow: 5s", "\twindow"),
        ("    of: Customer", "   of: Customer", "   of: Customer"),
    ],
    ids=["colon-in-value", "tab", "bad-indent"],
)
def test_invalid_yaml_names_the_line(old: str, new: str, needle: str) -> None:
    text = edit(old, new)
    problem = only_problem(text)
    assert problem.message.startswith("not valid YAML: ")
    assert len(problem.message) > len("not valid YAML: ")
    assert problem.line == line_of(text, needle)


def test_unclosed_quote_points_at_where_it_opens() -> None:
    text = edit("    window: 5s", '    window: "5s')
    problem = only_problem(text)
    assert problem.message.startswith("not valid YAML: ")
    opened = line_of(text, 'window: "5s')
    assert problem.line == opened or f"line {opened}" in problem.message, problem
    assert problem.line <= len(text.splitlines()), "the line is past the end of the file"


def test_missing_file() -> None:
    with pytest.raises(CharterError) as caught:
        model.load("/nonexistent/charter.yaml")
    [problem] = caught.value.problems
    assert problem.file == "/nonexistent/charter.yaml"
    assert "cannot read the charter" in problem.message
    assert "No such file" in problem.message


# --- charter check ---------------------------------------------------------------------


def test_check_good_file_summarises_it(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(GOOD)
    result = check(path)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "shop" in out
    assert "is valid" in out
    for name, team in [
        ("customers", "customer-team"),
        ("orders", "order-team"),
        ("shipping", "logistics"),
        ("calendar", "scheduling"),
    ]:
        store = f"sqlite:///{(tmp_path / '.charter' / f'{name}.db').resolve()}"
        assert cells(out, name) == [name, team, store]
    customer = cells(out, "Customer")
    assert customer[1] == "customers"
    assert customer[-1] == "creates accounts; keeps e-mail addresses unique"
    assert "password_hash (private)" in customer[2]
    assert "email (unique)" in customer[2]
    assert cells(out, "Appointment")[1] == "calendar"
    assert cells(out, "order_customers") == [
        "order_customers",
        "orders",
        "Customer",
        "name, email",
        "5s",
        "order confirmations go to an outdated e-mail address",
    ]
    assert f"bus: sqlite:///{(tmp_path / '.charter' / 'bus.db').resolve()}" in out
    assert result.stderr == ""


@pytest.mark.parametrize(("window", "shown"), [("500ms", "500ms"), ("90", "90s"), ("2h", "2h")])
def test_check_shows_windows_readably(tmp_path: Path, window: str, shown: str) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(edit("window: 5s", f"window: {window}"))
    result = check(path)
    assert result.exit_code == 0, result.output
    assert cells(result.stdout, "order_customers")[4] == shown


def test_check_bad_file_exits_1_and_lists_every_problem(tmp_path: Path) -> None:
    text, expected = many_problems()
    path = tmp_path / "charter.yaml"
    path.write_text(text)
    result = check(path)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    err = result.stderr
    assert "Traceback" not in err
    lines = err.splitlines()
    for line, message in expected:
        [shown] = [s for s in lines if f"{path}:{line}: " in s]
        assert " ".join(shown.split()).endswith(f"{path}:{line}: {message}")
    for problem in problems(text):
        assert f"hint: {problem.hint}" in err
    assert lines[-1] == f"{len(expected)} problems"
    assert [int(n) for n in re.findall(rf"{re.escape(str(path))}:(\d+): ", err)] == [
        line for line, _ in expected
    ]


def test_check_one_problem_says_one_problem(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    text = edit("owner: customers", "owner: customer")
    path.write_text(text)
    result = check(path)
    assert result.exit_code == 1
    line = line_of(text, "owner: customer")
    assert f"{path}:{line}: entity 'Customer' is owned by unknown context 'customer'" in (
        result.stderr
    )
    assert "hint: did you mean 'customers'?" in result.stderr
    assert result.stderr.splitlines()[-1] == "1 problem"


def test_check_does_not_wrap_problem_lines_on_a_narrow_console(tmp_path: Path) -> None:
    """`file:line: message` must stay on one line, so editors and CI can jump to it."""
    folder = tmp_path / "a-folder-with-a-rather-long-name" / "and-another-one"
    folder.mkdir(parents=True)
    path = folder / "charter.yaml"
    text = edit("window: 5s", "window: 5 parsecs")
    path.write_text(text)
    result = check(path, columns=80)
    assert result.exit_code == 1
    line = line_of(text, "5 parsecs")
    message = "copy 'order_customers': window '5 parsecs' is not a duration"
    assert any(s.endswith(f"{path}:{line}: {message}") for s in result.stderr.splitlines()), (
        result.stderr
    )


def test_check_prints_hints_with_brackets_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    text = edit("fields: [name, email]", "fields: []")
    path.write_text(text)
    [problem] = problems(text)
    assert problem.hint == "fields: [the fields it depends on]"
    result = check(path)
    assert result.exit_code == 1
    assert "hint: fields: [the fields it depends on]" in result.stderr, result.stderr


def test_check_summary_prints_brackets_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(edit("unique\n", "unique [see runbook]\n"))
    result = check(path)
    assert result.exit_code == 0, result.output
    assert cells(result.stdout, "Customer")[-1] == (
        "creates accounts; keeps e-mail addresses unique [see runbook]"
    )


@pytest.mark.parametrize(
    "text", ["- a\n- b\n", 'charter: 1\nname: "shop\n'], ids=["not-a-mapping", "bad-yaml"]
)
def test_check_not_a_charter_exits_1(tmp_path: Path, text: str) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(text)
    result = check(path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert re.search(rf"{re.escape(str(path))}:[1-9]\d*: ", result.stderr), result.stderr


def test_check_missing_file_exits_1_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "charter.yaml"
    result = check(path)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert str(path) in result.stderr
    assert "cannot read the charter" in result.stderr
    assert "No such file" in result.stderr
    assert result.stdout == ""


def test_an_unquoted_url_in_a_flow_mapping_loads() -> None:
    """libyaml refuses `{store: sqlite:///x.db}` (a ':' in a flow scalar); the loader must
    not: charter's own examples write stores that way (charter.sim's library did)."""
    text = (
        "charter: 1\nname: flow\nbus: memory://flow/bus\ncontexts:\n"
        "  a: {team: t, store: memory://flow/a}\nentities: {}\ncopies: {}\n"
    )
    charter = model.loads(text, FILE)
    assert charter.contexts["a"].store == "memory://flow/a"


@pytest.mark.parametrize(
    ("field", "words"),
    [
        (
            "name:    {type: string, default: 12}",
            'default 12 is not a string; quote it: default: "12"',
        ),
        ("name:    {type: integer, default: ten}", "default 'ten' is not a whole number"),
        ("name:    {type: integer, default: true}", "default True is not a whole number"),
        ('name:    {type: number, default: "1.5"}', "default '1.5' is not a number"),
        ('name:    {type: boolean, default: "no"}', "default 'no' is not true or false"),
    ],
)
def test_a_default_of_another_type_is_a_problem_at_its_line(field: str, words: str) -> None:
    """Without it the charter loads and every create that takes the default is refused."""
    text = edit("name:    {type: string}", field)
    found = only_problem(text)
    assert found.line == line_of(text, field), found
    assert words in f"{found.message}; {found.hint}", found


@pytest.mark.parametrize(
    "field",
    [
        "name:    {type: number, default: 3}",
        "name:    {type: boolean, default: false}",
        'name:    {type: text, default: ""}',
        "name:    {type: integer, default: -1}",
    ],
)
def test_a_default_of_the_fields_type_is_fine(field: str) -> None:
    model.loads(edit("name:    {type: string}", field), FILE)
