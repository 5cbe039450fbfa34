"""The `edge`, `keys` and `fleet` sub-commands parse as documented and make working keys."""

from __future__ import annotations

import argparse

from cluster.fleet.cli import register as fleet_register
from edge.__main__ import main as edge_main
from edge.cli import register as edge_register
from edge.keys import authorized, load_secret


def _parser():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    edge_register(sub)
    fleet_register(sub)
    return p


def test_documented_command_lines_parse():
    p = _parser()
    a = p.parse_args(["edge", "run", "configs/edge_robot.yaml", "--manager", "tcp://127.0.0.1:5600",
                      "--name", "robot-7", "--tags", "a,b"])
    assert (a.name, a.tags, a.manager) == ("robot-7", "a,b", "tcp://127.0.0.1:5600")
    a = p.parse_args(["fleet", "rollout", "m.nir", "--version", "v2", "--fraction", "0.25", "--to", "tag:a"])
    assert (a.version, a.fraction, a.to) == ("v2", 0.25, "tag:a")
    for cmd in (["fleet", "serve"], ["fleet", "status", "--watch"], ["fleet", "deploy", "c.yaml", "--to", "r1"],
                ["fleet", "promote"], ["fleet", "rollback"], ["fleet", "stop"], ["fleet", "offload", "--op", "identity"],
                ["keys", "init", "k"], ["keys", "add", "k", "r9"]):
        assert callable(p.parse_args(cmd).func)


def test_keys_init_and_add_make_authorized_pairs(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert edge_main(["keys", "init", str(folder), "--agents", "r1,r2"]) == 0
    assert edge_main(["keys", "add", str(folder), "r3"]) == 0
    assert sorted(authorized(folder).values()) == ["admin", "r1", "r2", "r3"]
    assert "manager" not in authorized(folder).values()
    public, secret = load_secret(folder / "r3.key_secret")
    assert len(public) == len(secret) == 40
    assert (folder / "r3.key_secret").stat().st_mode & 0o077 == 0


def test_keys_init_refuses_to_overwrite_without_force(tmp_path, capsys):
    folder = tmp_path / "keys"
    assert edge_main(["keys", "init", str(folder), "--agents", "r1"]) == 0
    manager_key = (folder / "manager.key").read_bytes()
    assert edge_main(["keys", "init", str(folder), "--agents", "r1,r2"]) == 2
    err = capsys.readouterr().err
    assert "manager" in err and "admin" in err and "r1" in err and "--force" in err and "r2" not in err.split("for")[1]
    assert (folder / "manager.key").read_bytes() == manager_key and not (folder / "r2.key").exists()
    assert edge_main(["keys", "add", str(folder), "r1"]) == 2
    assert edge_main(["keys", "init", str(folder), "--agents", "r1,r2", "--force"]) == 0
    assert (folder / "manager.key").read_bytes() != manager_key and (folder / "r2.key").exists()


def test_fleet_deploy_and_rollout_check_locally_before_any_manager(tmp_path, capsys):
    from cluster.fleet.__main__ import main as fleet_main

    nowhere = ["--manager", "tcp://127.0.0.1:9", "--keys", str(tmp_path / "no-keys")]  # never contacted
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: u\nnodes:\n  a: {op: no_such_operator}\n")
    assert fleet_main(["deploy", str(empty), *nowhere]) == 2
    assert "empty" in capsys.readouterr().err
    assert fleet_main(["deploy", str(unknown), *nowhere]) == 2
    assert "no_such_operator" in capsys.readouterr().err
    model = tmp_path / "m.nir"
    model.write_bytes(b"x")
    for version in ("../../escape", "/abs/dir", "..", "."):
        assert fleet_main(["rollout", str(model), "--version", version, *nowhere]) == 2
        assert "version" in capsys.readouterr().err
    assert fleet_main(["rollout", str(model), "--version", "v2", "--canary", "150%", *nowhere]) == 2
    assert fleet_main(["rollout", str(model), "--version", "v2", "--canary", "../r1", *nowhere]) == 2
