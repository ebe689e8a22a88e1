"""Steady request load through Envoy from background threads, recording every outcome."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException

BODY = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


@dataclass
class Outcome:
    at: float
    status: int
    version: str


@dataclass
class Load:
    port: int
    threads: int = 4
    pause_s: float = 0.01
    bodies: tuple[str, ...] = (BODY,)  # sent in turn
    path: str = "/v2/models/classifier/infer"
    headers: dict[str, str] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def _run(self) -> None:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
        turn = len(self._workers)
        while not self._stop.is_set():
            turn += 1
            try:
                conn.request("POST", self.path, self.bodies[turn % len(self.bodies)],
                             {"Content-Type": "application/json", **self.headers})
                response = conn.getresponse()
                response.read()
                outcome = Outcome(time.time(), response.status, response.getheader("x-model-version", ""))
            except (OSError, HTTPException):
                conn.close()
                conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
                outcome = Outcome(time.time(), 0, "")
            with self._lock:
                self.outcomes.append(outcome)
            time.sleep(self.pause_s)
        conn.close()

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.at < end]
