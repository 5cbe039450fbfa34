"""Spike exchange between partitions with no Ray call per window: a shared-memory board.

Every partition of a node maps one board, a file in /dev/shm (or anonymous memory for
threads of one process). For each partition it holds a published-window counter, on a
cache line of its own, and two spike slots (window parity 0 and 1). A window of partition
p is: wait until every partition has published the previous window; deliver all of them,
merged by (step, global neuron) so every buffer slot sums in the same order whatever the
partitioning; advance; write its own spikes to slot `window % 2`; publish (a release store
of the counter). Two slots are enough: p overwrites window w-2's slot only after every
partition has published w-1, which each does only after it has read w-2.

A spike travels as one int64 key, `step << 32 | global neuron`, so key order is (step,
neuron) order. Waiting spins on the counters (`pause` on x86, timed by the cycle counter)
for 200 us by default, then sleeps in futex(2) on the counter until the publisher wakes it; it gives up after `timeout_s` or when the
board's abort word is set, and the partition's call returns -1 - q (the caller names q).

Partitions on other nodes appear on a node's board through a bridge (see `Bridge`): it
copies local partitions' windows to the peers' boards through `pipeline.netchan` (TCP)
and publishes the remote partitions' windows on the local board, so the Numba loop is the
same on one node or many.
"""

from __future__ import annotations

import mmap
import os
import platform
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from cluster.brainsim import kernels as k
from pipeline.errors import ReflexarcError

LINE = 8  # int64 words per cache line
ABORT = 0  # word 0: abort flag
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")
# futex(2) syscall numbers: a waiter sleeps in the kernel until the publisher wakes it
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}.get(platform.machine().lower(), -1)
FUTEX_WAIT, FUTEX_WAKE = 0, 1
SLEEP_NS = 1_000_000  # a sleeper also re-checks (abort, timeout) once per millisecond


class ExchangeStalled(ReflexarcError):
    """A partition waited too long for another's window (it died, or the run was aborted)."""

    def __init__(self, peer: int, window: int, me: int):
        super().__init__(f"partition {me} waited for partition {peer}'s window {window - 1} and gave up "
                         f"(the run was aborted or partition {peer} stopped)")
        self.peer, self.window, self.me = peer, window, me


@intrinsic
def load_acquire(typingctx, arr, idx):
    """`arr[idx]` as an atomic acquire load: the loop re-reads memory another process writes."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(a.data, [args[1]]), "acquire", 8)

    return sig, codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """`arr[idx] = val` as an atomic release store: everything written before it is visible first."""
    sig = types.void(arr, idx, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        builder.store_atomic(args[2], builder.gep(a.data, [args[1]]), "release", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cpu_relax(typingctx):
    """The x86 `pause` hint in a spin loop (nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def cycles(typingctx):
    """The CPU's cycle counter (`rdtsc` on x86): a clock for spin budgets, read in ~20 cycles."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])

    return sig, codegen


@intrinsic
def usleep(typingctx, us):
    """libc `usleep`: sleep without holding a core once spinning has gone on too long."""
    sig = types.int32(types.int32)

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32)]),
                                            "usleep")
        return builder.call(fn, [args[0]])

    return sig, codegen


@intrinsic
def atomic_add(typingctx, arr, idx, val):
    """`arr[idx] += val` as one sequentially consistent atomic read-modify-write."""
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):
        a = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", builder.gep(a.data, [args[1]]), args[2], "seq_cst")

    return sig, codegen


@intrinsic
def fence(typingctx):
    """A full (sequentially consistent) memory fence."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def futex(typingctx, arr, idx, op, val, timeout_ns):
    """futex(2) on the low 32 bits of `arr[idx]` (shared, not private: the board is mapped by
    several processes): FUTEX_WAIT sleeps while the word equals `val` (at most `timeout_ns`),
    FUTEX_WAKE wakes up to `val` sleepers. Returns the syscall's result."""
    sig = types.int64(arr, idx, op, val, timeout_ns)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        a = context.make_array(signature.args[0])(context, builder, args[0])
        addr = builder.ptrtoint(builder.gep(a.data, [args[1]]), i64)
        ts_type = ir.LiteralStructType([i64, i64])
        ts = cgutils.alloca_once(builder, ts_type)
        sec = builder.sdiv(args[4], ir.Constant(i64, 1_000_000_000))
        nsec = builder.srem(args[4], ir.Constant(i64, 1_000_000_000))
        builder.store(sec, builder.gep(ts, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 0)]))
        builder.store(nsec, builder.gep(ts, [ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 1)]))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64], var_arg=True), "syscall")
        zero = ir.Constant(i64, 0)
        return builder.call(fn, [ir.Constant(i64, _SYS_FUTEX), addr, args[2], args[3], builder.ptrtoint(ts, i64),
                                 zero, zero])

    return sig, codegen


