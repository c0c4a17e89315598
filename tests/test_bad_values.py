"""Every bad value in issue 11's list: one clear line naming the flag or file:line, exit non-zero, nothing
written, nothing rented. In process (the real entry point, errors to exit codes included), no Docker needed:
each is refused before any provider is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_in_process

FLAGS = [
    (["up", "--max-spend", "nan"], "--max-spend"),
    (["up", "--max-spend", "inf"], "--max-spend"),
    (["up", "--max-spend", "-1"], "--max-spend"),
    (["up", "--max-time", "100000000d"], "--max-time"),
    (["up", "--max-time", "1" * 400], "--max-time"),
    (["up", "--idle-stop", "9" * 400 + "s"], "--idle-stop"),
    (["up", "--disk", "-10"], "--disk"),
    (["up", "--disk", "0"], "--disk"),
    (["up", "--disk", "40.7"], "--disk"),
    (["up", "--min-reliability", "2"], "--min-reliability"),
    (["up", "--min-vram", "nan"], "--min-vram"),
    (["up", "--max-price", "-0.5"], "--max-price"),
    (["up", "--cuda", "abc"], "--cuda"),
    (["offers", "--limit", "-5"], "--limit"),
    (["offers", "--cuda", "12.4; rm -rf /"], "--cuda"),
    (["cost", "--since", "0001-01-01"], "--since"),
    (["cost", "--until", "99999-01-01"], "--until"),
    (["budget", "x", "--max-spend", "nan"], "--max-spend"),
]


@pytest.mark.parametrize(("args", "flag"), FLAGS, ids=[" ".join(a)[:40] for a, _ in FLAGS])
def test_bad_flags(args: list[str], flag: str, cloudsd_home: Path) -> None:
    code, out, err = run_in_process(*args)
    assert code == 2, (code, out, err)
    assert flag in err and "internal error" not in err and "Traceback" not in err
    assert not cloudsd_home.exists(), "nothing is written for a refused value"


CONFIGS = [
    ("disk_gb: 40.7\n", ":1:", "disk_gb"),
    ("watchdog:\n  gpu_busy_percent: -50\n", ":2:", "gpu_busy_percent"),
    ("provider: local\nprovider: runpod\n", ":2:", "duplicate key"),
    ("max_spend: .nan\n", ":1:", "max_spend"),
    ("max_time: 100000000d\n", ":1:", "max_time"),
    ("timeouts:\n  boot: 0\n", ":2:", "timeouts.boot"),
    ("runpod:\n  base_url: 'http://[::1'\n", ":2:", "runpod.base_url"),
    ("port: 7860.5\n", ":1:", "port"),
]


@pytest.mark.parametrize(("text", "line", "words"), CONFIGS, ids=[c[0][:30] for c in CONFIGS])
def test_bad_config_values(text: str, line: str, words: str, cloudsd_home: Path) -> None:
    cloudsd_home.mkdir(parents=True)
    config = cloudsd_home / "config.yaml"
    config.write_text(text)
    code, out, err = run_in_process("up", "--provider", "local", "--yes")
    assert code == 2, (code, out, err)
    assert f"{config}{line}" in err and words in err and "internal error" not in err, err
    assert sorted(p.name for p in cloudsd_home.iterdir()) == ["config.yaml"], "no ledger, no keys"


def test_binary_config_and_manifest(cloudsd_home: Path, tmp_path: Path) -> None:
    cloudsd_home.mkdir(parents=True)
    (cloudsd_home / "config.yaml").write_bytes(bytes(range(256)))
    code, _, err = run_in_process("config", "show")
    assert code == 2 and "config.yaml" in err and "internal error" not in err, err
    (cloudsd_home / "config.yaml").unlink()
    manifest = tmp_path / "m.yaml"
    manifest.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    code, _, err = run_in_process("up", "--provider", "local", "--manifest", str(manifest), "--yes")
    assert code == 2 and "m.yaml" in err and "internal error" not in err, err
    assert not (cloudsd_home / "ledger.sqlite3").exists()


@pytest.mark.parametrize("env", [{"RUNPOD_API_BASE_URL": "http://[::1"}, {"VAST_URL": "http://[::1"},
                                 {"CLOUDSD_MAX_SPEND": "nan"}, {"CLOUDSD_DISK_GB": "0"},
                                 {"CLOUDSD_MAX_TIME": "1" * 400}])
def test_bad_environment(env: dict[str, str], cloudsd_home: Path) -> None:
    code, _, err = run_in_process("up", "--provider", "local", "--yes", env=env)  # type: ignore[arg-type]
    assert code == 2 and f"env {next(iter(env))}" in err and "internal error" not in err, err
    assert not (cloudsd_home / "ledger.sqlite3").exists()


def test_bad_model_refs(cloudsd_home: Path) -> None:
    for ref in ("http://[::1", "https://host:99999/x", "~nouser-cloudsd/x.safetensors", "civitai:abc"):
        code, _, err = run_in_process("up", "--provider", "local", "--models", ref, "--yes")
        assert code == 2 and "internal error" not in err, (ref, err)
    assert not (cloudsd_home / "ledger.sqlite3").exists()


def test_home_that_is_a_file_or_names_no_user(tmp_path: Path) -> None:
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    code, _, err = run_in_process("init", env={"CLOUDSD_HOME": str(home)})
    assert code == 2 and "is a file" in err and "internal error" not in err, err
    for args in (["status"], ["status", "--json"], ["ls"], ["config", "show"], ["offers", "--provider", "local"]):
        code, _, err = run_in_process(*args, env={"CLOUDSD_HOME": str(home)})
        assert code == 2 and "is a file, not cloudsd's folder" in err and "internal error" not in err, (args, err)
    code, _, err = run_in_process("status", env={"CLOUDSD_HOME": "~nouser-cloudsd/x"})
    assert code == 2 and "CLOUDSD_HOME" in err and "internal error" not in err, err
