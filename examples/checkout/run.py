"""The checkout scenario: five orders of one item in stock three times, two of them too
dear for the card. Run from the repository root: `python examples/checkout/run.py`
(`--no-runner` when `charter run -f examples/checkout/charter.yaml --handlers
examples.checkout.handlers:register` runs in another terminal)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # `examples.checkout` importable from anywhere

import charter  # noqa: E402
from charter.sagas import listing  # noqa: E402
from examples.checkout.handlers import CHECKOUT, register  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-f", "--file", default=str(HERE / "charter.yaml"))
    parser.add_argument("--no-runner", action="store_true")
    options = parser.parse_args()
    with charter.load(options.file) as shop:
        register(shop)
        with shop.context("inventory").transaction() as tx:
            lamp = tx.create("Stock", sku=f"lamp-{charter.ids.uuid7()[-6:]}", available=3)
        runner = None if options.no_runner else charter.Runner(shop).start()
        try:
            runs = [
                CHECKOUT.start(shop, customer=who, total=total, stock=lamp.id, quantity=1)
                for who, total in [
                    ("ada", 40.0),
                    ("grace", 250.0),  # declined: the stock goes back, the order is cancelled
                    ("alan", 60.0),
                    ("edsger", 30.0),
                    ("barbara", 45.0),  # perhaps no lamp left by now: cancelled, nothing paid
                ]
            ]
            for run_id in runs:
                run = CHECKOUT.wait(shop, run_id)
                print(f"{run.input['customer']:8} {run.status:12} {run.reason or ''}")
        finally:
            if runner is not None:
                runner.stop()
        stock = shop.context("inventory").get("Stock", lamp.id)
        assert stock is not None
        print(f"{stock.sku}: {stock.available} left")
        print(listing.counts(listing.listed(shop)))


if __name__ == "__main__":
    main()
