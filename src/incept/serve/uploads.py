"""How many request bodies the server receives at once, in all and from one client address.

A body is received before its request takes a place in the batcher's queue (`Batcher.admit`),
so clients that open an upload and never finish it hold only an upload, never a place that the
model's work needs, and lose it when the read timeout passes. These limits bound the memory
that bodies being received can hold, and keep one address from taking every upload: past
`max_per_client` its next one gets 429, past `max_total` anyone's gets 503, both at once and
without reading the body.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator


class Refused(Exception):
    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Uploads:
    def __init__(self, max_total: int = 128, max_per_client: int = 16):
        if max_total < 1 or max_per_client < 1:
            raise ValueError("max_total and max_per_client must be >= 1")
        self.max_total, self.max_per_client = max_total, max_per_client
        self.receiving_from: Counter[str] = Counter()  # address: bodies being received

    @property
    def receiving(self) -> int:
        return self.receiving_from.total()

    @contextlib.contextmanager
    def receive(self, client: str) -> Iterator[None]:
        """Holds one upload of `client` (an address) while the block reads its body."""
        if self.receiving_from[client] >= self.max_per_client:
            raise Refused(
                f"too many uploads at once from {client} (at most {self.max_per_client}): "
                "finish one, then retry",
                429,
            )
        if self.receiving >= self.max_total:
            raise Refused("server busy: too many uploads at once, retry shortly", 503)
        self.receiving_from[client] += 1
        try:
            yield
        finally:
            self.receiving_from[client] -= 1
            if not self.receiving_from[client]:
                del self.receiving_from[client]
