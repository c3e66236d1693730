#!/usr/bin/env python3
"""Mutation check, run by hand: plant one realistic bug at a time and see whether a test fails.

    python3 tests/mutants.py                 every mutant (about 16 minutes on 2 cores)
    python3 tests/mutants.py fsync verify    only the mutants whose name contains a word

Each mutant is a list of exact source edits to mims_package.py, made in a copy of
the repository; the copy's tests that cover that part of the script then run with
pytest -x. A mutant is killed when they fail (or hang past TIMEOUT seconds), and
survives when they pass: a survivor is a bug the suite would not notice. The edits
must each match exactly once, so a refactor that moves the code is reported, not
silently skipped. The mutants cover what must never be wrong: safe extraction,
staging, verification, the gzip writer's framing, cleanup and failure handling.
It is not part of the suite or of CI; it exits 1 if anything survives.
"""

from __future__ import annotations

import ast
import functools
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180

EXTRACTION = ["tests/test_security.py", "tests/test_interpreters.py", "tests/test_properties.py"]
STAGING = [
    "tests/test_symlinks.py",
    "tests/test_layout.py",
    "tests/test_names.py",
    "tests/test_inputs.py",
]
VERIFICATION = ["tests/test_integrity.py", "tests/test_verification.py"]
GZIP = ["tests/test_gzip_writer.py", "tests/test_verification.py"]
CLEANUP = ["tests/test_faults.py", "tests/test_signals.py", "tests/test_inputs.py"]
FAILURES = ["tests/test_contract.py", "tests/test_faults.py", "tests/test_container.py"]
READER = ["tests/test_tar_reader.py", "tests/test_integrity.py", "tests/test_security.py"]
COMPAT = ["tests/test_tar_compat.py", "tests/test_tar_reader.py"]
LAYOUT = ["tests/test_layout.py", "tests/test_inputs.py"]
VERIFY = ["tests/test_verify_command.py"]
DRY_RUN = ["tests/test_dry_run.py"]
EVIDENCE = ["tests/test_evidence.py"]
SNAPSHOT = ["tests/test_snapshot.py", "tests/test_verification.py"]
CODE_CHECK = ["tests/test_code_check.py"]
SMOKE = ["tests/test_smoke.py"]
CREDENTIALS = ["tests/test_credentials.py"]
FORMAT = ["tests/test_tar_format.py"]
READ_AHEAD = ["tests/test_read_ahead.py", "tests/test_credentials.py", "tests/test_verification.py"]


@dataclass
class Mutant:
    name: str
    edits: list[tuple[str, str]]
    tests: list[str]


