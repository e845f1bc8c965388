"""Prometheus metrics from a runner (`charter run --metrics`) and alerting rules from the
charter (`charter alerts`), both as Prometheus's own promtool checks them; the rules fed
series through `promtool test rules` to see them fire. The metrics on every backend, on
a clock that moves only when the test says."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import charter
from charter.cli import main
from charter.metrics import MetricsServer, buckets
from charter.runner import worker_name
from charter.system import System
from charter.testing.world import Clock
from tests.conftest import charter_command

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian's prometheus package: .ci/run)"
)
ORDER = {"copy": "order_customers", "of": "Customer", "owner": "customers", "in": "orders"}


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=stdin, capture_output=True, timeout=60)


def scrape(server: MetricsServer) -> bytes:
    with urllib.request.urlopen(server.url, timeout=30) as response:
        return bytes(response.read())


def samples(text: bytes) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text.decode()) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    (match,) = [s for s in found if s.name == name and labels.items() <= s.labels.items()]
    return match.value


def until(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether `condition` came true before `timeout` (a bound, never a measure)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def create(system: System, count: int, tag: str) -> None:
    with system.context("customers").transaction() as tx:
        for n in range(count):
            tx.create("Customer", email=f"{tag}{n}@x", name=f"N{n}", password_hash="h")


@needs_promtool
def test_metrics_say_what_the_copies_and_outboxes_do(shop: System) -> None:
    clock = Clock()
    with clock.installed():
        runner = charter.Runner(shop)
        runner.drain()  # the copies filled once: what follows comes as events
        server = MetricsServer(runner, "127.0.0.1", 0)
        try:
            create(shop, 4, "a")
            clock.advance(2.0)
            runner.drain()
            create(shop, 3, "late")
            clock.advance(7.0)
            text = scrape(server)
        finally:
            server.close()
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = samples(text)
    shipping = {**ORDER, "copy": "shipping_customers", "in": "shipping"}
    assert value(found, "charter_copy_up", **ORDER) == 1
    assert value(found, "charter_copy_window_seconds", **ORDER) == 5
    assert value(found, "charter_copy_window_seconds", **shipping) == 60
    assert value(found, "charter_copy_staleness_seconds", **ORDER) == pytest.approx(7.0)
    assert value(found, "charter_copy_lag_events", **ORDER) == 3
    assert value(found, "charter_copy_parked_events", **ORDER) == 0
    assert value(found, "charter_copy_events_applied_total", **ORDER) == 4
    assert value(found, "charter_outbox_unrelayed_events", owner="customers", of="Customer") == 3
    histogram = "charter_copy_propagation_latency_seconds"
    assert value(found, f"{histogram}_bucket", **ORDER, le="1.25") == 0
    assert value(found, f"{histogram}_bucket", **ORDER, le="2.5") == 4  # all took 2 s
    assert value(found, f"{histogram}_bucket", **ORDER, le="+Inf") == 4
    assert value(found, f"{histogram}_sum", **ORDER) == pytest.approx(8.0)
    assert value(found, f"{histogram}_bucket", **shipping, le="3.0") == 4  # its own edges


def test_a_projector_failing_or_stopped_is_down(shop: System) -> None:
    runner = charter.Runner(shop)
    server = MetricsServer(runner, "127.0.0.1", 0)
    try:
        assert value(samples(scrape(server)), "charter_copy_projector_up", **ORDER) == 0
        runner.start()
        try:
            assert value(samples(scrape(server)), "charter_copy_projector_up", **ORDER) == 1
            (projector,) = [p for p in runner.projectors if p.copy.name == ORDER["copy"]]
            name, step = worker_name(projector), projector.step

            def failing() -> int:
                raise OSError("the copy's store is out of reach")

            projector.step = failing  # type: ignore[method-assign]  # as a store down does
            assert until(lambda: runner.reports.failing(name))
            found = samples(scrape(server))
            assert value(found, "charter_copy_projector_up", **ORDER) == 0
            assert value(found, "charter_copy_projector_up", copy="shipping_customers") == 1
            projector.step = step  # type: ignore[method-assign]
            assert until(lambda: not runner.reports.failing(name))
            assert value(samples(scrape(server)), "charter_copy_projector_up", **ORDER) == 1
        finally:
            runner.stop()
        assert value(samples(scrape(server)), "charter_copy_projector_up", **ORDER) == 0
    finally:
        server.close()


def test_scrapes_open_no_new_connections(shop: System) -> None:
    """One thread answers every scrape, so a store's connection per thread is made once."""
    runner = charter.Runner(shop)
    runner.drain()
    server = MetricsServer(runner, "127.0.0.1", 0)
    try:
        scrape(server)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(20):
            scrape(server)
        assert len(os.listdir("/proc/self/fd")) <= before + 2
    finally:
        server.close()


