"""The CLI: exit codes, one-sentence errors, summaries, and nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, **sink_params):
    cfg = {
        "name": "t",
        "nodes": {
            "src": {"op": "synthetic", "params": {"duration_s": 0.05, "batch_items": 1000}},
            "mid": {"op": "identity", "inputs": "src"},
            "sink": {"op": "count_sink", "inputs": "mid", "params": sink_params},
        },
    }
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _crash_config(tmp_path, name: str, **crash) -> tuple[Path, Path]:
    """synthetic -> crash_once(**crash) -> count_sink, written to NAME.yaml; returns (config, marker)."""
    marker = tmp_path / "marker"
    cfg = {
        "nodes": {
            "src": {"op": "synthetic", "params": {"duration_s": crash.pop("duration_s"), "batch_items": 1000}},
            "boom": {"op": "crash_once", "inputs": "src", "params": {**crash, "marker": str(marker)}},
            "sink": {"op": "count_sink", "inputs": "boom"},
        }
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, marker


def test_run_writes_summary_and_exits_zero(tmp_path, capsys):
    summary = tmp_path / "s.json"
    assert main(["run", str(_config(tmp_path)), "--summary", str(summary), "--quiet"]) == 0
    data = json.loads(summary.read_text())
    assert data["results"]["sink"]["items"] == 50_000
    sink = next(m for m in data["metrics"] if m["node"] == "sink")
    assert sink["e2e_latency"]["p50_ms"] is not None


def test_validate_lists_every_problem_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"nodes": {"a": {"op": "nope"}, "b": {"op": "identity", "inputs": "a"}, "c": {"op": "synthetic", "params": {"seed": "x"}}}}))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "a.op: unknown operator 'nope'" in err and "c.params.seed" in err
    assert "Traceback" not in err


def test_malformed_yaml_is_a_config_error(tmp_path, capsys):
    bad = tmp_path / "m.yaml"
    bad.write_text("nodes: [\n")
    assert main(["run", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_sink_that_cannot_write_fails_the_run_with_exit_1(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = _config(tmp_path, path=str(blocker / "sub" / "out.json"))
    assert main(["run", str(cfg), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "node 'sink' failed" in err and "cannot write" in err


def test_ops_lists_operators_as_json(capsys):
    assert main(["ops", "--json"]) == 0
    ops = {o["name"]: o for o in json.loads(capsys.readouterr().out)}
    assert ops["synthetic"]["outputs"] == {"out": "any"}
    assert ops["synthetic"]["params"]["properties"]["rate_hz"]["default"] == 1_000_000.0


def test_failed_ray_run_exits_1_and_leaves_no_process_behind(tmp_path):
    path, _ = _crash_config(tmp_path, "boom", duration_s=0.02, at_batch=2, mode="raise")
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rx", dir="/tmp"))  # Unix socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    code = "import pipeline.testing, sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(path), "--executor", "ray", "--quiet"],
        capture_output=True, text=True, env=env, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "node 'boom' failed" in proc.stderr and "injected failure" in proc.stderr
    deadline = time.time() + 20
    while time.time() < deadline:
        left = subprocess.run(["pgrep", "-f", str(ray_tmp)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"processes of the run still alive: {left}"


def test_compiled_run_of_its_own_session_leaves_no_semaphores_behind(tmp_path):
    # the raylet's compiled-graph channels create named semaphores in /dev/shm that even
    # ray.shutdown() leaves; a run that started its session removes them after it
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm")
    cfg = {
        "nodes": {
            "src": {"op": "synthetic", "params": {"duration_s": 0.02, "batch_items": 1000}},
            "a": {"op": "identity", "inputs": "src"},
            "sink": {"op": "count_sink", "inputs": "a"},
        }
    }
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rx", dir="/tmp"))  # Unix socket paths must stay short
    before = {p.name for p in Path("/dev/shm").glob("sem.*")}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", str(path), "--executor", "ray-compiled", "--quiet"],
        capture_output=True, text=True, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)}, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def dead(name: str) -> bool:
        return not Path(f"/proc/{name[len('sem.hdr'):].split('-', 1)[0]}").exists()

    left = sorted(n for n in {p.name for p in Path("/dev/shm").glob("sem.*")} - before if dead(n))
    assert not left, left[:4]


def test_a_crash_the_runtime_recovered_from_is_one_line_not_a_ray_traceback(tmp_path):
    path, marker = _crash_config(tmp_path, "crash", duration_s=0.05, at_batch=5, mode="exit")
    summary = tmp_path / "s.json"
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rx", dir="/tmp"))  # Unix socket paths must stay short
    code = "import pipeline.testing, sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(path), "--executor", "ray", "--summary", str(summary)],
        capture_output=True, text=True, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)}, timeout=240, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.exists()
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("recovered: ")]
    assert len(lines) == 1 and "stage 'boom' restarted after" in lines[0], proc.stderr[-2000:]
    assert "Unhandled error" not in proc.stderr and "Traceback" not in proc.stderr
    result = json.loads(summary.read_text())
    # every item counted once in the table, across the restart (the checkpoint carries the counts)
    nodes = {m["node"]: m for m in result["metrics"]}
    assert nodes["boom"]["items_in"] == nodes["sink"]["items_in"] == result["results"]["sink"]["items"] == 50_000