HAVE_FUTEX = _SYS_FUTEX >= 0


@njit(cache=True, nogil=True)
def wait_at_least(board, word, target, spin_cycles, timeout_cycles):
    """Wait until `board[word] >= target`: spin for `spin_cycles`, then sleep in the kernel
    (futex on the counter, woken by `publish`; 20 us naps where there is no futex).

    `board[word + 1]` counts the sleepers, so a publisher makes the wake-up syscall only
    when someone sleeps. Returns the cycles waited, or -1 if the board was aborted or
    `timeout_cycles` went by.
    """
    if load_acquire(board, word) >= target:
        return 0
    t0 = cycles()
    while load_acquire(board, word) < target:
        waited = cycles() - t0
        if waited < spin_cycles:
            cpu_relax()
            continue
        if load_acquire(board, ABORT) != 0 or waited > timeout_cycles:
            return -1
        if HAVE_FUTEX:
            atomic_add(board, word + 1, np.int64(1))
            seen = load_acquire(board, word)
            if seen < target:  # the publisher's store and its read of the sleeper count are ordered with ours
                futex(board, word, np.int64(FUTEX_WAIT), seen & np.int64(0xFFFFFFFF), np.int64(SLEEP_NS))
            atomic_add(board, word + 1, np.int64(-1))
        else:
            usleep(np.int32(20))
    return cycles() - t0


@njit(cache=True, nogil=True)
def publish(board, word, value):
    """Set a partition's published-window counter and wake whoever sleeps on it."""
    store_release(board, word, np.int64(value))
    if HAVE_FUTEX:
        fence()
        if load_acquire(board, word + 1) > 0:
            futex(board, word, np.int64(FUTEX_WAKE), np.int64(0x7FFFFFFF), np.int64(0))


@njit(cache=True, nogil=True)
def _deliver_merged(board, slots, parity, first_step, window, d_base, K, pos, indptr, tgt, w, dch, buf, ge, gi):
    """Deliver one window's spikes of all K partitions in (step, global neuron) order.

    Partitions own ascending neuron ranges and each slot is sorted by key, so taking the
    partitions in turn within each step is the global order. Stored delays are steps
    beyond the shortest delay `d_base`, which is the window unless it is zero (then the
    window is one step and a zero delay goes into `ge`/`gi`, as in `kernels.deliver`).
    """
    ring = buf.shape[0]
    mask = np.int64(0xFFFFFFFF)
    for q in range(K):
        pos[q] = 0
    for t in range(first_step, first_step + window):
        first = (t + d_base) % ring  # the arrival slot of a stored delay of 0 (see kernels.deliver)
        for q in range(K):
            base = slots[q, parity]
            cnt = board[base]
            p = pos[q]
            while p < cnt:
                key = board[base + 1 + p]
                if (key >> 32) != t:
                    break
                j = key & mask
                if d_base == 0:
                    k.deliver_row_zero(indptr[j], indptr[j + 1], tgt, w, dch, buf, first, ge, gi)
                else:
                    k.deliver_row(indptr[j], indptr[j + 1], tgt, w, dch, buf, first)
                p += 1
            pos[q] = p