def test_a_runner_of_copies_alone_reads_no_owners_store(shop: System) -> None:
    runner = charter.Runner(shop, ["orders"])
    server = MetricsServer(runner, "127.0.0.1", 0)
    try:
        create(shop, 2, "a")
        found = samples(scrape(server))
    finally:
        server.close()
    assert value(found, "charter_copy_lag_events", **ORDER) == 0  # none on the bus yet
    outboxes = [s.labels for s in found if s.name == "charter_outbox_unrelayed_events"]
    assert outboxes == [{"owner": "orders", "of": "Order"}]  # its own, not the customers'"
    assert not [s for s in found if s.labels.get("copy") == "shipping_customers"]


def test_latency_buckets_sit_at_fractions_and_multiples_of_the_window() -> None:
    edges = buckets(5.0)
    assert 5.0 in edges and 0.5 in edges and 50.0 in edges and list(edges) == sorted(edges)
    assert 60.0 in buckets(60.0) and min(buckets(0.2)) == pytest.approx(0.002)


@pytest.mark.processes
def test_charter_run_serves_metrics_until_it_stops(shop_file: Path) -> None:
    process = subprocess.Popen(
        charter_command("run", "-f", str(shop_file), "--metrics", "127.0.0.1:0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("metrics on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert "running all contexts" in process.stdout.readline()
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        assert 'charter_copy_up{copy="order_customers"' in text
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "stopped cleanly" in out


def test_a_bad_metrics_address_is_a_message(shop_file: Path) -> None:
    bad = CliRunner().invoke(main, ["run", "-f", str(shop_file), "--metrics", "9100"])
    assert bad.exit_code == 2 and "expected HOST:PORT" in bad.output
    once = CliRunner().invoke(main, ["run", "--once", "-f", str(shop_file), "--metrics", ":0"])
    assert once.exit_code == 2 and "not --once" in once.output


WITHOUT_PROMETHEUS = textwrap.dedent(
    """
    import importlib.abc, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] == "prometheus_client":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    sys.argv = ["charter", *sys.argv[1:]]
    from charter.cli import main
    main()
    """
)


def test_metrics_without_prometheus_client_name_the_extra(tmp_path: Path) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(ALERTS_CHARTER.format(folder=tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROMETHEUS, "run", "-f", str(path), "--metrics", ":0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "pip install 'charter[metrics]'" in done.stderr and "Traceback" not in done.stderr


# -- alerting rules ---------------------------------------------------------------

ALERTS_CHARTER = """\
charter: 1
name: shop
bus: "sqlite:///{folder}/bus.db"
contexts:
  customers: {{team: customer-team, store: "sqlite:///{folder}/customers.db"}}
  orders:    {{team: order-team,    store: "sqlite:///{folder}/orders.db"}}
entities:
  Customer:
    owner: customers
    fields:
      email: {{type: string}}
      name:  {{type: string}}
copies:
  order_customers:
    in: orders
    of: Customer
    fields: [name, email]
    window: 5s
    breaks: "order confirmations go to an outdated e-mail address {{{{ not a template }}}}"
  slow_customers:
    in: orders
    of: Customer
    fields: [name]
    window: 10m
"""

RULE_TESTS = """\
rule_files: [rules.yml]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'charter_copy_staleness_seconds{copy="order_customers",of="Customer",owner="customers",in="orders"}'
        values: '0 0 9 9 9 9 9 9 9 9 9 9'
      - series: 'charter_copy_parked_events{copy="order_customers",of="Customer",owner="customers",in="orders"}'
        values: '0 0 2 2'
      - series: 'charter_copy_staleness_seconds{copy="slow_customers",of="Customer",owner="customers",in="orders"}'
        values: '0 0 9 9 9 9 9 9 9 9 9 9'
    alert_rule_test:
      - eval_time: 1m
        alertname: CharterCopyStale
        exp_alerts: []
      - eval_time: 2m
        alertname: CharterCopyStale
        exp_alerts:
          - exp_labels:
              severity: critical
              copy: order_customers
              of: Customer
              owner: customers
              in: orders
              team: customer-team
            exp_annotations:
              summary: "copy order_customers of Customer is 9s behind its owner, beyond its window of 5s"
              breaks: "order confirmations go to an outdated e-mail address {{ not a template }}"
              team: customer-team
              description: "What breaks: order confirmations go to an outdated e-mail address {{ not a template }}. Customer is owned by 'customers' (team customer-team); the copy 'order_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked order_customers`."
      - eval_time: 45s
        alertname: CharterCopyParked
        exp_alerts:
          - exp_labels:
              severity: warning
              copy: order_customers
              of: Customer
              owner: customers
              in: orders
              team: customer-team
            exp_annotations:
              summary: "copy order_customers of Customer has 2 parked events: those records are wrong in it however fresh it is"
              breaks: "order confirmations go to an outdated e-mail address {{ not a template }}"
              team: customer-team
              description: "What breaks: order confirmations go to an outdated e-mail address {{ not a template }}. Customer is owned by 'customers' (team customer-team); the copy 'order_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked order_customers`."
  - interval: 15s  # one of two lanes of order_customers fails; slow_customers works
    input_series:
      - series: 'charter_copy_projector_up{copy="order_customers",of="Customer",owner="customers",in="orders",instance="a"}'
        values: '1 1 1 1 1 1 1 1 1 1 1 1'
      - series: 'charter_copy_projector_up{copy="order_customers",of="Customer",owner="customers",in="orders",instance="b"}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0'
      - series: 'charter_copy_projector_up{copy="slow_customers",of="Customer",owner="customers",in="orders",instance="a"}'
        values: '1 1 1 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 1m
        alertname: CharterCopyDown
        exp_alerts: []
      - eval_time: 2m
        alertname: CharterCopyDown
        exp_alerts:
          - exp_labels:
              severity: critical
              copy: order_customers
              of: Customer
              owner: customers
              in: orders
              team: order-team
            exp_annotations:
              summary: "nothing applies the events of copy order_customers of Customer in orders: its projector is failing, stopped, or run by no process serving metrics (see `charter run`'s warnings); it will breach its window of 5s at its owner's next change"
              breaks: "order confirmations go to an outdated e-mail address {{ not a template }}"
              team: order-team
              description: "What breaks: order confirmations go to an outdated e-mail address {{ not a template }}. Customer is owned by 'customers' (team customer-team); the copy 'order_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked order_customers`."
  - interval: 15s  # no process serves slow_customers: its series are absent
    input_series:
      - series: 'charter_copy_projector_up{copy="order_customers",of="Customer",owner="customers",in="orders",instance="a"}'
        values: '1 1 1 1 1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 30s
        alertname: CharterCopyDown
        exp_alerts: []
      - eval_time: 2m
        alertname: CharterCopyDown
        exp_alerts:
          - exp_labels:
              severity: critical
              copy: slow_customers
              of: Customer
              owner: customers
              in: orders
              team: order-team
            exp_annotations:
              summary: "nothing applies the events of copy slow_customers of Customer in orders: its projector is failing, stopped, or run by no process serving metrics (see `charter run`'s warnings); it will breach its window of 10m at its owner's next change"
              breaks: "(the charter does not say: add `breaks:` to the copy)"
              team: order-team
              description: "What breaks: (the charter does not say: add `breaks:` to the copy). Customer is owned by 'customers' (team customer-team); the copy 'slow_customers' is kept in 'orders' (team order-team). See `charter status` and `charter parked slow_customers`."
"""  # noqa: E501 (series and expected annotations as Prometheus shows them, whole)


@needs_promtool
def test_alerting_rules_pass_promtool_and_fire_when_a_copy_breaks_its_window(
    tmp_path: Path,
) -> None:
    path = tmp_path / "charter.yaml"
    path.write_text(ALERTS_CHARTER.format(folder=tmp_path))
    rules = tmp_path / "rules.yml"
    written = CliRunner().invoke(main, ["alerts", "-f", str(path), "-o", str(rules)])
    assert written.exit_code == 0 and "wrote 8 rules" in written.output, written.output
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0 and b"SUCCESS: 8 rules found" in checked.stdout, checked
    printed = CliRunner().invoke(main, ["alerts", "-f", str(path)])
    assert printed.output == rules.read_text()
    assert "for: 10m" in printed.output  # a long window waits as long; a short one a minute
    (tmp_path / "tests.yml").write_text(RULE_TESTS)
    tested = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert tested.returncode == 0, (tested.stdout + tested.stderr).decode()
