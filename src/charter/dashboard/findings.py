"""The latest audit findings, for `charter serve --audit FILE`: each FILE is a PostgreSQL
server log (csvlog or jsonlog, audited as `charter audit` does) or what `charter audit
--json` printed (read as it is). They are read again when a file changes (looked at every
CHECK_S), in a thread of their own: a large log takes a while, and the dashboard goes on
meanwhile, showing the findings it has; a log that keeps changing is read again after ten
times what its last reading took, if that is longer."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from charter import audit
from charter.errors import Error
from charter.model import Charter
from charter.values import now_text

CHECK_S = 5.0
SMALL = 1 << 20  # a file this small is tried as one JSON document


def is_report(path: Path) -> bool:
    """Whether `path` holds `charter audit --json`'s output rather than a server log: that
    output starts with a line of its own, '{' (a jsonlog line is a whole object), or is
    one small JSON document with findings."""
    with path.open("rb") as stream:
        first = stream.readline(4096).strip()
    if first == b"{":
        return True
    if not first.startswith(b"{") or path.stat().st_size > SMALL:
        return False
    try:
        doc = json.loads(path.read_bytes())
    except ValueError:
        return False
    return isinstance(doc, dict) and "findings" in doc


class Findings:
    """The findings of some files, kept up to date by `start()` until `stop()`."""

    def __init__(
        self,
        charter: Charter,
        paths: Sequence[Path],
        mapping: Mapping[str, str] | None = None,
        check_s: float = CHECK_S,
    ) -> None:
        self.charter, self.paths, self.mapping = charter, list(paths), dict(mapping or {})
        self.check_s = check_s
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise Error(f"--audit: no such file: {', '.join(missing)}")
        self.reports = [p for p in self.paths if is_report(p)]
        self.logs = [p for p in self.paths if p not in self.reports]
        if self.logs:
            audit.require()  # pglast, or what to install
            from charter.audit.actors import Actors

            Actors(charter, self.mapping)  # a bad --map fails now, not in the thread
        self.version = 0
        self.doc: dict[str, Any] | None = None
        self.error = ""
        self.read_at: str | None = None
        self._stamp: tuple[tuple[str, int, int], ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="charter:audit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            # a live server log changes all the time: reading it again may take at most a
            # tenth of this thread's time
            self._stop.wait(max(self.check_s, 10 * (time.monotonic() - started)))

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        marks = []
        for p in self.paths:
            try:
                st = p.stat()
                marks.append((str(p), st.st_mtime_ns, st.st_size))
            except OSError:
                marks.append((str(p), -1, -1))
        return tuple(marks)

    def refresh(self) -> bool:
        """Read the files again if any changed since the last read; whether they were."""
        stamp = self.stamp()
        if stamp == self._stamp:
            return False
        try:
            doc, error = self.read(), ""
        except (Error, OSError, ValueError, KeyError, TypeError) as exc:
            error = str(exc) if isinstance(exc, Error) else f"{type(exc).__name__}: {exc}"
            doc = None
        with self._lock:
            self._stamp = stamp
            self.version += 1
            self.error = error
            if doc is not None:
                self.doc = doc
            self.read_at = now_text()
        return True

    def read(self) -> dict[str, Any]:
        """Every file's findings, as one report (`charter audit --json`'s shape)."""
        docs = [json.loads(p.read_bytes()) for p in self.reports]
        for p, doc in zip(self.reports, docs, strict=True):
            if not isinstance(doc, dict) or not isinstance(doc.get("findings"), list):
                raise Error(f"--audit {p}: not the JSON of `charter audit --json`")
        if self.logs:
            docs.append(audit.audit(self.charter, self.logs, None, self.mapping).as_json())
        merged: dict[str, Any] = {"sources": [], "statements": 0, "unknown": 0, "findings": []}
        for doc in docs:
            merged["sources"] += list(doc.get("sources") or [])
            merged["statements"] += int(doc.get("statements") or 0)
            merged["unknown"] += int(doc.get("unknown") or 0)
            merged["findings"] += list(doc["findings"])
        merged["parsed"] = merged["statements"] - merged["unknown"]
        return merged

    def latest(self) -> dict[str, Any]:
        with self._lock:
            doc = dict(self.doc or {"findings": []})
            reading = self._stamp is None
            return doc | {
                "version": self.version,
                "read_at": self.read_at,
                "error": self.error,
                "reading": reading,
                "files": [str(p) for p in self.paths],
            }

    def found(self) -> list[dict[str, Any]]:
        with self._lock:
            return list((self.doc or {}).get("findings") or [])
