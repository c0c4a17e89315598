"""The one credentials module: whether a cloud has a key is known without importing the vendor's module, and
every key found, from the environment or the vendor's own file, is masked in what cloudsd prints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cloudsd.cli.main import say_error
from cloudsd.providers.credentials import KEY_SOURCES, RUNPOD_KEY, VAST_KEY, has_key
from tests.cli_helpers import cloudsd
from tests.fakes.vast_server import FakeVast


def _user_home() -> Path:
    return Path(os.environ["HOME"])  # conftest points HOME (and XDG_CONFIG_HOME) into the test's tmp_path


def _write_vast_key(key: str) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "vastai" / "vast_api_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(key + "\n")
    return path


def _write_runpod_key(key: str) -> Path:
    path = _user_home() / ".runpod" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[default]\napi_key = "{key}"\n')
    return path


def test_has_key_reads_the_variable_and_the_vendors_files(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(KEY_SOURCES) == {"runpod", "vastai"}
    assert not has_key("runpod") and not has_key("vastai")
    assert has_key("vastai", explicit="from-a-flag-1234")
    _write_vast_key("vastfilekey1234")
    assert has_key("vastai") and not has_key("runpod")
    _write_runpod_key("rpa_FILEKEY1234")
    assert has_key("runpod")
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_BAD KEY")  # a key that cannot be one: the provider would refuse it
    assert not has_key("runpod")
    assert has_key("a-cloud-with-no-key-source")  # unknown here: left to its own module to say


@pytest.mark.parametrize("source, write", [(VAST_KEY, _write_vast_key), (RUNPOD_KEY, _write_runpod_key)])
def test_a_key_from_the_vendors_file_is_masked_in_error_lines(
        source: object, write: object, capsys: pytest.CaptureFixture[str]) -> None:
    key = "filesecret" + os.urandom(6).hex()  # nothing about it looks like a key to scrub's patterns
    path = write(key)  # type: ignore[operator]
    credential = source.resolve()  # type: ignore[attr-defined]
    assert (credential.key, credential.source) == (key, str(path))
    say_error(f"error: the server answered 'unknown key {key}' (HTTP 401); json: {json.dumps({'k': key})}")
    err = capsys.readouterr().err
    assert key not in err and err.count("***") == 2, err


def test_status_still_sweeps_a_cloud_whose_key_is_only_in_its_file(
        fake_vast: FakeVast, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAST_API_KEY")  # fake_vast sets it; the key now lives in vast-cli's file only
    _write_vast_key(fake_vast.api_key)
    (stray_id,) = fake_vast.seed_instances(1, label_prefix="cloudsd-orphan")
    result = cloudsd("status", "--json", check=True)
    rows = json.loads(result.stdout)
    assert [(r["provider"], r["provider_id"], r["stray"]) for r in rows] == [("vastai", str(stray_id), True)]
