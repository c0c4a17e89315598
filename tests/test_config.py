from __future__ import annotations

from pathlib import Path

import pytest

from cloudsd import config
from cloudsd.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_no_file(tmp_path: Path) -> None:
    settings = config.resolve(file=tmp_path / "none.yaml", environ={})
    assert settings["provider"] == "local"
    assert settings.source("provider") == "default"


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "port: 7000\ndisk_gb: 80\nui: forge\n")
    env = {"CLOUDSD_PORT": "7100", "CLOUDSD_DISK_GB": "90"}
    settings = config.resolve({"port": 7200}, file=file, environ=env)
    assert (settings["port"], settings.source("port")) == (7200, "flag --port")
    assert (settings["disk_gb"], settings.source("disk_gb")) == (90, "env CLOUDSD_DISK_GB")
    assert (settings["ui"], settings.source("ui")) == ("forge", f"{file}:3")
    assert settings.source("image") == "default"


def test_sections_and_durations(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "timeouts:\n  boot: 15m\n  ssh: 90\nlocal:\n  network: testnet\n")
    settings = config.resolve(file=file, environ={})
    assert settings["timeouts.boot"] == 900.0
    assert settings["timeouts.ssh"] == 90.0
    assert settings.section("local") == {"network": "testnet", "gpus": "auto"}
    assert settings.source("timeouts.ssh") == f"{file}:3"


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "provider: local\nprovder: runpod\n")
    with pytest.raises(ConfigError) as err:
        config.resolve(file=file, environ={})
    assert str(err.value).startswith(f"{file}:2: unknown setting 'provder'")
    assert "Did you mean 'provider'?" in str(err.value)


def test_unknown_nested_key(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "timeouts:\n  bot: 5m\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2: unknown setting 'timeouts.bot'.*'timeouts.boot'"):
        config.resolve(file=file, environ={})


def test_malformed_yaml_gives_file_and_line(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "provider: local\nport: 7860\n  image: x\n")
    with pytest.raises(ConfigError, match=rf"^{file}:3: not valid YAML"):
        config.resolve(file=file, environ={})


def test_bad_value_names_key(tmp_path: Path) -> None:
    file = write(tmp_path / "c.yaml", "port: http\n")
    with pytest.raises(ConfigError, match=r"c.yaml:1: port: .*got 'http'"):
        config.resolve(file=file, environ={})
    with pytest.raises(ConfigError, match=r"env CLOUDSD_PROVIDER: provider: expected one of"):
        config.resolve(file=tmp_path / "none", environ={"CLOUDSD_PROVIDER": "aws"})


def test_template_is_valid_and_documents_every_top_level_key(cloudsd_home: Path) -> None:
    path = config.init_file()
    settings = config.resolve(file=path, environ={})
    assert settings["provider"] == "local"
    text = path.read_text()
    for key in config.BY_KEY:
        assert key.split(".")[-1] in text, key
    with pytest.raises(ConfigError, match="already exists"):
        config.init_file()
