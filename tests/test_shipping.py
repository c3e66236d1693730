"""Only what belongs in an endpoint ships: no junk, no credentials, same content same bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    CODE,
    EXAMPLE,
    MODEL,
    ROOT,
    Job,
    archive_tree,
    assert_refused,
    files_of,
    read_package,
    run_cli,
    write_tree,
)

import mims_package

JUNK = {
    "__pycache__/inference.cpython-311.pyc": b"\x00pyc",
    "processing/__pycache__/util.cpython-311.pyc": b"\x00pyc",
    "stale.pyc": b"\x00",
    ".ipynb_checkpoints/explore-checkpoint.ipynb": "{}",
    ".pytest_cache/v/cache/lastfailed": "{}",
    ".mypy_cache/3.11/x.json": "{}",
    ".ruff_cache/0.1/x": "",
    ".DS_Store": b"\x00\x00\x00\x01Bud1",
    "processing/Thumbs.db": b"\x00",
}
# The key pair is made up; built from pieces so that no scanner flags this test file.
KEY_ID = "AKIA" + "Q3EGRXLWZ7N5TUHY"
SECRET = "tG3k+f9Qw" + "/" + "x7LmN2pR4sV6uY8zA1bC3dE5fH7jK9"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_script_dir_that_is_a_git_checkout_ships_only_the_real_files(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, **JUNK})
    git("init", "-q", cwd=job.script)
    git("add", "-A", cwd=job.script)
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "x", cwd=job.script)
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {"xgboost_model.bst", *(f"code/{n}" for n in CODE)}
    # The expected case in a developer's checkout: said once at INFO, with no WARNING.
    assert " WARNING " not in result.stdout, result.stdout
    summary = [line for line in result.stdout.splitlines() if "left out of the package" in line]
    assert len(summary) == 1 and " INFO " in summary[0] and "code/.git/" in summary[0]
    assert "INFO excluded code/.git/ (.git/)" in result.stdout
    assert "INFO excluded code/stale.pyc (*.pyc)" in result.stdout


def test_excluded_members_of_a_model_archive_are_not_extracted(job: Job) -> None:
    trained = write_tree(job.tmp / "trained", {**MODEL, **JUNK, ".git/HEAD": "ref"})
    archive_tree(trained, job.model / "model.tar.gz")
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {"xgboost_model.bst"}
    assert "INFO excluded .git/ (.git/)" in result.stdout


def test_exclude_adds_patterns(job: Job) -> None:
    write_tree(job.model, {**MODEL, "logs/train.log": "x", "data/raw/big.csv": "x", "a.log": "x"})
    write_tree(job.script, {**CODE, "notes/data/raw/keep.txt": "x"})
    result = job.cli("--exclude", "*.log", "--exclude", "data/raw/")
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {
        "xgboost_model.bst",
        *(f"code/{n}" for n in CODE),
        "code/notes/data/raw/keep.txt",  # "data/raw/" is anchored at each input's root
    }


def test_no_default_excludes_keeps_everything(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, **JUNK})
    result = job.cli("--no-default-excludes")
    assert result.returncode == 0, result.stdout
    assert set(files_of(job.package)) == {
        "xgboost_model.bst",
        *(f"code/{n}" for n in {**CODE, **JUNK}),
    }
    assert "INFO excluded" not in result.stdout


def test_an_empty_exclude_pattern_is_refused(job: Job) -> None:
    write_tree(job.model, MODEL)
    assert_refused(job.cli("--exclude", "/"), job, "--exclude '/' names nothing")


SECRETS = {
    "pem-rsa": (
        "keys/deploy.pem",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
        "it holds a private key (PEM)",
    ),
    "pem-openssh": (
        "k",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n",
        "it holds a private key (PEM)",
    ),
    "pem-ec": ("k.txt", "x\n-----BEGIN EC PRIVATE KEY-----\n", "it holds a private key (PEM)"),
    "pem-encrypted": (
        "k",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
        "it holds a private key (PEM)",
    ),
    "pem-pkcs8": ("k", "-----BEGIN PRIVATE KEY-----\n", "it holds a private key (PEM)"),
    "pem-dsa": ("k", "-----BEGIN DSA PRIVATE KEY-----\n", "it holds a private key (PEM)"),
    "aws-pair": (
        "settings.py",
        f"AWS_ACCESS_KEY_ID = '{KEY_ID}'\nAWS_SECRET_ACCESS_KEY = '{SECRET}'\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "aws-env": (
        "job.env",
        f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "aws-export": (
        "setup.sh",
        f"export AWS_ACCESS_KEY_ID={KEY_ID}\nexport AWS_SECRET_ACCESS_KEY={SECRET}\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "aws-yaml": (
        "config.yaml",
        f"aws_access_key_id: {KEY_ID}\naws_secret_access_key: {SECRET}\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "aws-json": (
        "config.json",
        f'{{"AccessKeyId": "{KEY_ID}", "SecretAccessKey": "{SECRET}"}}\n',
        "it holds an AWS access key id with a secret access key",
    ),
    "aws-ini": (
        "config.ini",
        f"aws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "dotenv": (".env", "DEBUG=1\n", "credentials file (.env)"),
    "dotenv-local": ("app/.env.local", "DEBUG=1\n", "credentials file (.env.local)"),
    "dotenv-production": (".env.production", "DEBUG=1\n", "credentials file (.env.production)"),
    "dotenv-example-with-keys": (
        ".env.example",
        f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
        "it holds an AWS access key id with a secret access key",
    ),
    "netrc": (".netrc", "machine x\n", "credentials file (.netrc)"),
    "pgpass": ("db/.pgpass", "h:5432:d:u:p\n", "credentials file (.pgpass)"),
    "aws-credentials": (".aws/credentials", "[default]\n", "credentials file (.aws/credentials)"),
    "id_rsa": ("ssh/id_rsa", "x", "credentials file (id_rsa)"),
    "id_ed25519": ("id_ed25519", "x", "credentials file (id_ed25519)"),
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
@pytest.mark.parametrize("where", ["script", "calibration", "loose-model"])
def test_credentials_are_refused_naming_the_file_not_the_secret(
    job: Job, kind: str, where: str
) -> None:
    name, content, what = SECRETS[kind]
    write_tree(job.model, MODEL)
    calibration = write_tree(job.tmp / "calibration", {"c.pkl": b"c"})
    root = {"script": job.script, "calibration": calibration, "loose-model": job.model}[where]
    write_tree(root, {name: content})
    result = job.cli("--calibration-dir", calibration)
    prefix = {"script": "code/", "calibration": "calibration/", "loose-model": ""}[where]
    assert_refused(result, job, f"{prefix}{name}: ", what, "--allow-secrets")
    assert SECRET not in result.stdout and "PRIVATE KEY" not in result.stdout
    assert not job.output.exists()


def test_allow_secrets_warns_and_ships(job: Job) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, ".env": "TOKEN=x\n"})
    result = job.cli("--allow-secrets")
    assert result.returncode == 0, result.stdout
    assert (
        "WARNING code/.env: its name marks a credentials file (.env); "
        "shipped because of --allow-secrets" in result.stdout
    )
    assert "code/.env" in files_of(job.package)


@pytest.mark.parametrize(
    "content",
    [
        "AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'\n",  # AWS's documented example, alone
        f"key_id = '{KEY_ID}'\n",  # a key id with no secret beside it
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        "-----BEGIN PUBLIC KEY-----\nMIIB\n",
        "sha1 = 'da39a3ee5e6b4b0d3255bfef95601890afd80709'\n",  # 40 characters, no key id
    ],
    ids=["example-key-id", "key-id-alone", "certificate", "public-key", "sha1"],
)
def test_what_is_not_a_credential_passes(job: Job, content: str) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, "config.txt": content, ".env.example": "DEBUG=1\n"})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert "credentials must not ship" not in result.stdout and "WARNING" not in result.stdout


def test_large_and_binary_files_are_not_read_for_credentials(job: Job) -> None:
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n"
    write_tree(job.model, {"weights.bin": b"\x00" + pem, "big.txt": pem + b"x" * (1 << 20)})
    result = job.cli()
    assert result.returncode == 0, result.stdout


def test_a_file_of_exactly_the_scan_limit_is_read_for_credentials(job: Job) -> None:
    """The largest file scanned: the one that a read of up to IO_BLOCK_SIZE bytes takes whole."""
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n"
    limit = mims_package.SECRET_SCAN_LIMIT
    write_tree(job.model, {**MODEL, "notes.txt": pem + b"x" * (limit - len(pem))})
    assert_refused(job.cli(), job, "notes.txt: it holds a private key")


def test_a_model_archive_is_not_scanned_but_its_code_is(job: Job) -> None:
    pem = "-----BEGIN RSA PRIVATE KEY-----\n"
    trained = write_tree(job.tmp / "trained", {**MODEL, "notes.txt": pem})
    archive_tree(trained, job.model / "model.tar.gz")
    assert job.cli().returncode == 0
    job.package.unlink()
    write_tree(trained, {"code/key.pem": pem})
    archive_tree(trained, job.model / "model.tar.gz")
    assert_refused(job.cli(), job, "code/key.pem: it holds a private key")


def copy_of_inputs(job: Job, name: str, when: str) -> tuple[Path, Path]:
    """The job's model and script dirs copied, every path's mtime set with touch -d when."""
    model = job.tmp / name / "model"
    script = job.tmp / name / "script"
    shutil.copytree(job.model, model)
    shutil.copytree(job.script, script)
    paths = [str(p) for p in (model, script, *model.rglob("*"), *script.rglob("*"))]
    subprocess.run(["touch", "-d", when, *paths], check=True)
    return model, script


def package_bytes(job: Job, model: Path, script: Path, *extra: str) -> bytes:
    out = job.tmp / f"out-{model.parent.name}-{len(extra)}"
    args = ["--model-dir", model, "--script-dir", script, "--output-dir", out, *extra]
    result = run_cli(*args, "--work-dir", job.work)
    assert result.returncode == 0, result.stdout
    return (out / "model.tar.gz").read_bytes()


def test_the_same_content_gives_the_same_bytes_whatever_the_mtimes(job: Job) -> None:
    write_tree(job.model, {**MODEL, "sub/vocab.json": "{}"})
    write_tree(job.script, CODE)
    first = copy_of_inputs(job, "first", "2020-01-01 00:00:00")
    second = copy_of_inputs(job, "second", "2024-06-30 12:34:56")
    assert package_bytes(job, *first) == package_bytes(job, *second)
    assert package_bytes(job, *first, "--keep-mtimes") != package_bytes(
        job, *second, "--keep-mtimes"
    )


def test_the_bundled_examples_package_hash_is_stable(job: Job) -> None:
    """The README shows the example package's sha256; it must be what the job logs today."""
    args = ["--model-dir", EXAMPLE / "model", "--script-dir", EXAMPLE / "script"]
    args += ["--calibration-dir", EXAMPLE / "calibration", "--output-dir", job.output]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout
    logged = result.stdout.split("sha256 ")[-1].split()[0]
    assert f"`{logged}`" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("where", ["script", "archive"])
