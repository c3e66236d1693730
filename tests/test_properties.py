"""Property-based tests: random trees come back exactly; random hostile archives never escape."""

from __future__ import annotations

import argparse
import os
import random
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Union

import pytest
from conftest import make_archive, without_data_filter
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import mims_package
from mims_package import CHUNK_SIZE

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any character but "/" and NUL (and lone surrogates, which no file name can hold).
COMPONENT = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="/\x00"),
    min_size=1,
    max_size=12,
).filter(lambda name: name not in (".", ".."))
SIZES = st.sampled_from(
    [0, 1, 511, 512, 513, 32 * 1024 - 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1]
)


@st.composite
def files(draw: Any) -> tuple[int, bool, int]:
    """(size, executable, seed of the content)."""
    return draw(SIZES), draw(st.booleans()), draw(st.integers(0, 1000))


Tree = dict[str, Union[tuple[int, bool, int], "Tree"]]
TREES = st.recursive(
    st.dictionaries(COMPONENT, files(), max_size=3),
    lambda children: st.dictionaries(COMPONENT, st.one_of(files(), children), max_size=3),
    max_leaves=8,
)


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def materialize(tree: Tree, root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Create tree under root; return {relative name: (kind, normalized mode, bytes)}."""
    expected: dict[str, tuple[str, int, bytes]] = {}
    root.mkdir(parents=True, exist_ok=True)
    for name, node in tree.items():
        path = root / name
        if isinstance(node, dict):
            path.mkdir()
            expected[name] = ("dir", 0o755, b"")
            for child, value in materialize(node, path).items():
                expected[f"{name}/{child}"] = value
        else:
            size, executable, seed = node
            path.write_bytes(content(seed, size))
            path.chmod(0o750 if executable else 0o640)
            expected[name] = ("file", 0o755 if executable else 0o644, content(seed, size))
    return expected


def extracted(package: Path, dest: Path) -> dict[str, tuple[str, int, bytes]]:
    """Extract with tarfile's data filter; return what landed, as materialize() describes it."""
    with tarfile.open(package, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    found = {}
    for path in dest.rglob("*"):
        info = path.lstat()
        kind = (
            "dir"
            if stat.S_ISDIR(info.st_mode)
            else "file"
            if stat.S_ISREG(info.st_mode)
            else "other"
        )
        data = path.read_bytes() if kind == "file" else b""
        found[path.relative_to(dest).as_posix()] = (kind, stat.S_IMODE(info.st_mode), data)
    return found


def package(model: Path, out: Path, work: Path, epoch: str | None = None) -> Path:
    environ = {"SOURCE_DATE_EPOCH": epoch} if epoch else {}
    return mims_package.main(
        {"model_input": str(model)},
        {"package_output": str(out)},
        environ,
        # Any name may come up: nothing is excluded, and a file named id_rsa is just a name.
        argparse.Namespace(
            work_dir=str(work), compression_level=1, no_default_excludes=True, allow_secrets=True
        ),
    )


@SETTINGS
@given(tree=TREES)
def test_random_trees_round_trip_and_are_deterministic(tree: Tree) -> None:
    tree = {key: value for key, value in tree.items() if key not in ("code", "model.tar.gz")}
    tree["weights.bin"] = (100, False, 1)
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        (base / "work").mkdir()
        expected = materialize(tree, base / "loose")
        from_dir = package(base / "loose", base / "out-dir", base / "work", epoch="1")
        assert extracted(from_dir, base / "x-dir") == expected
        assert (
            package(base / "loose", base / "out-dir2", base / "work", epoch="1").read_bytes()
            == from_dir.read_bytes()
        )

        archive = base / "archived" / "model.tar.gz"
        archive.parent.mkdir()
        with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(expected):
                tar.add(base / "loose" / name, arcname=name, recursive=False)
        from_archive = package(archive.parent, base / "out-tar", base / "work", epoch="1")
        assert extracted(from_archive, base / "x-tar") == expected
        assert from_archive.read_bytes() == from_dir.read_bytes()
        assert list((base / "work").iterdir()) == []


# Every absolute path the hostile strategy can name lies under ABSOLUTE, so the leak check
# can look there: no member may ever reach it, through a name or through a link.
ABSOLUTE = "/tmp/mims-hostile-absolute"
NAMES = st.sampled_from(
    [
        "a",
        "b",
        "a/b",
        "a/b/c",
        "d",
        "d/e",
        "l",
        "l/x",
        "h",
        "./a",
        "c/../a",
        "../x",
        "../../x",
        "a/../../x",
        ABSOLUTE + "/x",
        "a//b",
        "code/x.py",
    ]
)
TARGETS = st.sampled_from(
    [
        "a",
        "a/b",
        "b",
        "l",
        "l/x",
        ".",
        "..",
        "../..",
        "../x",
        "b/../..",
        "d/../../x",
        ABSOLUTE + "/etc/passwd",
        ABSOLUTE,
        "",
        "h",
        "code",
    ]
)
MEMBERS = st.lists(
    st.one_of(
        st.tuples(st.just("file"), NAMES, st.binary(max_size=16)),
        st.tuples(st.just("dir"), NAMES, st.just(b"")),
        st.tuples(st.just("symlink"), NAMES, TARGETS),
        st.tuples(st.just("hardlink"), NAMES, st.one_of(NAMES, TARGETS)),
        st.tuples(st.sampled_from(["chr", "blk", "fifo"]), NAMES, st.just(b"")),
    ),
    min_size=1,
    max_size=8,
)
TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def hostile_archive(path: Path, members: list[tuple[str, str, Any]]) -> None:
    entries = []
    for kind, name, extra in members:
        info = tarfile.TarInfo(name)
        info.type = TYPES[kind]
        info.mode = 0o644
        data = b""
        if kind == "file":
            data = extra
            info.size = len(data)
        elif kind in ("symlink", "hardlink"):
            info.linkname = extra
        entries.append((info, data))
    make_archive(path, entries)


def snapshot(root: Path, skip: str) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not p.relative_to(root).as_posix().startswith(skip)
    }


def outcome(members: list[tuple[str, str, Any]]) -> str:
    """Package a hostile archive in a fresh sandbox; check nothing leaked; return the outcome."""
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        sandbox = base / "sandbox"
        (sandbox / "work").mkdir(parents=True)
        hostile_archive(sandbox / "model" / "model.tar.gz", members)
        before = snapshot(base, "sandbox/out")
        try:
            result: Path | None = package(sandbox / "model", sandbox / "out", sandbox / "work")
        except mims_package.PackagingError:
            result = None
        assert snapshot(base, "sandbox/out") == before, "something was written outside staging"
        assert not os.path.lexists(ABSOLUTE), f"something was written under {ABSOLUTE}"
        if result is None:
            assert not (sandbox / "out").exists()  # the output dir it made is removed too
            return "refused"
        with tarfile.open(result, "r:gz") as tar:
            for info in tar:
                assert info.isreg() or info.isdir(), info.name
                assert not info.name.startswith("/") and ".." not in info.name.split("/")
        dest = base / "extract" / "dest"
        dest.mkdir(parents=True)
        subprocess.run(["tar", "-xzf", str(result), "-C", str(dest)], check=True)
        assert snapshot(base / "extract", "dest") == set()
        return "packaged"


@settings(SETTINGS, max_examples=300)
@given(members=MEMBERS)
def test_hostile_archives_are_refused_or_packaged_safely(
    members: list[tuple[str, str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script's own checks alone (no tarfile data filter, as on 3.7) hold on every draw."""
    without_data_filter(monkeypatch)
    outcome(members)


def test_hostile_strategy_reaches_both_outcomes() -> None:
    """Guard the property above: its strategy draws archives that pass and ones refused (the
    first draw of each is enough: no shrinking)."""
    quick = settings(max_examples=200, database=None, deadline=None, phases=[Phase.generate])
    for wanted in ("packaged", "refused"):
        find(MEMBERS, lambda members, wanted=wanted: outcome(members) == wanted, settings=quick)
