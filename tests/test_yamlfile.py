"""Every YAML file cloudsd reads is bounded: alias bombs, size, depth, duplicate keys, binary (item 10)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloudsd.config import resolve
from cloudsd.errors import ConfigError
from cloudsd.sync.manifest import load_manifest
from cloudsd.yamlfile import load_file
from tests.cli_helpers import run_in_process


def bomb(levels: int = 9) -> str:
    """The billion laughs: each level is a list of nine aliases of the level before."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_config_alias_bomb_is_refused_at_once(cloudsd_home: Path) -> None:
    cloudsd_home.mkdir(parents=True)
    (cloudsd_home / "config.yaml").write_text("provider: local\ngpu: &g [" + ",".join(["x"] * 9) + "]\n" +
                                              bomb().replace("a0:", "x0:"))
    started = time.monotonic()
    code, _, err = run_in_process("config", "show")
    assert time.monotonic() - started < 5
    assert code == 2 and "expands to more than" in err and "config.yaml:" in err, err


def test_a_manifest_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    manifest = tmp_path / "models.yaml"
    manifest.write_text(bomb() + "models: *a8\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than"):
        load_manifest(manifest)
    assert time.monotonic() - started < 5


def test_size_binary_recursion_depth_and_duplicates(tmp_path: Path) -> None:
    cases = {
        "big.yaml": ("models: []\n" + "# padding\n" * 200_000, "larger than"),
        "bin.yaml": ("models:\x00 []\n", "binary"),
        "self.yaml": ("a: &a [1, *a]\n", "refers to itself"),
        "deep.yaml": ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        "dup.yaml": ("provider: local\nport: 1\nprovider: runpod\n", "dup.yaml:3: duplicate key 'provider'"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_file(path)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"provider: local\nimage: caf\xe9\n")
    with pytest.raises(ConfigError, match="latin1.yaml:2: not UTF-8"):
        load_file(latin1)


def test_a_duplicate_setting_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("disk_gb: 40\ntimeouts:\n  boot: 10m\n  boot: 20m\n")
    with pytest.raises(ConfigError, match=r"c.yaml:4: duplicate key 'boot'"):
        resolve(file=path, environ={})


def test_anchors_in_moderation_still_work(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("base: &b {kind: lora}\nmodels:\n  - {<<: *b, source: civitai:1}\n  - {<<: *b, source: civitai:2}\n")
    assert [r.kind for r in load_manifest(path)] == ["lora", "lora"]
