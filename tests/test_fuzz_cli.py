"""Fuzz: a few hundred generated bad inputs through the real CLI entry point, in process (issue 11).

Every input here is invalid by construction, and each must end in one clear line with exit 2 (a usage or
config error): never `internal error`, never a hang past HANG_S, never exit 0, never a ledger or key written.
`up` runs with `--provider runpod` and no RunPod key: an input that slipped through validation would reach
the provider and exit 3, so a miss fails the test without anything being rented. Seeded: the same inputs on
every run. The tally is printed (`pytest -s`).
"""

from __future__ import annotations

import random
import signal
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloudsd.ledger import Ledger
from tests.cli_helpers import run_in_process

SEED = 20261206
HANG_S = 5.0
rng = random.Random(SEED)


@dataclass
class Case:
    kind: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    config: bytes | None = None
    files: dict[str, bytes] = field(default_factory=dict)  # name -> content, in the test's tmp folder
    machine: bool = False  # the ledger holds a running machine `box` (at an address where nothing listens)


JUNK = ["", " ", "nan", "NaN", "inf", "-inf", "+inf", "1e999", "-1", "-0.5", "abc", "0x10", "1,5", "１２", "\x00",
        "1\n2", "$(reboot)", "'; drop table machines; --", "[default]", "%s%s%n", "9" * 400]


def bad_numbers(integer: bool, low_ok: bool) -> list[str]:
    values = ["nan", "inf", "-inf", "1e999", "-1", "-10", "abc", "", "1,5", "0x10", "9" * 400, "\x00"]
    if integer:
        values += ["40.7", "1.5", "1e3"]
    if not low_ok:
        values += ["0"]
    return values


def bad_durations() -> list[str]:
    return ["", "abc", "-5m", "5x", "1h-1m", "1" * 400, "100000000d", "nan", "inf", "1e5m", "5 m m", "0", "0s",
            "9" * 30 + "h", "m", "h1", "1.h", "∞", "1d" * 30]


FLAG_VALUES: dict[tuple[str, ...], list[str]] = {
    ("up", "--max-spend"): bad_numbers(False, False),
    ("up", "--max-price"): [v for v in bad_numbers(False, True)] + ["1001"],
    ("up", "--min-vram"): bad_numbers(False, False),
    ("up", "--disk"): bad_numbers(True, False) + ["10001"],
    ("up", "--min-reliability"): bad_numbers(False, True) + ["2", "1.0001"],
    ("up", "--cuda"): ["abc", "12.4.1", "12,4", "1234", "", "-12", "12.4; rm -rf /", "v12", "１２.４"],
    ("up", "--port"): ["0", "65536", "-1", "http", "80.5", ""],
    ("up", "--max-time"): bad_durations(),
    ("up", "--idle-stop"): bad_durations(),
    ("up", "--idle-action"): ["pause", "", "STOP"],
    ("up", "--ui"): ["sdnext", "", "A1111"],
    ("offers", "--limit"): ["-5", "0", "abc", "1e9", "2.5", "100000"],
    ("offers", "--disk"): bad_numbers(True, False),
    ("cost", "--since"): ["0001-01-01", "99999-01-01", "yesterday", "2026-13-01", "2026-02-30", "", "\x00"],
    ("cost", "--until"): ["0001-01-01", "1900-01-01", "2026-1-1x", "2300-01-01"],
    ("budget", "box", "--max-spend"): bad_numbers(False, False),
    ("budget", "box", "--max-time"): bad_durations(),
    ("budget", "box", "--idle-stop"): bad_durations(),
}


def flag_cases() -> Iterator[Case]:
    for (*command, flag), values in FLAG_VALUES.items():
        for value in values:
            extra = ["--provider", "runpod", "--yes"] if command == ["up"] else []
            yield Case(f"flag {flag}", [*command, flag, value, *extra])


