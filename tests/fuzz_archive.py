#!/usr/bin/env python3
"""Fuzz target: any bytes as model.tar.gz end in a package or a clean refusal, never worse.

    python3 tests/fuzz_archive.py CORPUS_DIR -max_total_time=45   (atheris; libFuzzer options)

Each input is written as model/model.tar.gz in a fresh sandbox and packaged with
package(). A PackagingError is the expected refusal. Any other exception, a file
appearing anywhere in the sandbox but the output dir, or a package whose members
are not plain relative files and dirs is a finding. CORPUS_DIR is created if
missing and seeded with valid archives (each compression, links, dirs, ./ names,
PAX headers), so mutations reach deep into extraction; libFuzzer adds what it
finds there.

Bytes flipped inside a compressed stream only break its checksum, so most
mutants would never get past the decoder. mutate_tar() mutates the tar layer
instead: header fields (names, octal numbers, type letters, link targets) and
PAX records, with each header's checksum recomputed, and the result is
compressed again after mutation. The atheris run uses it as its custom mutator;
tests/test_fuzz.py drives check_one() with it and with hypothesis in the suite.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import random
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _seed_tar() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in [
            ("./", tarfile.DIRTYPE, ""),
            ("./weights.bin", tarfile.REGTYPE, "w" * 700),
            ("./sub/vocab.json", tarfile.REGTYPE, '{"a": 1}'),
            ("./sub/link", tarfile.SYMTYPE, "vocab.json"),
            ("./alias.bin", tarfile.LNKTYPE, "weights.bin"),
            ("./code/inference.py", tarfile.REGTYPE, "def model_fn(d): pass"),
            ("./données/" + "long" * 30 + ".bin", tarfile.REGTYPE, "a PAX path record"),
        ]:
            info = tarfile.TarInfo(name)
            info.type = kind
            data = payload.encode() if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def seed_corpus() -> list[bytes]:
    """Valid archives in every compression the script reads."""
    plain = _seed_tar()
    return [gzip.compress(plain, 6, mtime=0), bz2.compress(plain), lzma.compress(plain), plain]


# The tar-layer mutator: what a hostile or broken archive can say in its headers.
FIELDS = {  # name: (offset, length) in a ustar header block
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "type": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 8),
    "prefix": (345, 155),
}
VALUES = [
    b"",
    b"0",
    b"0000644\0",
    b"7777777\0",
    b"zzzzzzzzzzz\0",
    b"-0000001\0",
    b"\x80\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00",
    b"\xff" * 12,
    b"99999999999\0",
    b"../escape",
    b"/abs/path",
    b"a/../../b",
    b"sub/link/through",
    b"alias.bin",
    b"weights.bin",
    b"\xff\xfe not utf-8",
    b"a\nb\x1b[31m",
    b"ustar\x0000",
    b"ustar  \0",
]
TYPE_LETTERS = b"0125LKxgVDAZ3467S\0"
PAX_RECORDS = [
    b"path=../escape",
    b"path=/abs",
    b"path=a\x00b",
    b"linkpath=../../x",
    b"linkpath=/etc/passwd",
    b"size=99999999999999",
    b"size=-1",
    b"mtime=nan",
    b"mtime=1e400",
    b"mtime=-5",
    b"uid=x",
    b"GNU.sparse.map=0,1,x",
    b"GNU.sparse.size=12",
    b"hdrcharset=BINARY",
    b"path=" + "é".encode() * 40,
    b"comment=" + b"9" * 5000,
]


def header_offsets(tar: bytes) -> list[int]:
    """Where each header block of a tar stream starts, as far as its size fields can be read."""
    offsets, position = [], 0
    while position + 512 <= len(tar):
        block = tar[position : position + 512]
        if not block.strip(b"\0"):
            break
        offsets.append(position)
        try:
            size = int(block[124:136].strip(b" \0") or b"0", 8)
        except ValueError:
            break
        position += 512 + -(-size // 512) * 512
    return offsets


def mutate_tar(tar: bytes, rng: random.Random, edits: int) -> bytes:
    """edits mutations of the tar layer, every header still passing its checksum."""
    # Imported here, not at the top: under atheris, mims_package (which conftest
    # imports) must first be imported inside instrument_imports(), by main().
    from conftest import extended_entry, with_checksum

    from mims_package import _pax_record

    data = bytearray(tar)
    for _ in range(edits):
        offsets = header_offsets(bytes(data))
        if not offsets:
            break
        at = rng.choice(offsets)
        if rng.random() < 0.25:  # a PAX header with one odd record, before this member
            keyword, _, value = rng.choice(PAX_RECORDS).partition(b"=")
            data[at:at] = extended_entry(_pax_record(keyword, value))
            continue
        block = bytearray(data[at : at + 512])
        field = rng.choice(sorted(FIELDS))
        start, length = FIELDS[field]
        if field == "type":
            value = bytes([rng.choice(TYPE_LETTERS)])
        elif rng.random() < 0.8:
            value = rng.choice(VALUES)
        else:
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(length + 1)))
        block[start : start + length] = value[:length].ljust(length, b"\0")
        with_checksum(block)
        data[at : at + 512] = block
    return bytes(data)


def plain_tar(data: bytes) -> tuple[bytes, bool]:
    """The tar inside data and whether it was gzip'd; other compressions are left as they are."""
    if data[:2] == b"\x1f\x8b":
        try:
            return zlib.decompress(data, 16 + zlib.MAX_WBITS), True
        except zlib.error:
            return data, False
    return data, False