MUTANTS = [
    # Safe extraction: the script's own checks, each removed or weakened.
    Mutant(
        "extract: a leading '..' is ignored",
        [
            (
                '            if piece == "..":\n                if not parts:\n'
                "                    raise _points_outside(member, path)\n",
                '            if piece == "..":\n                if not parts:\n'
                "                    continue\n",
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: absolute names allowed",
        [('        if path.startswith("/"):\n', "        if False:\n")],
        EXTRACTION,
    ),
    Mutant(
        "extract: writing through a symlink allowed",
        [
            (
                'if index < len(pieces) - 1 and kind in ("symlink", "file"):',
                "if False:",
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: symlink targets unchecked",
        [("        self._resolve(parts[:-1], target, member)\n", "")],
        EXTRACTION,
    ),
    Mutant(
        "extract: absolute link targets allowed",
        [('        if not target or target.startswith("/"):', "        if not target:")],
        EXTRACTION,
    ),
    Mutant(
        "extract: hard links to anything",
        [
            (
                '        if node is not None and node.kind == "file" and target_parts != parts:',
                "        if node is not None:",
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: devices and FIFOs become files",
        [
            (
                "        raise PackagingError(\n"
                '            f"archive member {member.name!r} is a {member.kind}; "',
                '        return "file"\n        raise PackagingError(\n'
                '            f"archive member {member.name!r} is a {member.kind}; "',
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: a directory may be replaced",
        [
            (
                '        if existing.kind == "dir":\n            raise PackagingError(',
                '        if existing.kind == "never":\n            raise PackagingError(',
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: hard links may multiply the files without bound",
        [
            (
                "        if self.copied > LINK_EXPANSION_LIMIT * own + LINK_EXPANSION_ALLOWANCE:",
                "        if False:",
            )
        ],
        ["tests/test_tar_reader.py", "tests/test_security.py"],
    ),
    # The tar reader, shared by extraction and verification.
    Mutant(
        "reader: bytes after the end marker are not read (CRC unchecked, garbage allowed)",
        [
            (
                "        while True:\n            rest = self._take(IO_BLOCK_SIZE)",
                "        while False:\n            rest = self._take(IO_BLOCK_SIZE)",
            )
        ],
        READER,
    ),
    Mutant(
        "reader: a damaged header is read anyway",
        [("        if not _is_tar_header(block):\n", "        if False:\n")],
        READER,
    ),
    Mutant(
        "reader: one zero block is taken for the end",
        [("        if self._take(BLOCK_SIZE) != ZERO_BLOCK:", "        if False:")],
        READER,
    ),
    Mutant(
        "reader: no end marker needed",
        [
            (
                "            if len(block) < BLOCK_SIZE:\n                raise ArchiveError(",
                "            if len(block) < BLOCK_SIZE:\n                return\n"
                "                raise ArchiveError(",
            )
        ],
        READER,
    ),
    Mutant(
        "reader: extended headers of any size",
        [("        if size > MAX_EXTENDED_HEADER:", "        if False:")],
        READER,
    ),
    Mutant(
        "reader: names of any length",
        [("    if len(raw) > MAX_PATH_BYTES:", "    if False:")],
        READER,
    ),
    Mutant(
        "reader: PAX numbers unchecked",
        [
            (
                "            _pax_number(value, keyword, keyword in TIME_PAX_KEYWORDS)\n",
                "            pass\n",
            )
        ],
        READER,
    ),
    Mutant(
        "reader: sparse members accepted",
        [('        if keyword.startswith(b"GNU.sparse."):', "        if False:")],
        READER,
    ),
    Mutant(
        "reader: octal fields unchecked",
        [('    if digits.strip(b"01234567"):', "    if False:")],
        READER,
    ),
    Mutant(
        "decoder: data after a compressed stream allowed",
        [
            (
                '        raise ArchiveError("data follows the compressed stream")',
                "        return False",
            )
        ],
        [*VERIFICATION, *READER],
    ),
    # Staging: loose inputs.
    Mutant(
        "stage: a FIFO in a loose input is not refused",
        [
            (
                "            elif not stat.S_ISREG(info.st_mode):\n",
                "            elif False:\n",
            )
        ],
        STAGING,
    ),
    Mutant(
        "write: a planned file replaced by a symlink is followed",
        [('    | getattr(os, "O_NOFOLLOW", 0)\n    | getattr(os, "O_NONBLOCK", 0)', "    | 0")],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "write: a planned file replaced by a FIFO is read",
        [
            (
                "    if not stat.S_ISREG(info.st_mode):\n        if stamp",
                "    if False:\n        if stamp",
            )
        ],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "read ahead: a small file not checked after its read",
        [("            _check_regular(os.fstat(fd), path, member.stamp)", "            pass")],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: the reader's error taken for the end",
        [("                raise _reader_error(*values)", "                return")],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: frames that end early publish a part",
        [("    if len(written) != len(members):", "    if False:")],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: a frame's verdicts after its first dropped",
        [
            (
                "            for verdict in frame.verdicts:",
                "            for verdict in frame.verdicts[:1]:",
            )
        ],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: the hints searched in a frame's first text file alone",
        [
            (
                '    text = b"\\0".join(data for (_, data), is_plain in zip(files, plain)',
                '    text = b"".join(data for (_, data), is_plain in zip(files[:1], plain)',
            )
        ],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: UTF-16 text searched as plain text",
        [
            (
                '        and _text_encoding(data[:TEXT_PROBE]) == "utf-8"',
                "        and _text_encoding(data[:TEXT_PROBE]) is not None",
            )
        ],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: the files the named patterns read searched as plain text",
        [('        name.rpartition("/")[2] not in NAMED_SECRET_PATTERNS\n', "        True\n")],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: a stop not answered while the reader hangs",
        [
            (
                "                _check_stop()\n                continue\n            count",
                "                continue\n            count",
            )
        ],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: the reader left running when the job ends first",
        [("            os.kill(self._pid, signal.SIGKILL)", "            pass")],
        READ_AHEAD,
    ),
    Mutant(
        "read ahead: a reader stopped by a signal taken for a failure",
        [("        if signum in STOP_SIGNALS:", "        if False:")],
        READ_AHEAD,
    ),
    Mutant(
        "stage: a relative symlink may climb out",
        [
            (
                "            if not resolved:\n                raise PackagingError(",
                "            if not resolved:\n                continue\n"
                "                raise PackagingError(",
            )
        ],
        STAGING,
    ),
    Mutant(
        "stage: an absolute symlink may point outside",
        [("            if not _is_inside(real, root):", "            if False:")],
        STAGING,
    ),
    Mutant(
        "stage: directory loops not detected",
        [("                if key in ancestors:", "                if False:")],
        STAGING,
    ),
    Mutant(
        "stage: no expansion budget",
        [
            (
                "        if staged > EXPANSION_LIMIT * (self._entries or 0) + EXPANSION_ALLOWANCE:",
                "        if False:",
            )
        ],
        ["tests/test_security.py", *STAGING],
    ),
    Mutant(
        "stage: names not checked for UTF-8",
        [("                _check_name(entry_name, path)\n", "")],
        STAGING,
    ),
    # Verification.
    Mutant(
        "verify: the file's bytes are not compared with those written",
        [("        _check_same_bytes(self._result, self._written_sha256.hexdigest())\n", "")],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "verify: compares the content checksum only",
        [
            (
                "        if found != want:",
                "        if want is None or found.crc32 != want.crc32:",
            )
        ],
        VERIFICATION,
    ),
    Mutant(
        "verify: no fsync before the end is read back",
        [("        os.fsync(self._out.fileno())\n", "")],
        VERIFICATION,
    ),
    Mutant(
        "verify: the read-back decodes from memory, not from the file",
        [
            (
                "        self._out.write(data)\n        self._out.flush()\n",
                "        self._out.write(data)\n        self._out.flush()\n"
                "        _MEMORY.extend(data)\n",
            ),
            ("MAX_ANNOUNCED = 64\n", "MAX_ANNOUNCED = 64\n_MEMORY = bytearray()\n"),
            (
                "        self._written_sha256 = hashlib.sha256()\n",
                "        self._written_sha256 = hashlib.sha256()\n        _MEMORY.clear()\n",
            ),
            (
                "        more = os.pread(fd, size - len(data), offset + len(data))\n",
                "        more = bytes(_MEMORY[offset + len(data) : offset + size])\n",
            ),
        ],
        VERIFICATION,
    ),
    Mutant(
        "read-back: pieces not checked to join up",
        [
            (
                "        if piece.offset != self._offset or piece.window != self._tail:",
                "        if piece.offset != self._offset:",
            )
        ],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "read-back: a piece's CRC-32 not checked",
        [
            (
                "    if len(decoded) != piece.length or zlib.crc32(decoded) != piece.crc32:",
                "    if len(decoded) != piece.length:",
            )
        ],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "read-back: the end not checked",
        [("        if end != FINAL_BLOCK + trailer:", "        if False:")],
        ["tests/test_verification.py"],
    ),
    Mutant(
        "reader: padding skipped beyond the buffered bytes",
        [
            (
                "            if self._position + self._padding <= len(self._buffer):",
                "            if True:",
            )
        ],
        READER,
    ),
    Mutant(
        "reader: a member's CRC-32 taken from the buffered bytes only",
        [("        if end <= len(self._buffer):", "        if True:")],
        [*READER, *VERIFICATION],
    ),
    # The gzip writer's framing.
    Mutant(
        "gzip: no final block",
        [
            (
                "        self._out.write(FINAL_BLOCK + struct.pack(",
                "        self._out.write(struct.pack(",
            )
        ],
        GZIP,
    ),
    Mutant(
        "gzip: CRC combined with the wrong length",
        [
            (
                "        self._crc = crc32_combine(self._crc, crc, length)",
                "        self._crc = crc32_combine(self._crc, crc, length + 1)",
            )
        ],
        GZIP,
    ),
    Mutant(
        "gzip: trailer length off by one",
        [
            (
                'struct.pack("<II", self._crc, self.size & 0xFFFFFFFF)',
                'struct.pack("<II", self._crc, (self.size + 1) & 0xFFFFFFFF)',
            )
        ],
        GZIP,
    ),
    Mutant(
        "gzip: chunks not primed with the window before them",
        [("        self._window = bytes(chunk[-WINDOW_SIZE:])", '        self._window = b""')],
        GZIP,
    ),
    Mutant(
        "gzip: no cap on chunks in flight",
        [("        if len(self._in_flight) >= self._max_in_flight:", "        if False:")],
        GZIP,
    ),
    Mutant(
        "gzip: pieces end with a final block",
        [("deflate.flush(zlib.Z_SYNC_FLUSH)", "deflate.flush(zlib.Z_FINISH)")],
        GZIP,
    ),
    # What ships.
    Mutant(
        "ship: excludes ignored",
        [
            (
                "                if excludes is not None and excludes.leaves_out(",
                "                if False and excludes.leaves_out(",
            )
        ],
        ["tests/test_shipping.py"],
    ),
    Mutant(
        "credentials: the bytes a small file is written with not screened",
        [
            (
                "        verdicts = _screen_whole_files(self._files) if self._screened else []",
                "        verdicts = []",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: the bytes a larger file is written with not screened",
        [
            (
                "            if scan is not None:\n                scan.feed(block)\n"
                "            sink.write(block)",
                "            sink.write(block)",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: names not screened",
        [("            self._report(name, _credential_name(name))", "            pass")],
        CREDENTIALS,
    ),
    Mutant(
        "layout: a file beside code/ counted as code",
        [('bisect.bisect_left(names, name + "0"))', 'bisect.bisect_left(names, name + "1"))')],
        ["tests/test_layout.py"],
    ),
    Mutant(
        "ship: mtimes from the inputs by default",
        [
            (
                "        mtime = self._fixed\n        if self._keep_mtimes:",
                "        mtime = self._fixed\n        if True:",
            )
        ],
        ["tests/test_shipping.py", "tests/test_names.py"],
    ),
    # Cleanup.
    Mutant(
        "cleanup: the staging dir is left behind",
        [("            _remove_tree(path)\n", "            pass\n")],
        CLEANUP,
    ),
    Mutant(
        "cleanup: the partial package is left behind",
        [
            (
                "        with contextlib.suppress(FileNotFoundError):\n            path.unlink()",
                "        pass",
            )
        ],
        CLEANUP,
    ),
    Mutant(
        "cleanup: an output dir made by a failed run is left behind",
        [("                directory.rmdir()\n", "                pass\n")],
        CLEANUP,
    ),
    # Failure handling.
    Mutant(
        "failure: no message file for SageMaker",
        [('        path.write_text(message, encoding="utf-8")', "        pass")],
        FAILURES,
    ),
    Mutant(
        "failure: the message is not cut to 1 KiB",
        [
            (
                '    return " ".join(words).encode("utf-8")[:limit]',
                '    return " ".join(words).encode("utf-8")',
            )
        ],
        FAILURES,
    ),
    Mutant(
        "failure: always taken for a processing job",
        [
            (
                "    return Path(JOB_CONFIG_PATH).exists() or Path(FAILURE_MESSAGE_PATH)",
                "    return True or Path(JOB_CONFIG_PATH).exists() or Path(FAILURE_MESSAGE_PATH)",
            )
        ],
        FAILURES,
    ),
    Mutant(
        "failure: a stop signal is never acted on",
        [
            (
                "    if _STOP.signum is not None:\n        raise _Stopped",
                "    if False:\n        raise _Stopped",
            )
        ],
        ["tests/test_signals.py", "tests/test_faults.py"],
    ),
    Mutant(
        "failure: a stop exits 1, not 128 + signal",
        [
            (
                "    except _Stopped as exc:\n        return 128 + exc.signum",
                "    except _Stopped as exc:\n        return 1",
            )
        ],
        ["tests/test_signals.py", "tests/test_faults.py"],
    ),
    Mutant(
        "failure: an error exits 0",
        [
            (
                "    except Exception:\n        return 1\n",
                "    except Exception:\n        return 0\n",
            )
        ],
        FAILURES,
    ),
    # Untrusted inputs, round two: each new check weakened or removed.
    Mutant(
        "reader: the ustar prefix only with version 00",
        [("block[257:263] == POSIX_MAGIC", 'block[257:265] == b"ustar\\x0000"')],
        COMPAT,
    ),
    Mutant(
        "reader: consecutive PAX headers merged",
        [
            (
                "                    pax = _pax_records(data)",
                "                    pax.update(_pax_records(data))",
            )
        ],
        COMPAT,
    ),
    Mutant(
        "reader: Solaris X read as a file",
        [
            (
                "                if typeflag in (PAX_HEADER_TYPE, SOLARIS_PAX_TYPE):",
                "                if typeflag == PAX_HEADER_TYPE:",
            )
        ],
        COMPAT,
    ),
    Mutant(
        "reader: old-style directories read as files",
        [('        if kind == "file" and name.endswith("/"):', "        if False:")],
        COMPAT,
    ),
    Mutant(
        "reader: base-256 decoded little-endian",
        [
            (
                '        value = int.from_bytes(field[1:], "big")',
                '        value = int.from_bytes(field[1:], "little")',
            )
        ],
        [*READER, "tests/test_tar_compat.py"],
    ),
    Mutant(
        "reader: negative numbers allowed in any field",
        [("        if not signed:\n", "        if False:\n")],
        READER,
    ),
    Mutant(
        "reader: a checksum parsed by int(x, 8)",
        [
            (
                '    digits = _c_string(field).strip(b" ")\n'
                '    if not digits or digits.strip(b"01234567"):',
                '    digits = field.strip(b" \\0").replace(b"0o", b"")\n    if not digits:',
            )
        ],
        COMPAT,
    ),
    Mutant(
        "reader: extended headers unbounded in a row",
        [("            if extended > MAX_EXTENDED_IN_A_ROW:", "            if False:")],
        READER,
    ),
    Mutant(
        "reader: PAX records unbounded in number",
        [("        if count > MAX_PAX_RECORDS:", "        if False:")],
        READER,
    ),
    Mutant(
        "reader: the name bound off by one",
        [("    if len(raw) > MAX_PATH_BYTES:", "    if len(raw) >= MAX_PATH_BYTES:")],
        READER,
    ),
    Mutant(
        "reader: a '-' accepted in PAX size, uid and gid",
        [('    if whole.startswith(b"-") and fraction:', '    if whole.startswith(b"-"):')],
        READER,
    ),
    Mutant(
        "reader: a PAX record's newline not checked",
        [('data[end - 1 : end] != b"\\n" or ', "")],
        READER,
    ),
    Mutant(
        "xz: no memory limit",
        [("lzma.FORMAT_XZ, memlimit=XZ_MEMORY_LIMIT", "lzma.FORMAT_XZ")],
        COMPAT,
    ),
    Mutant(
        "xz: any check accepted",
        [("        if check not in XZ_CHECKS:", "        if False:")],
        COMPAT,
    ),
    Mutant(
        "xz: no padding between streams",
        [("        between = self._is_xz and padding % 4 == 0", "        between = False")],
        COMPAT,
    ),
    Mutant(
        "extract: the finished tree's symlinks not checked again",
        [('            self._resolve(name.split("/")[:-1], target, name)\n', "            pass\n")],
        EXTRACTION,
    ),
    Mutant(
        "extract: a symlink's target read without the links on the way",
        [('            if node is not None and node.kind == "symlink":', "            if False:")],
        EXTRACTION,
    ),
    Mutant(
        "extract: a symlink named like an excluded directory kept",
        [
            (
                '        if self._excluded(parts, kind in ("dir", "symlink")):',
                '        if self._excluded(parts, kind == "dir"):',
            )
        ],
        EXTRACTION,
    ),
    Mutant(
        "extract: excluded files not held for hard links",
        [("        if node is None and target_name in self._held:", "        if False:")],
        EXTRACTION,
    ),
    Mutant(
        "stage: symlink copies free",
        [
            (
                "                elif through_link or is_link:\n"
                "                    budget.add(info.st_size)\n",
                "                elif False:\n                    pass\n",
            )
        ],
        [*EXTRACTION, "tests/test_security.py"],
    ),
    Mutant(
        "snapshot: directories opened through symlinks",
        [
            (
                '    getattr(os, "O_PATH", os.O_RDONLY)'
                "  # O_PATH: a directory one may search but not list\n"
                '    | getattr(os, "O_DIRECTORY", 0)\n    | getattr(os, "O_NOFOLLOW", 0)\n',
                '    getattr(os, "O_PATH", os.O_RDONLY)\n    | getattr(os, "O_DIRECTORY", 0)\n',
            )
        ],
        SNAPSHOT,
    ),
    Mutant(
        "snapshot: a file not checked after it is read",
        [("        _check_unchanged(fd, member.path, member.stamp)  # a change of size too\n", "")],
        SNAPSHOT,
    ),
    Mutant(
        "snapshot: a listed directory not checked to be the one found",
        [("            if (info.st_dev, info.st_ino) != key:", "            if False:")],
        SNAPSHOT,
    ),
    Mutant(
        "snapshot: the model archive opened blocking",
        [('    | getattr(os, "O_NONBLOCK", 0)\n', "")],
        SNAPSHOT,
    ),
    Mutant(
        "credentials: .env.* files not caught by name",
        [
            (
                '    env_file = base.startswith(".env.") or base.endswith(".env")',
                '    env_file = base.startswith(".env.")',
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: a secret after '=' not seen",
        [
            (
                'AWS_SECRET_KEY = re.compile(rb"(?<![A-Za-z0-9/+])',
                'AWS_SECRET_KEY = re.compile(rb"(?<![A-Za-z0-9/+=])',
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "stops: main() and package() do not watch for signals",
        [
            ("@_stop_on_signals()\ndef main(", "def main("),
            ("@_stop_on_signals()\ndef package(", "def package("),
        ],
        ["tests/test_signals.py"],
    ),
    Mutant(
        "logs: format characters not escaped",
        [
            (
                '_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs", "Zl", "Zp")',
                '_ESCAPED_CATEGORIES = ("Cc", "Zl", "Zp")',
            )
        ],
        FAILURES,
    ),
    Mutant(
        "early: a directory to write in not probed first",
        [("    _check_writable(existing, what)\n", "")],
        ["tests/test_faults.py"],
    ),
    # Layout: the mistakes that break endpoints.
    Mutant(
        "layout: one top folder not flagged",
        [
            (
                '    if len(tops) != 1 or any("/" not in name for name in model_names):',
                "    if True:",
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "layout: --strip-components strips nothing",
        [('        return "/".join(pieces[self.strip_components :])', "        return name")],
        LAYOUT,
    ),
    Mutant(
        "layout: hard link targets not stripped",
        [
            (
                "        target = self._stripped(member.linkname, member.name)",
                "        target = member.linkname",
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "layout: a missing explicit entry point only warns",
        [("    if entry_point is not None:\n        raise", "    if False:\n        raise")],
        LAYOUT,
    ),
    Mutant(
        "layout: entry points outside code/ accepted",
        [('        entry_point.startswith("/")\n        or ".." in parts\n', "        False\n")],
        LAYOUT,
    ),
    Mutant(
        "layout: swapped loose inputs not checked",
        [("    if found is not None:\n        raise", "    if False:\n        raise")],
        LAYOUT,
    ),
    Mutant(
        "layout: a model of archives alone ships",
        [
            (
                "    if archives is None:\n        return\n    advice",
                "    if True:\n        return\n    advice",
            )
        ],
        LAYOUT,
    ),
    # --verify: each check on any package.
    Mutant(
        "verify: links pass",
        [
            (
                '        if member.kind not in ("file", "dir"):',
                '        if member.kind not in ("file", "dir", "symlink", "hardlink"):',
            )
        ],
        VERIFY,
    ),
    Mutant(
        "verify: setuid passes",
        [('    (stat.S_ISUID, "setuid"),\n', "")],
        VERIFY,
    ),
    Mutant(
        "verify: duplicate names pass",
        [
            (
                "        if name in self.names and not (is_dir and self.names[name]):",
                "        if False:",
            )
        ],
        VERIFY,
    ),
    Mutant(
        "verify: code not read for credentials",
        [
            (
                "        for piece in reader.data():\n            scan.feed(piece)\n",
                "        for piece in reader.data():\n",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "verify: a damaged file passes",
        [
            (
                '            review.add("FAIL", "integrity", "", str(exc))',
                '            review.add("PASS", "integrity", "", str(exc))',
            )
        ],
        VERIFY,
    ),
    Mutant(
        "verify: any sha256 expected passes",
        [("        same = want.lower() == digest", "        same = True")],
        VERIFY,
    ),
    # --dry-run: the same verdicts as the real run, from what the archive holds.
    Mutant(
        "dry run: a dangling symlink planned",
        [
            (
                '                    if found is None or found.kind == "excluded":',
                "                    if False:",
            )
        ],
        DRY_RUN,
    ),
    Mutant(
        "dry run: a directory loop not seen",
        [("                    if id(node) in ancestors:", "                    if False:")],
        DRY_RUN,
    ),
    Mutant(
        "dry run: loose files not read for credentials",
        [
            (
                "            if member.stamp:  # a loose file",
                "            if False:  # a loose file",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "dry run: symlink copies free",
        [
            (
                "                    if linked or is_link:\n"
                "                        budget.add(node.size)\n",
                "",
            )
        ],
        DRY_RUN,
    ),
    # Evidence: the report's digests and the statement's subject.
    Mutant(
        "report: a larger file's digest misses its first block",
        [
            (
                "            if digest is not None:\n                digest.update(block)",
                "            if digest is not None and copied:\n"
                "                digest.update(block)",
            )
        ],
        EVIDENCE,
    ),
    Mutant(
        "report: a small file's digest misses its first byte",
        [
            (
                "            self._hexes.append(hashlib.sha256(data).hexdigest())",
                "            self._hexes.append(hashlib.sha256(data[1:]).hexdigest())",
            )
        ],
        EVIDENCE,
    ),
    Mutant(
        "report: the subject names another digest",
        [
            (
                'subject = [{"name": PACKAGE_NAME, "digest": {"sha256": result.sha256}}]',
                'subject = [{"name": PACKAGE_NAME, "digest": '
                '{"sha256": hashlib.sha256().hexdigest()}}]',
            )
        ],
        EVIDENCE,
    ),
    Mutant(
        "expect-report: members not compared",
        [
            (
                "        differ = [key for key in found if want.get(key) != found[key]]",
                "        differ = []",
            )
        ],
        EVIDENCE,
    ),
    Mutant(
        "summary: not printed after a failure",
        [
            (
                "        _write_out(json.dumps(facts.summary(error)))",
                "        if error is None:\n"
                "            _write_out(json.dumps(facts.summary(error)))",
            )
        ],
        EVIDENCE,
    ),
    Mutant(
        "adaptive: a tie goes to Huffman",
        [
            (
                "    huffman_wins = sizes[zlib.Z_HUFFMAN_ONLY] < sizes",
                "    huffman_wins = sizes[zlib.Z_HUFFMAN_ONLY] <= sizes",
            )
        ],
        GZIP,
    ),
    # Untrusted inputs, round three: each new rule narrowed to the case a lazy test would use.
    Mutant(
        "global header: only a path record refused",
        [
            (
                'GLOBAL_REFUSED = (b"path", b"linkpath", b"size", b"hdrcharset", b"GNU.dumpdir")',
                'GLOBAL_REFUSED = (b"path",)',
            )
        ],
        ["tests/test_tar_compat.py"],
    ),
    Mutant(
        "names: only members counted, not the characters of their names",
        [("        self.characters += len(name) + len(link)\n", "")],
        ["tests/test_bounds.py"],
    ),
    Mutant(
        "names: --verify not bounded",
        [("        self._names.add(member.name, member.linkname)\n", "")],
        ["tests/test_bounds.py"],
    ),
    Mutant(
        "copy budget: loose hard links free",
        [("                        if key in linked:\n", "                        if False:\n")],
        ["tests/test_bounds.py"],
    ),
    Mutant(
        "copy budget: sparse holes free",
        [("                    budget.add(_holes(info))\n", "")],
        ["tests/test_bounds.py"],
    ),
    Mutant(
        "paths: a report dir inside an input allowed",
        [
            (
                '    destinations = {"output": output, "work": explicit_work, "report": report}',
                '    destinations = {"output": output, "work": explicit_work}',
            )
        ],
        ["tests/test_inputs.py", "tests/test_evidence.py"],
    ),
    Mutant(
        "verify: sticky and world-writable modes pass",
        [('    (stat.S_ISVTX, "sticky"),\n    (stat.S_IWOTH, "writable by anyone"),\n', "")],
        VERIFY,
    ),
    Mutant(
        "verify: a member under a file passes",
        [("            if self.names.get(parent) is False:", "            if False:")],
        VERIFY,
    ),
    Mutant(
        "expect-report: modes not compared",
        [('            "mode": f"{mode:04o}",\n', "")],
        VERIFY,
    ),
    Mutant(
        "expect-report: the report's digest ignored beside --expect-sha256",
        [
            (
                '        expected["the report"] = expect_report["sha256"]',
                '        expected.setdefault("the report", expect_report["sha256"])\n'
                "        expected = dict(list(expected.items())[:1])",
            )
        ],
        VERIFY,
    ),
    Mutant(
        "expect-report: a member listed twice accepted",
        [("        if name in members:\n", "        if False:\n")],
        VERIFY,
    ),
    Mutant(
        "strip-components: an absolute name stripped away",
        [
            (
                '        if name.startswith("/"):\n',
                "        if False:\n",
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "decode ratio: bzip2 only",
        [
            (
                "                self._check_ratio(len(out))",
                '                if self._magic == b"BZh":\n'
                "                    self._check_ratio(len(out))",
            )
        ],
        ["tests/test_security.py"],
    ),
    Mutant(
        "signals: SIGHUP not answered",
        [
            (
                "STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)",
                "STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)",
            )
        ],
        ["tests/test_signals.py"],
    ),
    Mutant(
        "excludes: AppleDouble files ship",
        [('    "._*",  # macOS AppleDouble files, beside every file copied from a Mac\n', "")],
        LAYOUT,
    ),
    Mutant(
        "layout: calibration one level too deep not said in the job",
        [
            (
                "    calibration = _calibration_too_deep(",
                "    calibration = None and _calibration_too_deep(",
            )
        ],
        LAYOUT,
    ),
    # Will it serve: each rule of the code check narrowed to the case a lazy test would use.
    Mutant(
        "code check: a syntax error in an imported module only warns",
        [
            (
                '        level = "FAIL" if reachable and not self._serving_is_newer() else "WARN"',
                '        level = "FAIL" if name == self.entry_point '
                'and not self._serving_is_newer() else "WARN"',
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: only the first level of local imports followed",
        [
            (
                "        for name in wanted.names:\n"
                '            found = self.tree.module_file(f"{wanted.module}.{name}")',
                "        for name in wanted.names if False else ():\n"
                '            found = self.tree.module_file(f"{wanted.module}.{name}")',
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: the serving grammar never applied",
        [
            (
                "    if serving is not None and serving < here and here >= (3, 8):",
                "    if False:",
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: transform_fn conflicts only with predict_fn",
        [
            (
                "        request = [name for name in REQUEST_HANDLERS if name in bound]",
                '        request = [name for name in ("predict_fn",) if name in bound]',
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: only model_fn's parameters counted",
        [
            (
                "        for name, arguments in HANDLER_ARGUMENTS.items():",
                "        for name, arguments in list(HANDLER_ARGUMENTS.items())[:1]:",
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: keyword-only parameters not counted",
        [("        + len(arguments.kwonlyargs)\n", "")],
        CODE_CHECK,
    ),
    Mutant(
        "code check: only a bare except makes an import optional",
        [
            (
                "    if handler.type is None:\n        return True\n",
                "    if handler.type is None:\n        return True\n    return False\n",
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: imports under TYPE_CHECKING required",
        [
            (
                "ast.If) and _is_type_checking(statement.test):",
                "ast.If) and False:",
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: a distribution's import name is its own",
        [
            (
                'names = IMPORT_NAMES.get(distribution, (distribution.replace("-", "_"),))',
                'names = (distribution.replace("-", "_"),)',
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: only -r files must be in code/",
        [
            (
                'INCLUDED_REQUIREMENTS = re.compile(r"(-r|-c|--requirement|--constraint)',
                'INCLUDED_REQUIREMENTS = re.compile(r"(-r|--requirement)',
            )
        ],
        CODE_CHECK,
    ),
    Mutant(
        "code check: VCS requirement lines pass",
        [('    (re.compile(r"(?:git|hg|svn|bzr)\\+", re.I), "a VCS checkout"),\n', "")],
        CODE_CHECK,
    ),
    Mutant(
        "code check: model_fn's f-string paths not seen",
        [("        if isinstance(node, ast.JoinedStr) and node.values:", "        if False:")],
        CODE_CHECK,
    ),
    Mutant(
        "dry run: a model archive's files not screened as they are read",
        [("        scan = self.screen.open(name) if shipped else None", "        scan = None")],
        CREDENTIALS + CODE_CHECK,
    ),
    Mutant(
        "strict: warnings found while writing are let through",
        [('        _fail_if_strict(options.strict, "publishing")\n', "")],
        CODE_CHECK,
    ),
    Mutant(
        "credentials: only the first block of a file read",
        [
            (
                "        self._seen += len(block)\n",
                "        self._seen += len(block)\n        self._decoder = False\n",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: UTF-16 read as bytes",
        [('    if head[:2] in (b"\\xff\\xfe", b"\\xfe\\xff"):', "    if False:")],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: only AKIA key ids (not temporary ASIA ones)",
        [
            (
                'AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)',
                'AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(?:AKIA)',
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: JSON-escaped and URL-encoded secrets read as written",
        [
            (
                "        for escaped, character in AWS_UNESCAPES:",
                "        for escaped, character in ():",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: placeholders taken for secrets",
        [("        len(set(secret)) < 6\n", "        False\n")],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: named forms (.pypirc, docker config) not read",
        [("        if self._named is not None:", "        if False:")],
        CREDENTIALS,
    ),
    Mutant(
        "credentials: a key id and a secret far apart taken as a pair",
        [("AWS_PAIR_DISTANCE = 1024", "AWS_PAIR_DISTANCE = 1 << 20")],
        CREDENTIALS,
    ),
    Mutant(
        "smoke test: a handler's context never given",
        [("            arguments += (Context(),)", "            pass")],
        SMOKE,
    ),
    Mutant(
        "smoke test: UTF-8 bodies stay bytes",
        [
            (
                'body = body.decode("utf-8")  # as the toolkit does',
                "body = body  # as the toolkit does",
            )
        ],
        SMOKE,
    ),
    Mutant(
        "smoke test: what the child started outlives it",
        [("                os.killpg(process.pid, signal.SIGKILL)", "                pass")],
        SMOKE,
    ),
    Mutant(
        "smoke test: requirements not installed",
        [("        if not any(_logical_lines(text)):", "        if True:")],
        SMOKE,
    ),
    # Round four: each check narrowed to the one case a test might happen to use.
    Mutant(
        "narrowed: --verify sees '..' only first",
        [
            (
                'if member.name.startswith("/") or ".." in name.split("/"):',
                'if member.name.startswith("/") or name.split("/")[0] == "..":',
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: --verify takes only a file twice for a duplicate",
        [
            (
                "        if name in self.names and not (is_dir and self.names[name]):",
                "        if name in self.names and not is_dir and not self.names[name]:",
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: --verify screens no calibration file's bytes",
        [
            (
                "                kept.append(bytes(piece))\n        self.screen.close(scan)",
                "                kept.append(bytes(piece))\n"
                "        if not name.startswith(CALIBRATION_DIR + '/'):\n"
                "            self.screen.close(scan)",
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: --verify takes calibration files for a model",
        [("        if not model:", "        if not model and not calibration:")],
        VERIFY,
    ),
    Mutant(
        "narrowed: --verify counts calibration files as model files",
        [
            (
                '        model = [name for name in self.files if not name.startswith(("code/", '
                '"calibration/"))]',
                '        model = [name for name in self.files if not name.startswith("code/")]',
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: --verify lets setgid pass",
        [('    (stat.S_ISGID, "setgid"),\n', "")],
        VERIFY,
    ),
    Mutant(
        "narrowed: the report's own digest checked only beside --expect-sha256",
        [
            (
                '        expected["the report"] = expect_report["sha256"]',
                "        if expect_sha256:\n"
                '            expected["the report"] = expect_report["sha256"]',
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: --expect-report compares files only",
        [
            (
                "        if self.report is not None and name:",
                "        if self.report is not None and name and not is_dir:",
            )
        ],
        VERIFY,
    ),
    Mutant(
        "narrowed: a dry run makes a missing work dir",
        [
            (
                "    if options.dry_run:\n        _dry_run(",
                "    if options.dry_run:\n"
                "        _work_dir(explicit_work, output, inputs.paths())\n"
                "        _dry_run(",
            )
        ],
        DRY_RUN,
    ),
    Mutant(
        "narrowed: inference.py given by name may be missing",
        [
            (
                '    if entry_point is not None:\n        raise PackagingError(f"{message}; fix',
                "    if entry_point not in (None, DEFAULT_ENTRY_POINT):\n"
                '        raise PackagingError(f"{message}; fix',
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "narrowed: the swapped-inputs probe reads the first file that is not code",
        [
            (
                "if not _is_code(member.name)][:MAX_BINARY_PROBES]",
                "if not _is_code(member.name)][:1]",
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "narrowed: the swapped-inputs probe reads past its bound",
        [
            (
                "if not _is_code(member.name)][:MAX_BINARY_PROBES]",
                "if not _is_code(member.name)][: MAX_BINARY_PROBES + 1]",
            )
        ],
        LAYOUT,
    ),
    Mutant(
        "narrowed: a calibration dir may be the script dir",
        [("            others.add(self.script.resolve())\n", "")],
        LAYOUT,
    ),
    Mutant(
        "narrowed: the snapshot's stamp has no ctime",
        [("        | info.st_ctime_ns & _MASK_64", "        | 0")],
        SNAPSHOT,
    ),
    Mutant(
        "narrowed: temporary AWS key ids pass",
        [
            (
                'AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(?:AKIA|ASIA)',
                'AWS_KEY_ID = re.compile(rb"(?<![A-Z0-9])(?:AKIA)',
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "narrowed: the xz memory limit doubled",
        [("XZ_MEMORY_LIMIT = 128 << 20", "XZ_MEMORY_LIMIT = 256 << 20")],
        COMPAT,
    ),
    Mutant(
        "narrowed: the xz memory limit halved",
        [("XZ_MEMORY_LIMIT = 128 << 20", "XZ_MEMORY_LIMIT = 64 << 20")],
        COMPAT,
    ),
    Mutant(
        "narrowed: a tail shorter than a magic ends the stream",
        [
            (
                "        if not rest:\n            return False",
                "        if len(rest) < len(self._magic):\n            return False",
            )
        ],
        COMPAT,
    ),
    Mutant(
        "narrowed: a whole block of padding after data that fills its blocks",
        [
            (
                "    return _PADDINGS[-size % BLOCK_SIZE]",
                "    return bytes(BLOCK_SIZE - size % BLOCK_SIZE)",
            )
        ],
        FORMAT,
    ),
    Mutant(
        "narrowed: one zero block ends the stream",
        [("    sink.write(2 * ZERO_BLOCK)", "    sink.write(ZERO_BLOCK)")],
        FORMAT,
    ),
    Mutant(
        "edge: a chain of 40 symlinks refused",
        [("        if hops > MAX_SYMLINK_HOPS:", "        if hops >= MAX_SYMLINK_HOPS:")],
        ["tests/test_symlinks.py"],
    ),
    Mutant(
        "edge: an AWS pair 1024 bytes apart passes",
        [
            (
                "if abs(self._key_at - self._secret_at) <= AWS_PAIR_DISTANCE:",
                "if abs(self._key_at - self._secret_at) < AWS_PAIR_DISTANCE:",
            )
        ],
        CREDENTIALS,
    ),
    Mutant(
        "edge: a NUL just past the text probe makes a file binary",
        [('if b"\\0" not in head[:TEXT_PROBE]:', 'if b"\\0" not in head[: TEXT_PROBE + 1]:')],
        CREDENTIALS,
    ),
    Mutant(
        "edge: a 1 KiB file can be a Git LFS pointer",
        [("if len(data) >= LFS_POINTER_MAX or", "if len(data) > LFS_POINTER_MAX or")],
        CODE_CHECK,
    ),
    Mutant(
        "edge: a 255-byte name component refused",
        [
            (
                '            if len(piece.encode("utf-8")) > MAX_NAME_BYTES:',
                '            if len(piece.encode("utf-8")) >= MAX_NAME_BYTES:',
            )
        ],
        ["tests/test_names.py"],
    ),
    Mutant(
        "edge: a 64 KiB extended header refused",
        [("        if size > MAX_EXTENDED_HEADER:", "        if size >= MAX_EXTENDED_HEADER:")],
        READER,
    ),
    Mutant(
        "edge: 10 MB of data in code/ warned",
        [
            (
                "    if total <= MAX_CODE_DATA and not large:",
                "    if total < MAX_CODE_DATA and not large:",
            )
        ],
        ["tests/test_output.py"],
    ),
    Mutant(
        "edge: a 5 MB file in code/ warned",
        [("if size > MAX_CODE_DATA_FILE)", "if size >= MAX_CODE_DATA_FILE)")],
        ["tests/test_output.py"],
    ),
]


def mutate(source: str, mutant: Mutant) -> str:
    mutated = source
    for old, new in mutant.edits:
        count = mutated.count(old)
        if count != 1:
            raise SystemExit(f"{mutant.name}: the edit matches {count} times, not once: {old!r}")
        mutated = mutated.replace(old, new)
    check_compiles(source, mutated)
    return mutated


def check_compiles(source: str, mutated: str) -> None:
    """A mutant must be a program, not a typo: the top-level statements its edits touch
    compile (only those: an edit cannot break the others, and the whole file takes 90 ms)."""
    shared = min(len(source), len(mutated))
    prefix = shared_prefix(source, mutated)
    suffix = min(shared_prefix(source[::-1], mutated[::-1]), shared - prefix)
    starts = top_level_starts(source)
    changed_from = source.count("\n", 0, prefix)
    changed_to = source.count("\n", 0, len(source) - suffix)
    first = max(start for start in starts if start <= changed_from)
    after = [start for start in starts if start > changed_to]
    lines = mutated.splitlines(keepends=True)
    end = after[0] + len(lines) - len(source.splitlines()) if after else len(lines)
    compile("\n" * first + "".join(lines[first:end]), "mims_package.py", "exec")  # its lines


def shared_prefix(a: str, b: str) -> int:
    """How many characters a and b share at their start (a binary search of slices)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if a[:middle] == b[:middle] else (low, middle - 1)
    return low


@functools.lru_cache(maxsize=None)
def top_level_starts(source: str) -> list[int]:
    """The line (from 0) where each top-level statement starts, its decorators included."""
    return sorted(
        min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 1
        for node in ast.parse(source).body
    )


def run(mutant: Mutant, source: str) -> tuple[str, float]:
    """'killed', 'killed (timeout)' or 'SURVIVED', and the seconds it took."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mims-mutant-") as scratch:
        copy = Path(scratch) / "repo"
        shutil.copytree(
            ROOT,
            copy,
            ignore=shutil.ignore_patterns(".git", "__pycache__", ".*_cache", ".hypothesis"),
        )
        (copy / "mims_package.py").write_text(mutate(source, mutant))
        tests = [t for t in mutant.tests if (copy / t).exists()]
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=copy,
                capture_output=True,
                timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return "killed (timeout)", time.monotonic() - start
    verdict = "SURVIVED" if result.returncode == 0 else "killed"
    return verdict, time.monotonic() - start


def main() -> int:
    words = sys.argv[1:]
    source = (ROOT / "mims_package.py").read_text()
    chosen = [m for m in MUTANTS if not words or any(w in m.name for w in words)]
    for mutant in chosen:
        mutate(source, mutant)  # every edit must still apply before anything runs
    survivors = []
    for mutant in chosen:
        verdict, seconds = run(mutant, source)
        print(f"{verdict:17} {seconds:6.1f} s  {mutant.name}", flush=True)
        if verdict == "SURVIVED":
            survivors.append(mutant.name)
    print(f"{len(chosen) - len(survivors)} killed, {len(survivors)} survived of {len(chosen)}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
