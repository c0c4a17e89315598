"""Secrets never printed, in any form (issue 11, items 5 and 6: the CLI's one redaction point, model URLs)."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest

from cloudsd.core.sync import disk_gb_for
from cloudsd.redact import display_url, scrub, url_digest
from cloudsd.sync.manifest import ModelRequest
from cloudsd.sync.models import fetch_identity
from tests.cli_helpers import run_in_process

KEY = "rpa_TESTKEY0123456789abcdefXYZ"
ODD_KEY = "rpa_line1\r\nline2-ünïcode-0123456789"


@pytest.mark.parametrize("form", [
    KEY, repr(KEY), json.dumps(KEY), urllib.parse.quote(KEY), ODD_KEY, repr(ODD_KEY), json.dumps(ODD_KEY),
    urllib.parse.quote(ODD_KEY), urllib.parse.quote_plus(ODD_KEY), ODD_KEY.encode("unicode_escape").decode()])
def test_every_form_of_a_key_in_the_environment_is_masked(form: str) -> None:
    environ = {"RUNPOD_API_KEY": ODD_KEY if "line1" in form or "line1" in urllib.parse.unquote(form) else KEY}
    text = scrub(f"RunPod said: you sent {form} (HTTP 401)", environ=environ)
    assert "TESTKEY" not in text and "line2" not in text and "line1" not in text, text
    assert "***" in text


def test_echoed_bearer_tokens_and_token_parameters_are_masked() -> None:
    text = scrub("401: you sent Bearer abc.def-ghi, see https://x.test/f?a=1&token=s3cr3t-value#x", environ={})
    assert "abc.def" not in text and "s3cr3t" not in text
    assert "Bearer ***" in text and "token=***" in text


def test_the_cli_masks_a_key_echoed_in_an_error(cloudsd_home: Path) -> None:
    code, out, err = run_in_process("up", "--cuda", ODD_KEY, env={"RUNPOD_API_KEY": ODD_KEY})
    assert code == 2
    assert "line2" not in err and "ünïcode" not in err and "***" in err, err
    assert len(err.strip().splitlines()[-1]) < 300


def test_model_urls_are_printed_and_kept_without_query_or_userinfo() -> None:
    url = "https://user:pw@civitai.com/api/download/models/1?token=abcdef0123456789&type=Model"
    assert display_url(url) == "https://civitai.com/api/download/models/1?…"
    _, notes = disk_gb_for([ModelRequest(url, kind="lora")])
    assert notes and all("abcdef" not in n and "pw" not in n for n in notes)
    identity = fetch_identity(display_url(url), None, url)
    assert "abcdef" not in identity and "token" not in identity and url_digest(url) in identity
    assert display_url("http://[::1") == "http://…"


def test_a_bad_url_with_a_token_is_refused_without_printing_it(cloudsd_home: Path) -> None:
    code, _, err = run_in_process("up", "--provider", "local", "--yes",
                                  "--models", "https://host:99999/m.safetensors?token=abcdef0123456789")
    assert code == 2 and "abcdef" not in err and "internal error" not in err, err


def test_progress_notes_are_masked_too(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudsd.cli.progress import LiveReporter

    monkeypatch.setenv("VAST_API_KEY", "vast-key-0123456789abcdef")
    reporter = LiveReporter(quiet=True)
    reporter.quiet = False  # no spinner, but notes print
    reporter.note("vastai: Vast.ai said: bad key vast-key-0123456789abcdef (you sent Bearer vast-key-0123456789abcdef)")
    err = capsys.readouterr().err
    assert "0123456789" not in err and "***" in err, err
