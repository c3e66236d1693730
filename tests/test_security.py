"""Hostile model archives: every trick is refused cleanly and nothing lands outside staging."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest
from conftest import (
    Job,
    assert_refused,
    files_of,
    make_archive,
    tar_member,
    without_data_filter,
    write_tree,
)

import mims_package

SYM, HARD = tarfile.SYMTYPE, tarfile.LNKTYPE


@pytest.fixture(autouse=True, params=["with-data-filter", "own-checks-only"])
def data_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here runs twice: as the script runs on 3.8+, and as on 3.7 (no data_filter).

    tarfile's filter is a second net; without it the script's own checks must
    refuse every trick with their own messages.
    """
    if request.param == "own-checks-only":
        without_data_filter(monkeypatch)


def tree_snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "output" not in p.relative_to(root).parts[:1]}


def run_hostile(job: Job, members: list, *needles: str) -> None:  # type: ignore[type-arg]
    make_archive(job.model / "model.tar.gz", [tar_member("model.bin", b"m"), *members])
    write_tree(job.script, {"inference.py": ""})
    before = tree_snapshot(job.tmp)
    assert_refused(job.cli(), job, *needles)
    assert tree_snapshot(job.tmp) == before


def test_absolute_name(job: Job) -> None:
    run_hostile(job, [tar_member(str(job.tmp / "abs-evil"), b"x")], "absolute")
    assert not (job.tmp / "abs-evil").exists()


@pytest.mark.parametrize(
    "name", ["../evil", "../../../../evil", "a/../../evil", "./a/b/../../../evil"]
)
def test_dotdot_escape(job: Job, name: str) -> None:
    run_hostile(job, [tar_member(name, b"x")], repr(name), "outside")


def test_dotdot_that_stays_inside_is_fine(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [tar_member("a/../model.bin", b"m"), tar_member("b/./c/../d.bin", b"d")],
    )
    job.main()
    assert files_of(job.package) == {"model.bin": b"m", "b/d.bin": b"d"}


def test_symlink_then_write_through_it(job: Job) -> None:
    run_hostile(
        job,
        [
            tar_member("sub/x", b"x"),
            tar_member("link", type=SYM, linkname="sub"),
            tar_member("link/evil", b"through the link"),
        ],
        "'link/evil'",
        "goes through 'link'",
    )


def test_symlink_outside_then_write_through_it(job: Job) -> None:
    run_hostile(
        job,
        [
            tar_member("link", type=SYM, linkname="../../../../.."),
            tar_member("link/tmp/evil", b"x"),
        ],
        "'link'",
        "outside",
    )


def test_absolute_symlink(job: Job) -> None:
    run_hostile(
        job, [tar_member("passwd", type=SYM, linkname="/etc/passwd")], "'passwd'", "absolute"
    )


def test_symlink_escaping_through_an_earlier_symlink(job: Job) -> None:
    # Read by names alone, d/l/.. is d, inside; on disk d/l is the root, so d/l/../.. leaves it.
    run_hostile(
        job,
        [
            tar_member("d/l", type=SYM, linkname=".."),
            tar_member("e", type=SYM, linkname="d/l/../../secret"),
        ],
        "outside",
    )


def test_very_long_symlink_chain(job: Job) -> None:
    chain = [tar_member("link0", type=SYM, linkname="model.bin")]
    chain += [tar_member(f"link{i}", type=SYM, linkname=f"link{i - 1}") for i in range(1, 60)]
    run_hostile(job, chain, "more than 40 symlinks")


@pytest.mark.parametrize("target", ["../../../../etc/passwd", "/etc/passwd", "missing", "d"])
def test_bad_hard_links(job: Job, target: str) -> None:
    run_hostile(job, [tar_member("d/f", b"f"), tar_member("h", type=HARD, linkname=target)], "'h'")


def test_hard_link_inside_becomes_a_copy(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [tar_member("m.bin", b"weights"), tar_member("alias.bin", type=HARD, linkname="m.bin")],
    )
    job.main()
    assert files_of(job.package) == {"m.bin": b"weights", "alias.bin": b"weights"}


