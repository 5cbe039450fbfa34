"""The agent's telemetry spool: ordered, bounded in memory, spilled to disk past that.

Every message gets the next sequence number and stays until the manager acknowledges it
(cumulatively). Past `mem_bytes` new messages go to an append-only spill file and only
their offsets stay in memory; once everything is acknowledged the file is truncated.
So a robot that loses its link for an hour keeps every message, in order, in bounded RAM.
An agent stopped cleanly with messages still unacknowledged writes them to
`<spool>.pending`; the next start takes them back and sends them first.
"""

from __future__ import annotations

import struct
from collections import deque
from pathlib import Path


class Spool:
    """Unacknowledged messages by sequence number: (seq, bytes in memory | (offset, length))."""

    def __init__(self, spill_path: str | Path, mem_bytes: int = 4 << 20, start_seq: int = 0):
        self.path = Path(spill_path)
        self.mem_limit = mem_bytes
        self.mem_bytes = 0
        self.next_seq = start_seq
        self.acked = start_seq - 1
        self.items: deque = deque()
        self.spilled = 0  # messages ever written to disk
        self._file = None
        self._load_pending()

    @property
    def pending_path(self) -> Path:
        return self.path.with_suffix(".pending")

    def _load_pending(self) -> None:
        """Take back what a cleanly stopped agent left unacknowledged (see `close`)."""
        if not self.pending_path.exists():
            return
        data = self.pending_path.read_bytes()
        pos, items = 0, []
        while pos + 12 <= len(data):
            seq, n = struct.unpack_from("<qI", data, pos)
            if pos + 12 + n > len(data):
                break  # cut off mid-record: keep the whole ones
            items.append((seq, data[pos + 12:pos + 12 + n]))
            pos += 12 + n
        self.pending_path.unlink()
        if items:
            self.next_seq = items[0][0]
            self.acked = self.next_seq - 1
            for _, payload in items:
                self.push(payload)

    def push(self, payload: bytes) -> int:
        seq = self.next_seq
        self.next_seq += 1
        if self.mem_bytes + len(payload) > self.mem_limit:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w+b")  # noqa: SIM115 - lives as long as the spool
            offset = self._file.seek(0, 2)
            self._file.write(payload)
            self.items.append((seq, (offset, len(payload))))
            self.spilled += 1
        else:
            self.items.append((seq, payload))
            self.mem_bytes += len(payload)
        return seq

    def ack(self, seq: int) -> None:
        """Everything up to and including `seq` arrived: forget it."""
        while self.items and self.items[0][0] <= seq:
            _, data = self.items.popleft()
            if isinstance(data, bytes):
                self.mem_bytes -= len(data)
        self.acked = max(self.acked, seq)
        if not self.items and self._file is not None:
            self._file.truncate(0)

    def since(self, seq: int, limit: int):
        """Up to `limit` (seq, payload) pairs from `seq` on, in order."""
        if not self.items:
            return
        first = self.items[0][0]
        start = max(seq - first, 0)
        for i in range(start, min(start + limit, len(self.items))):
            s, data = self.items[i]
            if not isinstance(data, bytes):
                self._file.seek(data[0])
                data = self._file.read(data[1])
            yield s, data

    def rebase(self, start_seq: int) -> None:
        """Renumber everything from `start_seq` (a restarted robot continues its stream)."""
        delta = start_seq - (self.items[0][0] if self.items else self.next_seq)
        self.items = deque((s + delta, d) for s, d in self.items)
        self.next_seq += delta
        self.acked = start_seq - 1

    def __len__(self) -> int:
        return len(self.items)

    def close(self) -> None:
        """Release the spill file; what is still unacknowledged is kept for the next start."""
        if self.items:
            tmp = self.pending_path.with_suffix(".tmp")
            self.pending_path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                for seq, payload in self.since(self.items[0][0], len(self.items)):
                    f.write(struct.pack("<qI", seq, len(payload)))
                    f.write(payload)
            tmp.replace(self.pending_path)
        if self._file is not None:
            self._file.close()
            self._file = None
        self.path.unlink(missing_ok=True)
