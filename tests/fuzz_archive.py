#!/usr/bin/env python3
"""Fuzz target: any bytes as model.tar.gz end in a package or a clean refusal, never worse.

    python3 tests/fuzz_archive.py CORPUS_DIR -max_total_time=45   (atheris; libFuzzer options)

Each input is written as model/model.tar.gz in a fresh sandbox and packaged with
package(). A PackagingError is the expected refusal. Any other exception, a file
appearing anywhere in the sandbox but the output dir, or a package whose members
are not plain relative files and dirs is a finding. CORPUS_DIR is created if
missing and seeded with valid archives (each compression, links, dirs, ./ names),
so mutations reach deep into extraction; libFuzzer adds what it finds there.
tests/test_fuzz.py runs check_one() in the default suite on hypothesis-made inputs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import tarfile
import tempfile
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


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def check_one(data: bytes) -> None:
    """Package data as the model archive in a fresh sandbox; raise if anything is wrong."""
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
            return
        with tarfile.open(package, "r:gz") as tar:
            for info in tar:
                assert info.isreg() or info.isdir(), f"{info.name} is not a file or dir"
                parts = info.name.split("/")
                assert not info.name.startswith("/") and ".." not in parts, info.name


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
    for index, seed in enumerate(seed_corpus()):
        (corpus / f"seed{index}").write_bytes(seed)
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