@pytest.mark.parametrize(
    ("kind", "word"),
    [
        (tarfile.CHRTYPE, "character device"),
        (tarfile.BLKTYPE, "block device"),
        (tarfile.FIFOTYPE, "FIFO"),
    ],
)
def test_devices_and_fifos(job: Job, kind: bytes, word: str) -> None:
    run_hostile(job, [tar_member("dev", type=kind, devmajor=1, devminor=3)], "'dev'", word)


def test_name_that_is_not_utf8(job: Job) -> None:
    info, data = tar_member("x", b"x")
    make_archive(job.model / "model.tar.gz", [])
    with tarfile.open(
        job.model / "model.tar.gz", "w:gz", format=tarfile.GNU_FORMAT, encoding="latin-1"
    ) as tar:
        info.name = "caf\xe9.bin"  # written as the single byte 0xE9
        import io

        tar.addfile(info, io.BytesIO(data))
    assert_refused(job.cli(), job, "not valid UTF-8")


def test_path_component_over_255_bytes(job: Job) -> None:
    run_hostile(job, [tar_member("d/" + "é" * 128, b"x")], "over 255 bytes")


def test_a_file_replacing_a_directory_is_refused(job: Job) -> None:
    run_hostile(
        job, [tar_member("d/f", b"f"), tar_member("d", b"now a file")], "'d'", "replace a directory"
    )


def test_writing_inside_a_file_is_refused(job: Job) -> None:
    run_hostile(
        job, [tar_member("f", b"file"), tar_member("f/g", b"x")], "'f/g'", "which is a file"
    )


def test_duplicates_the_later_one_wins(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("m.bin", b"first"),
            tar_member("m.bin", b"second"),
            tar_member("x", type=SYM, linkname="m.bin"),
            tar_member("x", b"file wins"),
            tar_member("y", b"file first"),
            tar_member("y", type=SYM, linkname="m.bin"),
            tar_member("d", type=tarfile.DIRTYPE),
            tar_member("d", type=tarfile.DIRTYPE),
            tar_member("d/f", b"f"),
        ],
    )
    job.main()
    assert files_of(job.package) == {
        "m.bin": b"second",
        "x": b"file wins",
        "y": b"second",
        "d/f": b"f",
    }


def test_hard_link_keeps_the_content_it_was_made_with(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("m.bin", b"old"),
            tar_member("keep", type=HARD, linkname="m.bin"),
            tar_member("m.bin", b"new"),
        ],
    )
    job.main()
    assert files_of(job.package) == {"m.bin": b"new", "keep": b"old"}


def test_nested_directory_links_cannot_multiply_the_tree(job: Job) -> None:
    """A 1 KB archive of links to links to directories would stage 2**24 entries."""
    members = [tar_member("d0/f", b"x")]
    for level in range(1, 25):
        for alias in "ab":
            members.append(tar_member(f"d{level}/{alias}", type=SYM, linkname=f"../d{level - 1}"))
    run_hostile(job, members, "expand it more than 10-fold", "model.tar.gz")


def test_link_errors_name_the_archive_not_the_staging_dir(job: Job) -> None:
    run_hostile(
        job, [tar_member("bad", type=SYM, linkname="missing")], "model.tar.gz/bad", "dangles"
    )


def test_a_few_aliases_of_a_directory_are_fine(job: Job) -> None:
    members = [tar_member(f"v3/part{i}.bin", b"w") for i in range(50)]
    members += [tar_member(name, type=SYM, linkname="v3") for name in ("latest", "stable", "prod")]
    make_archive(job.model / "model.tar.gz", members)
    job.main()
    assert len(files_of(job.package)) == 200


@pytest.mark.parametrize("target", ["../outside", "/etc"], ids=["climbing", "absolute"])
def test_an_escaping_symlink_is_refused_even_if_a_later_member_replaces_it(
    job: Job, target: str
) -> None:
    """Staging never sees this link (the file replaces it): only the extractor can refuse it."""
    run_hostile(
        job,
        [tar_member("esc", type=SYM, linkname=target), tar_member("esc", b"a file now")],
        "'esc'",
    )


