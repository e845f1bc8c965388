"""`charter demo` and examples/shop: what a newcomer sees first must be true."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import charter
from charter.demo import SHOP_CHARTER, compare_copies, run_demo, write_charter
from charter.errors import Error
from tests.conftest import ROOT, assert_converged

EXAMPLE = ROOT / "examples" / "shop"


def _demo(folder: Path | None, changes: int = 300) -> str:
    out = io.StringIO()
    run_demo(Console(file=out, width=120), changes=changes, folder=folder)
    return out.getvalue()


def test_demo_shows_every_refusal_and_convergence(tmp_path: Path) -> None:
    started = time.monotonic()
    text = _demo(tmp_path)
    assert time.monotonic() - started < 15
    assert "300 changes in" in text
    assert text.count("refused (OwnershipError)") == 2
    assert "team customer-team" in text
    assert "refused (ConstraintError): Appointment no_overlap" in text
    assert (
        "refused by SQLite (IntegrityError): charter: order_customers is a read-only copy" in text
    )
    assert "refused (ConstraintError): Customer.email must be unique" in text
    assert "NOT refused" not in text
    for copy in ("order_customers", "shipping_customers"):
        assert f"{copy}: " in text
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{copy}: "))
        assert line.rstrip().endswith("all equal to customers' current state"), line
    assert "password_hash (private) is in 0 of" in text
    assert "7. The owner's history of one customer" in text
    assert f"charter status -f {tmp_path / 'charter.yaml'}" in text
    assert "runner warning" not in text


def test_demo_folder_really_holds_converged_copies(tmp_path: Path) -> None:
    _demo(tmp_path, changes=200)
    with charter.load(tmp_path / "charter.yaml") as system:
        assert_converged(system)
        assert all(check.equal and check.rows > 0 for check in compare_copies(system))
        assert all(row.synced for row in charter.status(system))


def test_demo_runs_again_on_a_kept_folder(tmp_path: Path) -> None:
    _demo(tmp_path, changes=150)
    text = _demo(tmp_path, changes=150)
    assert "all equal to customers' current state" in text
    with charter.load(tmp_path / "charter.yaml") as system:
        assert_converged(system)


def test_demo_in_a_temporary_folder_leaves_nothing(tmp_path: Path) -> None:
    text = _demo(None, changes=50)
    assert "temporary folder, now removed" in text


def test_demo_refuses_a_folder_holding_another_system(tmp_path: Path) -> None:
    (tmp_path / "charter.yaml").write_text("charter: 1\nname: mine\n")
    with pytest.raises(Error, match="different charter"):
        write_charter(tmp_path)
    other = tmp_path / "other"
    (other / ".charter").mkdir(parents=True)
    with pytest.raises(Error, match="stores of another system"):
        write_charter(other)


def test_example_charter_is_the_demo_charter() -> None:
    assert (EXAMPLE / "charter.yaml").read_text(encoding="utf-8") == SHOP_CHARTER


def test_example_scenario_runs_to_completion(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLE, shop, ignore=shutil.ignore_patterns(".charter", "__pycache__"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for _ in range(2):  # and again on the same stores
        done = subprocess.run(
            [sys.executable, str(shop / "run.py")],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "scenario complete" in done.stdout
    out = done.stdout
    assert "refused: Customer" in out and "not the expected 1" in out  # stale form
    assert "Dear Ada Lovelace" in out and "To: ada.king+" in out  # snapshot vs copy
    assert "refused: Appointment no_overlap" in out
    assert "cannot ship to Ada" in out
    assert (shop / ".charter" / "customers.db").exists()  # relative to the charter file
    with charter.load(shop / "charter.yaml") as system:
        assert_converged(system)