def test_directory_excludes_match_at_every_depth_directories_included(job: Job, where: str) -> None:
    nested = {
        "pkg/util.py": "X = 1\n",
        "pkg/__pycache__/util.cpython-311.data": b"cache",
        "pkg/deep/.ipynb_checkpoints/util-checkpoint.py": "X = 0\n",
        "pkg/deep/keep.py": "Y = 2\n",
        "notebooks/.ipynb_checkpoints/a.json": "{}",
    }
    if where == "script":
        write_tree(job.model, MODEL)
        write_tree(job.script, {"inference.py": "", **nested})
        prefix = "code/"
    else:
        archive_tree(
            write_tree(job.tmp / "trained", {**MODEL, **nested}), job.model / "model.tar.gz"
        )
        prefix = ""
    job.main()
    names = set(read_package(job.package))
    expected = {f"{prefix}{n}" for n in ("pkg", "pkg/util.py", "pkg/deep", "pkg/deep/keep.py")}
    expected |= {f"{prefix}notebooks", *MODEL}
    if where == "script":
        expected |= {"code", "code/inference.py"}
    assert names == expected


def test_the_readme_is_short_enough_to_read_first() -> None:
    """Users read README.md before anything else: at most 28,000 characters (bytes, even)."""
    assert len((ROOT / "README.md").read_bytes()) <= 28_000