@njit(cache=True, nogil=True)
def run_board(n_windows, window, d_base, step0, pops, pidx, lo, v, ge, gi, de, di, refr, rng, buf, indptr, tgt, w, dch,
              src_steps, src_neurons, src_ptr, out_steps, out_neurons, fired, board, me, slots, sync,
              spin_cycles, timeout_cycles, chunk, done, waited):
    """Advance up to `n_windows` windows of partition `me`, exchanging spikes through `board`.

    Window numbers are global (`step0 // window` is this call's first). Writes own spikes
    to `chunk` as keys and returns their count, with the windows advanced in `done[0]`
    (fewer than asked when `chunk` could not hold another window's worst case) and adds
    the cycles spent waiting for other partitions to `waited[0]`; returns -1 - q if
    partition q did not publish in time or the board was aborted. The spin budget is
    fixed: halving it after each long wait (as adaptive mutexes do) was measured worse:
    a partition then sleeps through short imbalances and each window pays a futex wake-up
    (CUBA on two threads at load ~4.5: 10-15 us per window adaptive, 3.8-5.4 fixed, one
    partition 2.9-3.9).
    """
    K = slots.shape[0]
    pos = np.zeros(K, np.int64)
    has_sources = src_steps.shape[0] > 0
    worst = out_steps.shape[0]
    m = 0
    done[0] = 0
    for kk in range(n_windows):
        if m + worst > chunk.shape[0]:
            break
        s0 = step0 + kk * window
        wnd = s0 // window
        if wnd > 0:
            for q in range(K):
                c = wait_at_least(board, sync[q], wnd, spin_cycles, timeout_cycles)
                if c < 0:
                    return -1 - q
                waited[0] += c
            _deliver_merged(board, slots, (wnd - 1) & 1, s0 - window + 1, window, d_base, K, pos, indptr, tgt, w,
                            dch, buf, ge, gi)
        c = k.advance(pops, pidx, lo, s0, window, v, ge, gi, de, di, refr, rng, buf, src_steps, src_neurons, src_ptr,
                      out_steps, out_neurons, fired)
        base = slots[me, wnd & 1]
        for i in range(c):
            board[base + 1 + i] = (out_steps[i] << 32) | out_neurons[i]
        if has_sources:  # sources are appended after each step's neurons: restore key order
            board[base + 1:base + 1 + c] = np.sort(board[base + 1:base + 1 + c])
        board[base] = c
        publish(board, sync[me], wnd + 1)
        chunk[m:m + c] = board[base + 1:base + 1 + c]
        m += c
        done[0] = kk + 1
    return m


