"""No credentials ship: one screen for every member of the package, whichever input it
came from, by name and by content (text files of any size, UTF-16 too), in the job,
--dry-run and --verify; documented look-alikes pass."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CODE, MODEL, Job, archive_tree, assert_refused, files_of, run_cli, write_tree

import mims_package

KEY_ID = "AKIA" + "Q3EGRXLWZ7N5TUHY"
TEMPORARY_KEY_ID = "ASIA" + "Q3EGRXLWZ7N5TUHY"
SECRET = "tG3k+f9Qw" + "/" + "x7LmN2pR4sV6uY8zA1bC3dE5fH7jK9"
PAIR = "it holds an AWS access key id with a secret access key"
PEM = "it holds a private key (PEM)"
BODY = "MIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2\n"

# name, content, what the ERROR says. The tokens are split so that no scanner flags this file.
SECRETS = {
    "pem-rsa": ("keys/deploy.pem", "-----BEGIN RSA PRIVATE KEY-----\n" + BODY, PEM),
    "pem-openssh": ("k", "-----BEGIN OPENSSH PRIVATE KEY-----\n" + BODY, PEM),
    "pem-ec": ("k.txt", "x\n-----BEGIN EC PRIVATE KEY-----\n" + BODY, PEM),
    "pem-encrypted": ("k", "-----BEGIN ENCRYPTED PRIVATE KEY-----\n" + BODY, PEM),
    "pem-pkcs8": ("k", "-----BEGIN PRIVATE KEY-----\n" + BODY, PEM),
    "pem-dsa": ("k", "-----BEGIN DSA PRIVATE KEY-----\n" + BODY, PEM),
    "putty-content": ("deploy", "PuTTY-User-Key-File-3: ssh-ed25519\n", "a PuTTY private key"),
    "aws-pair": (
        "settings.py",
        f"AWS_ACCESS_KEY_ID = '{KEY_ID}'\nAWS_SECRET_ACCESS_KEY = '{SECRET}'\n",
        PAIR,
    ),
    "aws-temporary": ("s.py", f"key = '{TEMPORARY_KEY_ID}'\nsecret = '{SECRET}'\n", PAIR),
    "aws-properties": (
        "job.properties",
        f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
        PAIR,
    ),
    "aws-export": (
        "setup.sh",
        f"export AWS_ACCESS_KEY_ID={KEY_ID}\nexport AWS_SECRET_ACCESS_KEY={SECRET}\n",
        PAIR,
    ),
    "aws-yaml": (
        "config.yaml",
        f"aws_access_key_id: {KEY_ID}\naws_secret_access_key: {SECRET}\n",
        PAIR,
    ),
    "aws-json": (
        "settings.json",
        f'{{"AccessKeyId": "{KEY_ID}", "SecretAccessKey": "{SECRET}"}}\n',
        PAIR,
    ),
    "aws-json-escaped": (
        "s.json",
        json.dumps({"id": KEY_ID, "key": SECRET}).replace("/", "\\/"),
        PAIR,
    ),
    "aws-url-encoded": (
        "u.txt",
        f"?id={KEY_ID}&key={SECRET.replace('/', '%2F').replace('+', '%2B')}",
        PAIR,
    ),
    "aws-ini": (
        "config.ini",
        f"aws_access_key_id = {KEY_ID}\naws_secret_access_key = {SECRET}\n",
        PAIR,
    ),
    "github": (
        "ci.yml",
        "token: gh" + "p_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5\n",
        "a GitHub token",
    ),
    "github-pat": (
        "t",
        "github" + "_pat_11ABCDEFG0abcdefghijkl_" + "a1" * 29 + "b\n",
        "a GitHub token",
    ),
    "hugging-face": (
        "hf.py",
        "HF_TOKEN = 'h" + "f_aBcDeFgHiJkLmNoPqRsTuVwXyZaBcDeFgH'\n",
        "a Hugging Face token",
    ),
    "openai": (
        "o.py",
        "key = 's" + "k-proj-Ab1Cd2Ef3Gh4Ij5Kl6Mn7T3Blbk" + "FJUv1Wx2Yz3Ab4Cd5'\n",
        "an OpenAI key",
    ),
    "slack": (
        "s.txt",
        "xo" + "xb-1234567890123-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx\n",
        "a Slack token",
    ),
    "stripe": ("p.py", "key = 's" + "k_live_4eC39HqLyjWDarjtT1zdp7dc'\n", "a Stripe live key"),
    "postgres-url": (
        "db.py",
        "URL = 'postgres://admin:s3cr3tPa55w0rd@db.internal:5432/app'\n",
        "a URL with a password",
    ),
    "kubeconfig": (
        "kube/config",
        "users:\n- user:\n    client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=\n",
        "a kubeconfig client key",
    ),
    "npmrc": (
        ".npmrc",
        "//registry.npmjs.org/:_authToken=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8\n",
        "an npm token",
    ),
    "pypirc": (
        ".pypirc",
        "[pypi]\nusername = me\npassword = pypi-AgEIcHlwaS5vcmcCJDYzNTM\n",
        "a PyPI password",
    ),
    "docker-config": (
        ".docker/config.json",
        '{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNzd29yZA=="}}}',
        "a Docker registry login",
    ),
    "dotenv": (".env", "DEBUG=1\n", "credentials file (.env)"),
    "dotenv-local": ("app/.env.local", "DEBUG=1\n", "credentials file (.env.local)"),
    "dotenv-production": (".env.production", "DEBUG=1\n", "credentials file (.env.production)"),
    "star-env": ("deploy/prod.env", "DEBUG=1\n", "credentials file (prod.env)"),
    "envrc": (".envrc", "export X=1\n", "credentials file (.envrc)"),
    "dotenv-example-with-keys": (
        ".env.example",
        f"AWS_ACCESS_KEY_ID={KEY_ID}\nAWS_SECRET_ACCESS_KEY={SECRET}\n",
        PAIR,
    ),
    "netrc": (".netrc", "machine x\n", "credentials file (.netrc)"),
    "windows-netrc": ("_netrc", "machine x\n", "credentials file (_netrc)"),
    "git-credentials": (".git-credentials", "https://x\n", "credentials file (.git-credentials)"),
    "putty-name": ("keys/deploy.ppk", "x", "credentials file (deploy.ppk)"),
    "pgpass": ("db/.pgpass", "h:5432:d:u:p\n", "credentials file (.pgpass)"),
    "aws-credentials": (".aws/credentials", "[default]\n", "credentials file (.aws/credentials)"),
    "id_rsa": ("ssh/id_rsa", "x", "credentials file (id_rsa)"),
    "id_ecdsa": ("ssh/id_ecdsa", "x", "credentials file (id_ecdsa)"),
    "id_ed25519": ("id_ed25519", "x", "credentials file (id_ed25519)"),
}


def refused(job: Job, name: str, what: str, *extra: object) -> None:
    """Through the command line: one ERROR naming the file and what it holds, not the secret."""
    result = job.cli(*extra)
    assert_refused(result, job, f"{name}: ", what, "--allow-secrets")
    assert SECRET not in result.stdout and "PRIVATE KEY" not in result.stdout


def refused_in_process(job: Job, name: str, what: str, **options: object) -> None:
    with pytest.raises(mims_package.PackagingError) as caught:
        mims_package.package(job.model, job.script, job.output, work_dir=job.work, **options)
    assert str(caught.value).startswith(f"{name}: ") and what in str(caught.value)
    assert SECRET not in str(caught.value) and job.leftovers() == []


@pytest.mark.parametrize("kind", sorted(SECRETS))
@pytest.mark.parametrize("where", ["script", "calibration", "loose-model", "model-archive"])
def test_credentials_anywhere_in_the_package_are_refused_naming_the_file(
    job: Job, kind: str, where: str
) -> None:
    name, content, what = SECRETS[kind]
    calibration = write_tree(job.tmp / "calibration", {"c.pkl": b"c"})
    if where == "model-archive":  # a training tar made from a repository root
        trained = write_tree(job.tmp / "trained", {**MODEL, name: content})
        archive_tree(trained, job.model / "model.tar.gz")
    else:
        write_tree(job.model, MODEL)
        roots = {"script": job.script, "calibration": calibration, "loose-model": job.model}
        write_tree(roots[where], {name: content})
    prefix = {"script": "code/", "calibration": "calibration/"}.get(where, "")
    refused_in_process(job, prefix + name, what, calibration_dir=calibration)
    refused_in_process(job, prefix + name, what, calibration_dir=calibration, dry_run=True)
    assert not job.output.exists()


@pytest.mark.parametrize("kind", ["aws-pair", "dotenv", "github"])
def test_the_command_line_says_it_in_one_error_line(job: Job, kind: str) -> None:
    name, content, what = SECRETS[kind]
    write_tree(job.model, {**MODEL, name: content})
    refused(job, name, what)
    refused(job, name, what, "--dry-run")


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_verify_fails_every_credential_in_any_package(tmp_path: Path, kind: str) -> None:
    name, content, what = SECRETS[kind]
    tree = write_tree(
        tmp_path / "tree", {**MODEL, name: content, "code/inference.py": CODE["inference.py"]}
    )
    package = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "-czf", str(package), "-C", str(tree), "."], check=True)
    result = run_cli("--verify", package)
    assert result.returncode == 1
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("FAIL credentials")]
    assert f"FAIL credentials: {name}: " in line and what in line
    assert SECRET not in result.stdout


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


LOOK_ALIKES = {
    "example-key-id": "AWS_ACCESS_KEY_ID = 'AKIAIOSFODNN7EXAMPLE'\n",
    "example-pair": "id = 'AKIAIOSFODNN7EXAMPLE'\n"
    "key = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'\n",
    "key-id-alone": f"key_id = '{KEY_ID}'\n",
    "secret-far-from-its-id": f"key_id = '{KEY_ID}'\n" + "#" * 5000 + f"\nsecret = '{SECRET}'\n",
    "certificate": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "public-key": "-----BEGIN PUBLIC KEY-----\nMIIB\n",
    "pem-header-constant": 'MARKER = b"-----BEGIN OPENSSH PRIVATE KEY-----"\n',
    "pem-legacy-headers-no-body": "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n",
    "sha1": "sha1 = 'da39a3ee5e6b4b0d3255bfef95601890afd80709'\n",
    "run-id": "run = 'train-2f1c3a4b5d6e7f8091a2b3c4d5e6f708'\n",
    "github-placeholder": "token: gh" + "p_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n",
    "repeated-placeholder": "HF_TOKEN = 'h" + "f_" + "0" * 34 + "'\n",
    "openai-doc": "openai.api_key = 'sk-...'  # sk-your-key-here\n",
    "slack-doc": "xo" + "xb-your-token, xo" + "xb-1234-5678-xxxxxxxxxxxx\n",
    "url-placeholders": "postgres://user:password@localhost/db mysql://root:${DB_PASSWORD}@db/x\n",
    "url-without-password": "https://github.com/org/repo git@github.com:org/repo https://me@host/\n",
    "npm-from-env": "//registry.npmjs.org/:_authToken=${NPM_TOKEN}\n",
    "docs-url": "See https://docs.aws.amazon.com/IAM/latest/UserGuide/id_credentials.html\n",
}


@pytest.mark.parametrize("kind", sorted(LOOK_ALIKES))
def test_look_alikes_pass(job: Job, kind: str) -> None:
    write_tree(job.model, MODEL)
    write_tree(job.script, {**CODE, "config.txt": LOOK_ALIKES[kind], ".env.example": "DEBUG=1\n"})
    result = job.cli()
    assert result.returncode == 0, result.stdout
    assert "credentials must not ship" not in result.stdout and " WARNING " not in result.stdout


@pytest.mark.parametrize(
    ("name", "content"),
    [(".pypirc", "[pypi]\npassword = ${PYPI_TOKEN}\n"), ("config.json", '{"auths": {}}\n')],
)
def test_named_forms_with_no_secret_pass(job: Job, name: str, content: str) -> None:
    write_tree(job.model, {**MODEL, name: content})
    assert job.cli().returncode == 0


def test_large_text_files_are_read_to_their_end_and_binary_files_are_not(job: Job) -> None:
    pem = b"-----BEGIN RSA PRIVATE KEY-----\n" + BODY.encode()
    big = b"x,1,2\n" * (3 << 20) + pem  # past several reads, and across a read's edge
    write_tree(job.model, {**MODEL, "weights.bin": b"\x00" + pem, "features.csv": big})
    refused(job, "features.csv", PEM)
    write_tree(job.model, {"features.csv": b"x,1,2\n" * (3 << 20)})
    assert job.cli().returncode == 0


def test_utf16_text_is_read_as_text(job: Job) -> None:
    text = f"AWS_ACCESS_KEY_ID={KEY_ID}\r\nAWS_SECRET_ACCESS_KEY={SECRET}\r\n"
    notes = "# 認証情報の設定ファイル。本番環境では使用しないこと。\n" * 20  # few NUL bytes
    write_tree(job.model, {**MODEL, "keys.txt": (notes + text).encode("utf-16")})
    refused(job, "keys.txt", PAIR)  # told by its byte-order mark
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        write_tree(job.model, {**MODEL, "keys.txt": text.encode(encoding)})
        refused(job, "keys.txt", PAIR)


SAMPLES = {
    **{kind: (name, content) for kind, (name, content, _) in SECRETS.items()},
    **{kind: ("look.txt", content) for kind, content in LOOK_ALIKES.items()},
    # no form's hint in it: only its name sends it to its own pattern
    "pypirc-plain-password": (".pypirc", "[server]\nusername = me\npassword = Tr0ub4dor&3x\n"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@pytest.mark.parametrize("at", [0, 1, 3])
def test_many_small_files_screened_at_once_find_what_each_alone_finds(kind: str, at: int) -> None:
    """The reader screens a frame's files together: a hint anywhere sends every one to the full
    patterns, so a form in any file, first, between or last, is found as it is alone."""
    name, content = SAMPLES[kind]
    files = [("a.txt", b"plain text\n"), ("b.py", b"x = 1\n" * 900), ("c.bin", b"\0" * 64)]
    files.insert(at, (f"sub/{name}", content.encode() if isinstance(content, str) else content))
    alone = []
    for file_name, data in files:
        scan = mims_package._FileScan(file_name)
        scan.feed(data)
        verdict = scan.verdict()
        alone += [verdict] if verdict is not None else []
    assert mims_package._screen_whole_files(files) == alone


@pytest.mark.parametrize(("gap", "found"), [(0, True), (1, False)], ids=["1024", "1025"])
def test_an_aws_pair_is_a_key_id_and_a_secret_at_most_1024_bytes_apart(
    gap: int, found: bool
) -> None:
    """AWS_PAIR_DISTANCE is measured from the key id's start to the secret's."""
    head = f"id={KEY_ID} ".encode()
    key_at = head.index(KEY_ID.encode())
    filler = b"#" * (mims_package.AWS_PAIR_DISTANCE + gap + key_at - len(head) - 1)
    data = head + filler + f" {SECRET}\n".encode()
    assert data.index(SECRET.encode()) - data.index(KEY_ID.encode()) == 1024 + gap
    scan = mims_package._FileScan("s.txt")
    scan.feed(data)
    assert (scan.found == PAIR) is found


@pytest.mark.parametrize(("nul_at", "screened"), [(8191, False), (8192, True)])
def test_a_nul_in_the_first_8_kib_makes_a_file_binary_and_one_after_it_does_not(
    nul_at: int, screened: bool
) -> None:
    """TEXT_PROBE: a NUL within it is a binary file, passed over; past it, text, screened."""
    data = b"x" * nul_at + b"\0" + f"\nkey = '{KEY_ID}'\nsecret = '{SECRET}'\n".encode()
    scan = mims_package._FileScan("data.txt")
    scan.feed(data)
    assert (scan.found == PAIR) is screened
    assert (mims_package._screen_whole_files([("data.txt", data)]) != []) is screened
