"""The admin side of the manager's socket: what `reflexarc fleet status|deploy|rollout` call."""

from __future__ import annotations

import json
from pathlib import Path

import zmq

from edge import keys as K
from edge import wire
from pipeline.errors import LinkError

REPLY_HEADER = 256 << 20  # a status reply lists every robot: larger than a robot's messages may be


def request(manager: str, keys: str, op: str, data: bytes | None = None, timeout_s: float = 5.0,
            identity: str = "admin", **head) -> dict:
    """Send one admin request to the manager and return its reply."""
    ctx = zmq.Context()
    sock = K.client_socket(ctx, zmq.DEALER, Path(keys) / f"{identity}.key_secret", Path(keys) / "manager.key")
    try:
        sock.connect(manager)
        wire.send(sock, b"admin", {"op": op, **head}, extra=[data] if data is not None else None)
        if not sock.poll(int(timeout_s * 1000)):
            raise LinkError(f"no answer from the fleet manager at {manager} within {timeout_s:.0f} s "
                            f"(is it running, and is '{identity}' an authorized key?)")
        kind, reply, _ = wire.parse(sock.recv_multipart(), max_header=REPLY_HEADER)
        return reply
    finally:
        sock.close(linger=0)
        ctx.term()


def status_table(report: dict):
    """The fleet table (rich) from a manager report."""
    from rich.table import Table

    t = Table(title=f"fleet: {len(report['agents'])} robots  {json.dumps(report['counters'])}")
    cols = ("name", "tags", "version", "model", "status", "loop Hz", "lat ms", "drops", "safe",
            "buffered", "link", "last seen s", "received", "p99 delay ms", "canary / problem")
    left = ("name", "tags", "version", "model", "status", "link", "canary / problem")
    for c in cols:
        t.add_column(c, justify="left" if c in left else "right", overflow="fold")
    for a in report["agents"]:
        link = {"up": "[green]up[/]", "lost": "[red]lost[/]"}.get(a["link"], a["link"])
        model = f"{a['model']} {a['model_hash'][:8]}" if a.get("model_hash") else a["model"]
        t.add_row(a["name"], ",".join(a["tags"]), a["version"], model, a["status"], f"{a['loop_hz']:.1f}",
                  f"{a['latency_ms']:.2f}", str(a["drops"]), str(a["safe_states"]), str(a["buffered"]), link,
                  "-" if a["last_seen_s"] is None else f"{a['last_seen_s']:.1f}", f"{a['received']:,}",
                  "-" if a["delay_p99_ms"] is None else f"{a['delay_p99_ms']:.1f}", problem(a))
    ro = report.get("rollout")
    if ro:
        t.caption = (f"rollout {ro['candidate']} ({ro['sha256'][:8]}) {ro['mode']} on {', '.join(ro['canary'])}"
                     + (f", promotes at agreement >= {ro['threshold']} over {ro['window']}" if ro["mode"] == "shadow"
                        else ""))
    elif report.get("rollouts"):
        last = report["rollouts"][-1]
        t.caption = f"last rollout: {last['verdict']} {last['candidate']}: {last['why']}"
    return t


def problem(row: dict) -> str:
    """The table's last column: a canary in progress, or why a config or model was refused."""
    c = row.get("canary")
    if c and not c.get("error"):
        return (f"[yellow]canary {c.get('version')}[/]: {c.get('agree', 0)}/{c.get('compared', 0)} agree, "
                f"p50 {c.get('shadow_p50_ms') or 0:.1f} vs {c.get('live_p50_ms') or 0:.1f} ms")
    for text in (c and c.get("error"), row.get("config_error"), row.get("model_error")):
        if text:
            return f"[red]{text[:300]}[/]"
    return ""