def bad_names(count: int) -> Iterator[str]:
    alphabet = string.ascii_lowercase + string.digits + "-"
    forbidden = "ABCXYZ_./\\ \n\r\t\x00:;@!$'\"`*?[]{}ü漢~"
    yield from ["", ".", "..", "../../home/.ssh", "a/b", "-box", "box-", "1box", "a" * 41, "a" * 300,
                "box\nssh-ed25519 AAAA evil", "Box", "box.", "~root"]
    for _ in range(count):
        base = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        how = rng.randrange(4)
        if how == 0:  # a forbidden character somewhere
            at = rng.randint(0, len(base))
            yield base[:at] + rng.choice(forbidden) + base[at:]
        elif how == 1:  # a digit or '-' first
            yield rng.choice(string.digits + "-") + base
        elif how == 2:  # too long
            yield "a" + rng.choice(alphabet[:26]) * rng.randint(40, 120)
        else:  # ends in '-'
            yield "a" + base + "-"


def name_cases() -> Iterator[Case]:
    for name in bad_names(50):
        yield Case("name", ["up", name, "--provider", "runpod", "--yes"])


CONFIG_BAD: dict[str, list[str]] = {
    "provider": ["aws", "''", "[local]", "{a: 1}", "1"],
    "ui": ["sdnext", "[a1111]", "null"],
    "port": ["0", "70000", "7860.5", "http", ".nan", "[1]", "true"],
    "disk_gb": ["40.7", "0", "-10", ".nan", ".inf", "1e999", "'40 GB'", "[40]", "10001"],
    "max_price": ["-1", ".nan", ".inf", "abc", "[1]", "1e999"],
    "max_spend": ["-1", "0", ".nan", ".inf", "abc", "{}"],
    "max_time": ["100000000d", "'" + "1" * 400 + "'", "-1", "abc", "0", ".inf"],
    "idle_stop": ["abc", "0s", "-5m", "[30m]"],
    "warn_at": ["0", "1.5", "-0.1", ".nan", "abc"],
    "gpu": ["{a: 1}", "1.5"],
    "image": ["[a, b]", "{a: 1}"],
    "keep_on_failure": ["maybe", "2", "[true]"],
    "idle_action": ["pause", "''"],
    "image_pull": ["always", "[]"],
}
SECTION_BAD: dict[tuple[str, str], list[str]] = {
    ("watchdog", "gpu_busy_percent"): ["-50", "0", "101", ".nan", "abc"],
    ("watchdog", "poll"): ["0", "-1", "abc", "100000000d"],
    ("timeouts", "boot"): ["0", "abc", "-1s", "'" + "9" * 400 + "'"],
    ("timeouts", "ssh"): ["0s", "[]"],
    ("runpod", "base_url"): ["'http://[::1'", "ftp://x", "'https://'", "'http://h:99999'", "'not a url'"],
    ("vastai", "base_url"): ["'http://[::1'", "file:///etc/passwd", "'https://h:-1/'"],
    ("local", "gpus"): ["some", "[all]"],
}


def bomb(levels: int, width: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def config_cases() -> Iterator[Case]:
    for key, values in CONFIG_BAD.items():
        for value in values:
            yield Case(f"config {key}", ["config", "show"], config=f"provider: local\n{key}: {value}\n".encode())
    for (section, key), values in SECTION_BAD.items():
        for value in values:
            yield Case(f"config {section}.{key}", ["config", "show"],
                       config=f"{section}:\n  {key}: {value}\n".encode())
    for levels in (6, 8, 10):
        yield Case("config alias bomb", ["config", "show"], config=("provider: local\n" + bomb(levels, 9)).encode())
    yield Case("config recursive alias", ["config", "show"], config=b"gpu: &g [a, *g]\n")
    yield Case("config duplicate key", ["config", "show"], config=b"port: 7860\nui: forge\nport: 7861\n")
    yield Case("config unknown key", ["config", "show"], config=b"provder: local\n")
    yield Case("config too big", ["config", "show"], config=b"provider: local\n" + b"#" * (2 << 20))
    yield Case("config deep", ["config", "show"], config=b"gpu: " + b"[" * 20000 + b"]" * 20000)
    yield Case("config latin-1", ["config", "show"], config=b"image: caf\xe9\n")
    yield Case("config top-level list", ["config", "show"], config=b"- provider: local\n")
    for _ in range(15):
        yield Case("config random bytes", ["config", "show"],
                   config=bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))) + b"\x00")
    for _ in range(10):  # printable garbage that is not `key: value` with a known key
        text = "".join(rng.choice(string.printable) for _ in range(rng.randint(5, 200)))
        yield Case("config random text", ["config", "show"], config=("zz_unknown: 1\n" + text).encode())


