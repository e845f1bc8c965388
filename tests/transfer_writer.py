"""A writer process for the transfer tests and benchmark (G10): updates records of one
context as fast as it can, until a stop file appears, and logs every accepted write.

`python tests/transfer_writer.py CHARTER CONTEXT IDS_FILE LOG STOP`: each line of LOG is
a JSON list `[time, "ok" | "refused", id, version, epoch]` (version and epoch of what the
write made; for a refusal, the kind of error). When the charter file changes the writer
loads it again, as a service restarted by its operator would; it never loads it more
than once per change. Only the public API is used."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import charter
from charter.errors import ConflictError, FencedError, OwnershipError


def main(path: Path, context: str, ids_file: Path, log_path: Path, stop: Path) -> None:
    ids = ids_file.read_text().split()
    seen = path.stat().st_mtime_ns
    system = charter.load(path)
    rng = random.Random(f"{context}:{time.time_ns()}")
    with log_path.open("a") as log:
        log.write(json.dumps([time.time(), "ready", "", 0, 0]) + "\n")
        log.flush()
        count = 0
        while not stop.exists():
            count += 1
            if count % 20 == 0 and path.stat().st_mtime_ns != seen:
                seen = path.stat().st_mtime_ns
                system.close()
                system = charter.load(path)
            entity_id = rng.choice(ids)
            try:
                with system.context(context).transaction() as tx:
                    record = tx.update("Customer", entity_id, name=f"{context}-{count}")
                spec = system.charter.entities["Customer"]
                epoch = spec.holder(entity_id)[1]
                line = [time.time(), "ok", entity_id, record.version, epoch]
            except FencedError:
                line = [time.time(), "refused", entity_id, 0, 0]
            except OwnershipError:
                # the charter says another context owns it: look at the file again soon
                line = [time.time(), "not-owner", entity_id, 0, 0]
                if path.stat().st_mtime_ns != seen:
                    seen = path.stat().st_mtime_ns
                    system.close()
                    system = charter.load(path)
                time.sleep(0.0005)
            except ConflictError:
                line = [time.time(), "conflict", entity_id, 0, 0]
            log.write(json.dumps(line) + "\n")
            log.flush()
    system.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
