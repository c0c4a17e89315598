"""The pure decisions of sync: what to send, skip or resume; what to pull, skip or rename; which names are safe."""

from __future__ import annotations

import pytest

from cloudsd.sync.plan import (
    SPLIT_BYTES,
    LocalFile,
    LocalOutput,
    Pulled,
    RemoteFile,
    RemoteOutput,
    conflict_name,
    plan_pull,
    plan_push,
    safe_relpath,
)

BIG = SPLIT_BYTES * 2


def local(name: str, size: int = 100, sha: str | None = "aa", mtime: int = 5) -> LocalFile:
    return LocalFile(name, f"/here/{name}", f"/there/{name}", size, mtime, sha)


def test_push_skips_same_size_and_digest_sends_the_rest() -> None:
    files = [local("same"), local("other-digest"), local("other-size"), local("new")]
    remote = {"/there/same": RemoteFile("/there/same", 100, "aa"),
              "/there/other-digest": RemoteFile("/there/other-digest", 100, "bb"),
              "/there/other-size": RemoteFile("/there/other-size", 99)}
    assert [a.action for a in plan_push(files, remote)] == ["skip", "send", "send", "send"]


def test_push_asks_for_the_local_digest_only_when_the_size_matches() -> None:
    files = [local("a", sha=None), local("b", size=7, sha=None)]
    remote = {"/there/a": RemoteFile("/there/a", 100, "aa"), "/there/b": RemoteFile("/there/b", 100, "aa")}
    assert [a.action for a in plan_push(files, remote)] == ["hash", "send"]


def test_push_resumes_a_partial_file_from_the_same_local_file() -> None:
    f = local("big", size=BIG, mtime=9)
    note = {"identity": {"size": BIG, "mtime_ns": 9}, "prefix": 1000}
    (action,) = plan_push([f], {"/there/big": RemoteFile("/there/big", partial_size=5000, partial_note=note)})
    assert (action.action, action.start) == ("resume", 1000)


@pytest.mark.parametrize(("note", "partial_size"), [
    ({"identity": {"size": BIG, "mtime_ns": 8}, "prefix": 1000}, 5000),  # the local file changed since
    ({"identity": {"size": BIG, "mtime_ns": 9}, "prefix": 6000}, 5000),  # the note claims more than is there
    ({"identity": {"size": BIG, "mtime_ns": 9}, "prefix": BIG}, BIG),  # all of it: check it by sending again
    ({"identity": {"size": BIG, "mtime_ns": 9}}, 5000),  # no prefix noted
    (None, 5000),
])
def test_push_starts_over_when_the_partial_cannot_be_trusted(note: dict[str, object] | None,
                                                             partial_size: int) -> None:
    f = local("big", size=BIG, mtime=9)
    (action,) = plan_push([f], {"/there/big": RemoteFile("/there/big", partial_size=partial_size, partial_note=note)})
    assert (action.action, action.start) == ("send", 0)


def test_small_files_are_never_resumed() -> None:
    f = local("small", size=1000, mtime=9)
    note = {"identity": {"size": 1000, "mtime_ns": 9}, "prefix": 10}
    (action,) = plan_push([f], {"/there/small": RemoteFile("/there/small", partial_size=10, partial_note=note)})
    assert action.action == "send"


def out(rel: str, size: int = 10, mtime: int = 1, sha: str | None = None) -> RemoteOutput:
    return RemoteOutput(rel, size, mtime, sha)


def test_pull_once_and_only_once() -> None:
    pulled = {"a.png": Pulled(10, 1, "a.png")}
    actions = plan_pull([out("a.png"), out("b.png")], pulled, {})
    assert [(a.output.rel, a.action, a.target) for a in actions] == [("a.png", "skip", "a.png"),
                                                                     ("b.png", "pull", "b.png")]
    # changed on the machine since it was pulled: pulled again, under a new name, as the old copy is here
    actions = plan_pull([out("a.png", mtime=2)], pulled, {"a.png": LocalOutput(10)})
    assert [(a.action, a.target) for a in actions] == [("pull", "a (1).png")]


def test_pull_never_overwrites_a_different_local_file() -> None:
    here = {"x/a.png": LocalOutput(10, "local-digest"), "x/a (1).png": LocalOutput(3)}
    actions = plan_pull([out("x/a.png", sha="remote-digest")], {}, here)
    assert [(a.action, a.target) for a in actions] == [("pull", "x/a (2).png")]


def test_pull_recognises_the_same_file_and_asks_for_digests_first() -> None:
    assert plan_pull([out("a.png", sha="d")], {}, {"a.png": LocalOutput(10)})[0].action == "hash"
    assert plan_pull([out("a.png", sha="d")], {}, {"a.png": LocalOutput(10, "d")})[0].action == "same"
    assert plan_pull([out("a.png", size=11)], {}, {"a.png": LocalOutput(10)})[0].target == "a (1).png"


def test_pull_conflicts_are_case_insensitive() -> None:
    actions = plan_pull([out("A.png"), out("a.png")], {}, {})
    assert [a.target for a in actions] == ["A.png", "a (1).png"]


@pytest.mark.parametrize("rel", ["../x.png", "/etc/passwd", "a/../../x", "a//b.png", "", ".", "./a.png",
                                 "a\\..\\b.png", "C:/x.png", "nul\x00.png", ".hidden/a.png", "a/.b.png"])
def test_unsafe_names_are_refused(rel: str) -> None:
    assert safe_relpath(rel) is None
    assert plan_pull([out(rel)], {}, {})[0].action == "unsafe"


def test_safe_names_keep_their_folders() -> None:
    assert safe_relpath("txt2img-images/2026-11-29/00001-1.png") == "txt2img-images/2026-11-29/00001-1.png"


def test_conflict_name() -> None:
    assert conflict_name("d/a.png", set()) == "d/a (1).png"
    assert conflict_name("d/a.png", {"d/a (1).png", "d/a (2).png"}) == "d/a (3).png"
    assert conflict_name("noext", set()) == "noext (1)"
