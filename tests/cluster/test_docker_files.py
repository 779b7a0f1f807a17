"""No Docker engine runs here: check what can be checked without one."""

from __future__ import annotations

import argparse
import pathlib
import re

import yaml

from node.config import add_node_arguments, config_from_args

ROOT = pathlib.Path(__file__).resolve().parents[2]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())


def node_config(command: list[str]):  # type: ignore[no-untyped-def]
    assert command[0] == "node"
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    return config_from_args(parser.parse_args(command[1:]))


def test_compose_runs_three_nodes_that_form_one_cluster() -> None:
    services = compose()["services"]
    nodes = {name: s for name, s in services.items() if name.startswith("node")}
    assert len(nodes) == 3
    configs = {name: node_config(s["command"]) for name, s in nodes.items()}
    raft_addrs = {name: f"{c.raft_host}:{c.raft_port}" for name, c in configs.items()}
    for name, cfg in configs.items():
        others = {addr for other, addr in raft_addrs.items() if other != name}
        assert set(cfg.peers) == others, f"{name} peers {cfg.peers} != {others}"
        assert cfg.redis_url == "redis://redis:6379/0"
        assert cfg.node_id == name
    # The architecture document's ports, published as is.
    published = sorted(p for s in nodes.values() for p in s["ports"])
    assert published == sorted(f"{p}:{p}" for p in (8080, 8081, 8082, 8083, 8084, 8085))
    assert {c.http_port for c in configs.values()} == {8080, 8082, 8084}


def test_compose_redis_has_aof_on() -> None:
    redis = compose()["services"]["redis"]
    cmd = " ".join(redis["command"])
    assert "--appendonly yes" in cmd
    assert redis["ports"] == ["6379:6379"]


def test_image_command_is_the_documented_one() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    entry = re.search(r'^ENTRYPOINT \["(.+?)"\]', dockerfile, re.M)
    cmd = re.search(r'^CMD \["(.+?)"\]', dockerfile, re.M)
    assert entry and cmd
    command = f"{entry.group(1)} {cmd.group(1)}"
    assert command == "dsched node"
    readme = (ROOT / "README.md").read_text()
    assert "docker compose -f docker/compose.yaml up" in readme
    assert "dsched node" in readme
    # The console script that the image runs exists in the package metadata.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dsched = "node.cli:main"' in pyproject