def mutated(data: bytes, rng: random.Random) -> bytes:
    """data with its tar layer mutated, compressed again (gzip) if it was, or by chance."""
    tar, was_gzip = plain_tar(data)
    result = mutate_tar(tar, rng, rng.randint(1, 3))
    if was_gzip or rng.random() < 0.5:
        return gzip.compress(result, 1, mtime=0)
    return result


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def check_one(data: bytes) -> str:
    """Package data as the model archive in a fresh sandbox; return "packaged" or "refused".

    Raises AssertionError (or whatever escaped the job) if anything is wrong.
    """
    import mims_package

    with tempfile.TemporaryDirectory(prefix="mims-fuzz-") as scratch:
        sandbox = Path(scratch)
        for name in ("model", "script", "work", "out"):
            (sandbox / name).mkdir()
        (sandbox / "model" / "model.tar.gz").write_bytes(data)
        before = _tree(sandbox)
        try:
            package = mims_package.package(
                sandbox / "model",
                sandbox / "script",
                sandbox / "out",
                work_dir=sandbox / "work",
                compression_level=1,
                threads=1,
            )
        except mims_package.PackagingError:
            package = None
        after = {name for name in _tree(sandbox) if not name.startswith("out/")}
        assert after == before, f"written outside staging: {sorted(after - before)}"
        if package is None:
            assert list((sandbox / "out").iterdir()) == [], "a refusal left output behind"
            return "refused"
        with tarfile.open(package, "r:gz") as tar:
            for info in tar:
                assert info.isreg() or info.isdir(), f"{info.name} is not a file or dir"
                parts = info.name.split("/")
                assert not info.name.startswith("/") and ".." not in parts, info.name
        return "packaged"


def raw_header_corpus(count: int = 32) -> list[bytes]:
    """Archives with odd headers (from the tar-layer mutator, fixed seeds): where fuzzing starts."""
    plain_and_gzip = [seed_corpus()[0], seed_corpus()[3]]
    return [mutated(plain_and_gzip[i % 2], random.Random(i)) for i in range(count)]


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    """atheris: half libFuzzer's byte mutations, half the tar-layer mutator's."""
    import atheris

    rng = random.Random(seed)
    if rng.random() < 0.5:
        return bytes(atheris.Mutate(data, max_size))
    return mutated(data, rng)[:max_size]


def main() -> None:
    import logging

    import atheris

    with atheris.instrument_imports():
        import mims_package

    logging.getLogger(mims_package.__name__).setLevel(logging.CRITICAL)
    corpus = next((Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if corpus is None:
        raise SystemExit("usage: fuzz_archive.py CORPUS_DIR [libFuzzer options]")
    corpus.mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(seed_corpus() + raw_header_corpus()):
        (corpus / f"seed{index}").write_bytes(seed)
    atheris.Setup(sys.argv, check_one, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