def manifest_cases() -> Iterator[Case]:
    texts = [
        "models: [1, 2]", "models: {source: x}", "models:\n  - kind: lora\n", "models:\n  - source: ''\n",
        "models:\n  - source: civitai:1\n    kind: potato\n", "models:\n  - source: civitai:1\n    sha256: xyz\n",
        "models:\n  - source: civitai:1\n    size: -5\n", "models:\n  - source: civitai:1\n    file: ../x\n",
        "models:\n  - source: civitai:1\n    colour: red\n", "models:\n  - source: civitai:abc\n",
        "models:\n  - source: 'http://[::1'\n", "models:\n  - source: hf:org/repo\n",
        "models:\n  - source: ~nouser-cloudsd/x.safetensors\n", "models:\n  - source: does-not-exist.safetensors\n",
        "models:\n  - source: civitai:1\n    source: civitai:2\n", "models: *nothing\n", "[unclosed",
        bomb(9, 9) + "models: *a8\n", "a: &a [*a]\nmodels: *a\n", "42", "models:\n  - source: 'gopher://x/y'\n",
    ]
    for text in texts:
        yield Case("manifest", ["up", "--provider", "runpod", "--yes", "--manifest", "m.yaml"],
                   files={"m.yaml": text.encode()})
    yield Case("manifest binary", ["up", "--provider", "runpod", "--yes", "--manifest", "m.yaml"],
               files={"m.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"})
    yield Case("manifest missing", ["up", "--provider", "runpod", "--yes", "--manifest", "nope.yaml"])


def ref_cases() -> Iterator[Case]:
    refs = ["http://[::1", "https://[::1/x", "https://host:99999/x", "https://", "http:///path", "civitai:",
            "civitai:12ab", "civitai:-1", "hf:", "hf:org", "hf:org/repo", "hf:org/repo/../x", "hf:org/repo/x@",
            "https://h/x#sha256=abc", "gopher://x/y", "s3://bucket/key", "ftp://h/x", "~nouser-cloudsd/x",
            "no/such/path.safetensors", "https://h/x\ny", "javascript:alert(1)", "https://user:pw@/x"]
    for ref in refs:
        yield Case("model ref", ["up", "--provider", "runpod", "--yes", "--models", ref])
        yield Case("model ref (sync)", ["sync", "models", "box", ref], machine=True)