@dataclass(frozen=True)
class BoardLayout:
    """Where each partition's counter and slots lie in a board of int64 words."""

    words: int
    sync: np.ndarray  # (K,) word of each partition's published-window counter
    slots: np.ndarray  # (K, 2) first word of each slot: count, then keys

    @classmethod
    def of(cls, capacities: list[int]) -> BoardLayout:
        K = len(capacities)
        sync = np.array([LINE * (1 + q) for q in range(K)], np.int64)
        at = LINE * (1 + K)
        slots = np.zeros((K, 2), np.int64)
        for q, cap in enumerate(capacities):
            for b in range(2):
                slots[q, b] = at
                at += -(-(1 + cap) // LINE) * LINE
        return cls(at, sync, slots)


@njit(cache=True, nogil=True)
def _cycles_now():
    return cycles()


_CYCLES_PER_US: float | None = None


def cycles_per_us() -> float:
    """The cycle counter's rate, measured once against the monotonic clock (~2 ms)."""
    global _CYCLES_PER_US
    if _CYCLES_PER_US is None:
        _cycles_now()
        t0, c0 = time.perf_counter(), _cycles_now()
        while time.perf_counter() - t0 < 0.002:
            pass
        c1, t1 = _cycles_now(), time.perf_counter()
        _CYCLES_PER_US = max((c1 - c0) / ((t1 - t0) * 1e6), 1.0)
    return _CYCLES_PER_US


def capacity(window: int, lo: int, hi: int, n_sources: int) -> int:
    """Most spikes a partition can emit in one window: each neuron once per step, plus its sources."""
    return (hi - lo) * window + n_sources


def shm_path(tag: str) -> str:
    """A board file: in /dev/shm when there is one."""
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    return os.path.join(folder, f"reflexarc-brainsim-{tag}")


def new_tag() -> str:
    return uuid.uuid4().hex[:16]


class Board:
    """A board mapped in this process: a file every partition of a node opens, or anonymous memory."""

    def __init__(self, layout: BoardLayout, path: str | None = None):
        self.layout, self.path = layout, path
        nbytes = layout.words * 8
        if path is None:
            self._map = mmap.mmap(-1, nbytes)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < nbytes:
                    os.ftruncate(fd, nbytes)
                self._map = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        self.words = np.frombuffer(self._map, np.int64)

    def abort(self) -> None:
        publish(self.words, ABORT, 1)

    def published(self) -> np.ndarray:
        """Each partition's count of published windows."""
        return self.words[self.layout.sync].copy()

    def close(self, unlink: bool = False) -> None:
        self.words = None
        try:
            self._map.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes with it
            pass
        if unlink and self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


class _Stopped(Exception):
    """The bridge is closing: leave a blocked send or receive."""


class Bridge:
    """Carries windows between the boards of different nodes (one bridge per node).

    The transport is `pipeline.netchan` (the socket channel of `ray-shm`'s cross-node
    edges): one channel per ordered pair of nodes. A sender thread waits for each window of
    the node's own partitions and sends their slots, one Arrow batch of keys per partition,
    to every other node; a receiver thread per peer writes the windows it gets into the
    remote partitions' slots of this node's board and publishes them there. Both rules of
    the board hold: a remote window w is written only after every partition has published
    w-1 (its sender needed it), so nobody still reads slot w-2.
    """

    def __init__(self, board: Board, groups: list[list[int]], group: int):
        self.board, self.groups, self.group = board, groups, group
        self.local = groups[group]
        self.peers = [g for g in range(len(groups)) if g != group]
        self._listeners: dict = {}
        self._out: list = []
        self._in: list = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.sent_bytes = 0
        self._slice = int(0.1e6 * cycles_per_us())

    def listen(self, host: str) -> dict:
        """Listen for each peer's windows; returns {peer group: channel spec} for the driver."""
        from pipeline import netchan

        specs = {}
        for g in self.peers:
            sock, spec = netchan.listen(f"brainsim-{g}-to-{self.group}", host)
            self._listeners[g] = (sock, spec)
            specs[g] = spec
        return specs

    def connect(self, specs: dict) -> None:
        """Open a channel to every peer (`specs[h][g]`: where h reads g's windows) and accept theirs."""
        from pipeline import netchan

        for h in self.peers:
            self._out.append(netchan.open_channel(specs[h][self.group], "w", capacity=64))
        for g in self.peers:
            sock, spec = self._listeners[g]
            chan = netchan.open_channel(spec, "r", listener=sock)
            self._in.append(chan)
            t = threading.Thread(target=self._receive, args=(chan,), daemon=True, name="brainsim-bridge-in")
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._send, daemon=True, name="brainsim-bridge-out")
        t.start()
        self._threads.append(t)

    def _idle(self) -> None:
        if self._stop.is_set():
            raise _Stopped

    def _send(self) -> None:
        import pyarrow as pa

        lay, words = self.board.layout, self.board.words
        w = 0
        try:
            while not self._stop.is_set():
                for q in self.local:
                    while wait_at_least(words, lay.sync[q], w + 1, 0, self._slice) < 0:  # 0.1 s slices
                        if self._stop.is_set() or words[ABORT]:
                            return
                items = []
                for q in self.local:
                    base = lay.slots[q, w & 1]
                    keys = words[base + 1:base + 1 + int(words[base])]
                    items.append((f"partition-{q}", "spikes", pa.record_batch([pa.array(keys)], names=["key"]), w, 0))
                    self.sent_bytes += 8 * len(keys) * len(self._out)
                for chan in self._out:
                    chan.send(w, False, items, idle=self._idle)
                w += 1
        except _Stopped:
            return
        except Exception as exc:  # noqa: BLE001 - a lost peer: stop every partition of this node
            if not self._stop.is_set():
                self.error = exc
                self.board.abort()

    def _receive(self, chan) -> None:
        lay, words = self.board.layout, self.board.words
        try:
            while not self._stop.is_set():
                w, _finish, items = chan.recv(idle=self._idle)
                for node, _port, batch, _seq, _ingest in items:
                    q = int(node.rsplit("-", 1)[1])
                    keys = batch.column(0).to_numpy()
                    base = lay.slots[q, w & 1]
                    words[base + 1:base + 1 + len(keys)] = keys
                    words[base] = len(keys)
                    publish(words, lay.sync[q], w + 1)
        except _Stopped:
            return
        except Exception as exc:  # noqa: BLE001 - a lost peer: stop every partition of this node
            if not self._stop.is_set():
                self.error = exc
                self.board.abort()

    def close(self) -> None:
        self._stop.set()
        for chan in [*self._out, *self._in]:
            chan.abort()
        for t in self._threads:
            t.join(timeout=2)
        for chan in [*self._out, *self._in]:
            chan.close()
        for sock, _spec in self._listeners.values():
            sock.close()