def test_a_directory_in_place_of_a_symlink_then_a_file_again(job: Job) -> None:
    """Found by the hostile-archive property: a symlink, a dir, then a file, all one name."""
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("model.bin", b"m"),
            tar_member("a/b", type=SYM, linkname="a"),
            tar_member("a/b", type=tarfile.DIRTYPE),
            tar_member("a/b", b""),
        ],
    )
    assert_refused(job.cli(), job, "'a/b' would replace a directory")


def test_symlink_copies_count_against_the_copy_budget(job: Job) -> None:
    # 1 MiB of zeros and 120 links to it would plan 121 MiB: over 10 x 1 MiB + 100 MiB.
    links = [tar_member(f"copy{i}", type=SYM, linkname="zeros.bin") for i in range(120)]
    run_hostile(job, [tar_member("zeros.bin", bytes(1 << 20)), *links], "would copy", "10-fold")


def test_directory_symlink_copies_count_bytes_too(job: Job) -> None:
    links = [tar_member(f"view{i}", type=SYM, linkname="real") for i in range(120)]
    run_hostile(job, [tar_member("real/zeros.bin", bytes(1 << 20)), *links], "would copy")


@pytest.mark.parametrize("where", ["", "code/"])
def test_a_symlink_that_escapes_through_an_earlier_one_is_refused(job: Job, where: str) -> None:
    # Read alone, "here/.." stays inside; through the link "here" -> ".", it climbs out. In
    # code/, which the script input replaces, it would never be looked at again.
    members = [
        tar_member(f"{where}here", type=SYM, linkname="."),
        tar_member(f"{where}out", type=SYM, linkname="here/.." + ("/.." if where else "")),
    ]
    write_tree(job.script, {"inference.py": ""})
    run_hostile(job, members, f"'{where}out'", "points outside the archive")


def test_a_symlink_that_escapes_once_a_later_link_is_made_is_refused(job: Job) -> None:
    # "out" -> "later/.." is inside while "later" is a plain name; once "later" -> "." exists,
    # it climbs out. The finished tree is checked again.
    members = [
        tar_member("out", type=SYM, linkname="later/.."),
        tar_member("later", type=SYM, linkname="."),
    ]
    run_hostile(job, members, "'out'", "points outside the archive")


def test_a_symlink_named_like_an_excluded_directory_is_left_out(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("model.bin", b"m"),
            tar_member("gitdir/config", b"[remote] url = https://token@example.com/x"),
            tar_member(".git", type=SYM, linkname="gitdir"),
        ],
    )
    job.main()
    assert not any(name.startswith(".git") for name in files_of(job.package))


def test_a_hard_link_to_an_excluded_file_gets_its_bytes(job: Job) -> None:
    make_archive(
        job.model / "model.tar.gz",
        [
            tar_member("model.bin", b"m"),
            tar_member("__pycache__/cached.bin", b"cached bytes"),
            tar_member("kept.bin", type=HARD, linkname="__pycache__/cached.bin"),
        ],
    )
    job.main()
    assert files_of(job.package) == {"model.bin": b"m", "kept.bin": b"cached bytes"}
    assert job.leftovers() == []


@pytest.mark.parametrize("compression", ["gz", "bz2", "xz"])
def test_a_decompression_bomb_is_refused_past_the_ratio(
    job: Job, compression: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past DECODE_RATIO_AFTER decoded, at most MAX_DECODE_RATIO bytes a compressed byte.

    The bound is lowered to 1 MiB here, so that 16 MiB of zeros (a ratio over 1,000 in
    every format) stands for the 3 KB .tar.bz2 that decodes to 4.3 GB."""
    monkeypatch.setattr(mims_package, "DECODE_RATIO_AFTER", 1 << 20)
    zeros = [tar_member("zeros.bin", bytes(16 << 20))]
    archive = make_archive(job.model / "model.tar.gz", zeros, compression=compression)
    with pytest.raises(mims_package.PackagingError, match="decodes to more than 200 times"):
        job.main()
    assert job.leftovers() == []
    checked = mims_package.check_package(archive)
    assert any("decodes to more than 200 times" in f.message for f in checked.findings)
    noise = [tar_member("noise.bin", os.urandom(2 << 20)), tar_member("zeros.bin", bytes(1 << 19))]
    make_archive(job.model / "model.tar.gz", noise, compression=compression)
    job.main()  # real data, past the first MiB: well within the ratio