def env_cases() -> Iterator[Case]:
    bad = {
        "RUNPOD_API_BASE_URL": ["http://[::1", "ftp://x", "not a url", "https://h:99999"],
        "VAST_URL": ["http://[::1", "gopher://h", "https://"],
        "CLOUDSD_DISK_GB": ["0", "40.7", "nan", "-1", "9" * 400],
        "CLOUDSD_MAX_SPEND": ["nan", "inf", "-1", "0"],
        "CLOUDSD_MAX_PRICE": ["nan", "-1", "1e999"],
        "CLOUDSD_MAX_TIME": ["1" * 400, "100000000d", "abc"],
        "CLOUDSD_PORT": ["0", "99999", "http"],
        "CLOUDSD_PROVIDER": ["aws", "RUNPOD"],
        "CLOUDSD_UI": ["sdnext"],
        "CLOUDSD_WARN_AT": ["0", "2", "nan"],
        "CLOUDSD_WATCHDOG_GPU_BUSY": ["-50", "101", "nan"],
        "CLOUDSD_BOOT_TIMEOUT": ["0", "-1s", "forever"],
        "CLOUDSD_KEEP_ON_FAILURE": ["maybe"],
        "CLOUDSD_HOME": ["~nouser-cloudsd/x"],
    }
    for var, values in bad.items():
        for value in values:
            yield Case(f"env {var}", ["config", "show"], env={var: value})
    for var in ("CLOUDSD_CIVITAI_BASE_URL", "HF_ENDPOINT"):
        for value in ("http://[::1", "ftp://x", "https://h:99999"):
            yield Case(f"env {var}", ["up", "--provider", "runpod", "--yes", "--models", "civitai:1"], env={var: value})
            yield Case(f"env {var} (sync)", ["sync", "models", "box", "hf:o/r/f.safetensors"], env={var: value},
                       machine=True)


def all_cases() -> list[Case]:
    return [*flag_cases(), *name_cases(), *config_cases(), *manifest_cases(), *ref_cases(), *env_cases()]


class Hang(BaseException):
    """Raised by the alarm: BaseException, so the CLI's own `except Exception` cannot swallow it."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def test_fuzz_bad_inputs(tmp_path: Path, cloudsd_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = all_cases()
    assert len(cases) >= 300
    monkeypatch.chdir(tmp_path)
    failures: list[str] = []
    tally: Counter[str] = Counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for number, case in enumerate(cases):
            home = tmp_path / f"home{number}"
            if case.config is not None:
                home.mkdir()
                (home / "config.yaml").write_bytes(case.config)
            for name, content in case.files.items():
                (tmp_path / name).write_bytes(content)
            if case.machine:
                ledger = Ledger(home / "ledger.sqlite3")
                ledger.reserve("box", "local", "img")
                ledger.update("box", status="running", provider_id="c1", ssh_host="127.0.0.1", ssh_port=9,
                              host_key="ssh-ed25519 AAAA", key_path=str(home / "none"))
                ledger.close()
            env = {"CLOUDSD_HOME": str(home), **case.env}
            signal.setitimer(signal.ITIMER_REAL, HANG_S)
            try:
                code, _, err = run_in_process(*case.args, env=env)  # type: ignore[arg-type]
            except Hang:
                code, err = -1, "hang"
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            written = sorted(p.name for p in home.rglob("*") if not (case.machine and p.name.startswith("ledger.")))
            written = written if home.exists() else []
            what = f"{case.kind}: {case.args!r} env={case.env!r}"
            if code == -1:
                failures.append(f"hang past {HANG_S} s: {what}")
                tally["hang"] += 1
            elif "internal error" in err or "Traceback" in err:
                failures.append(f"internal error: {what}: {err.strip()[-300:]}")
                tally["internal error"] += 1
            elif code == 0:
                failures.append(f"exit 0 for an invalid input: {what}")
                tally["wrong success"] += 1
            elif code != 2:
                failures.append(f"exit {code}, not 2 (refused too late?): {what}: {err.strip()[-300:]}")
                tally["refused late"] += 1
            elif written not in ([], ["config.yaml"]):
                failures.append(f"wrote {written} for an invalid input: {what}")
                tally["wrote something"] += 1
            elif not [line for line in err.strip().splitlines() if line][-1].lower().startswith("error"):
                failures.append(f"the error is not one line ending the output: {what}: {err.strip()[-300:]}")
                tally["not one line"] += 1
            else:
                tally["refused with one line"] += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    print(f"\nfuzz tally over {len(cases)} inputs (seed {SEED}): {dict(tally)}")
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n" + "\n".join(failures[:40])
