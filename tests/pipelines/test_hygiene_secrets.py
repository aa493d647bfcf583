"""Secrets and PII redaction: literal inputs, a seeded corpus of real-format fake keys, and the job on Ray."""

import base64
import json
import random
import string
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loopcoder.pipelines.clean.job import JobConfig
from loopcoder.pipelines.clean.runner import run_job
from loopcoder.pipelines.steps.secrets import SecretsConfig, SecretsRedactor

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"


def doc(content, path="config.py", language="Python"):
    return {"id": "i", "repo": "r", "path": path, "language": language, "content": content,
            "size_bytes": len(content.encode()), "license": None, "decisions": []}  # fmt: skip


def _pick(rng, alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


def _b64url(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def fake_secrets(rng: random.Random) -> list[tuple[str, str, str]]:
    """(kind, secret, line of code holding it): one fake of each format, random but well-formed."""
    hexdigits = "0123456789abcdef"
    aws_id = "AKIA" + _pick(rng, string.ascii_uppercase + string.digits, 16)
    aws_secret = _pick(rng, B64, 40)
    ghp = "ghp_" + _pick(rng, ALNUM, 36)
    pat = "github_pat_" + _pick(rng, ALNUM, 22) + "_" + _pick(rng, ALNUM, 59)
    slack = f"xoxb-{rng.randrange(10**9, 10**10)}-{rng.randrange(10**11, 10**12)}-{_pick(rng, ALNUM, 24)}"
    stripe = "sk_live_" + _pick(rng, ALNUM, 24)
    google = "AIza" + _pick(rng, ALNUM + "-_", 35)
    openai = "sk-proj-" + _pick(rng, ALNUM, 64) + "T3BlbkFJ" + _pick(rng, ALNUM, 64)
    openai_legacy = "sk-" + _pick(rng, ALNUM, 20) + "T3BlbkFJ" + _pick(rng, ALNUM, 20)
    twilio_sid = "AC" + _pick(rng, hexdigits, 32)
    twilio_key = "SK" + _pick(rng, hexdigits, 32)
    sendgrid = "SG." + _pick(rng, ALNUM + "-_", 22) + "." + _pick(rng, ALNUM + "-_", 43)
    npm = "npm_" + _pick(rng, ALNUM, 36)
    azure = _pick(rng, B64, 86) + "=="
    gitlab = "glpat-" + _pick(rng, ALNUM, 20)
    jwt = ".".join(
        [_b64url({"alg": "HS256", "typ": "JWT"}), _b64url({"sub": str(rng.randrange(10**6)), "name": _pick(rng, ALNUM, 8)}),
         _pick(rng, ALNUM + "-_", 43)]
    )  # fmt: skip
    pem_body = "\n".join(_pick(rng, B64, 64) for _ in range(6))
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----"
    password = _pick(rng, string.ascii_letters, 1) + _pick(rng, ALNUM + "!#%", 13)
    email = (
        f"{_pick(rng, string.ascii_lowercase, 7)}.{_pick(rng, string.ascii_lowercase, 5)}@corp-{rng.randrange(999)}.io"
    )
    ip = f"{rng.randrange(11, 99)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    return [
        ("aws_key", aws_id, f'AWS_ACCESS_KEY_ID = "{aws_id}"'),
        ("aws_key", aws_secret, f'aws_secret_access_key = "{aws_secret}"'),
        ("github_token", ghp, f"export GITHUB_TOKEN={ghp}"),
        ("github_token", pat, f'gh = Github("{pat}")'),
        ("slack_token", slack, f"  slack_bot: {slack}"),
        ("stripe_key", stripe, f"stripe.api_key = '{stripe}'"),
        ("google_api_key", google, f'const mapsKey = "{google}";'),
        ("openai_token", openai, f"client = OpenAI(api_key='{openai}')"),
        ("openai_token", openai_legacy, f"OPENAI_API_KEY={openai_legacy}"),
        ("twilio_key", twilio_sid, f'account_sid = "{twilio_sid}"'),
        ("twilio_key", twilio_key, f'"twilio": {{"key": "{twilio_key}"}},'),
        ("sendgrid_key", sendgrid, f"SENDGRID_API_KEY: {sendgrid}"),
        ("npm_token", npm, f"//registry.npmjs.org/:_authToken={npm}"),
        ("azure_storage_key", azure, f"conn = 'DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={azure}'"),
        ("gitlab_token", gitlab, f"headers = {{'PRIVATE-TOKEN': '{gitlab}'}}"),
        ("jwt", jwt, f'token = "Bearer {jwt}"'),
        ("private_key", pem, f'KEY = """{pem}"""'),
        ("password", password, f'db_password = "{password}"'),
        ("email", email, f"# maintainer: {email}"),
        ("ip_address", ip, f'SERVER = "{ip}"'),
    ]


def seeded_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """Python-like files, each with a few fake secrets among ordinary lines; returns (files, [(kind, secret)])."""
    rng = random.Random(seed)
    files, planted = [], []
    for number in range(n_docs):
        lines = [f"def handler_{number}(event):", "    return event['body']", ""]
        for kind, secret, line in rng.sample(fake_secrets(rng), 4):
            lines.insert(rng.randrange(len(lines) + 1), line)
            planted.append((kind, secret))
        files.append("\n".join(lines) + "\n")
    return files, planted


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("x = 1\nprint('hello world')\n", "x = 1\nprint('hello world')\n"),
        ('key = "AKIAIOSFODNN7EXAMPLE"\n', 'key = "<KEY>"\n'),
        ("contact: jane.doe@univ-paris.fr for help", "contact: <EMAIL> for help"),
        ("see user@example.com and git@github.com:org/repo.git", "see user@example.com and git@github.com:org/repo.git"),
        ("host = '52.14.200.7:8080'", "host = '<IP_ADDRESS>:8080'"),
        ("local = '192.168.1.20'; dns = '8.8.8.8'; version = '1.2.3.4'", None),
        ('password = "hunter2-Secret!"\n', 'password = "<PASSWORD>"\n'),
        ("password = get_password()\n", None),
        ("url = 'https://admin:s3cr3tpw@db.internal/x'", "url = 'https://admin:<PASSWORD>@db.internal/x'"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\nAAAAB3Nza\n-----END OPENSSH PRIVATE KEY-----\nx = 1\n",
         "<KEY>\nx = 1\n"),
    ],
    ids=["clean", "aws", "email", "kept-emails", "ip-port", "non-public-ips", "password", "password-call", "url-auth",
         "pem"],
)  # fmt: skip
def test_redaction_of_literal_inputs(content, expected):
    step = SecretsRedactor()
    d = doc(content)
    assert step.run(d) is None
    assert d["content"] == (content if expected is None else expected)
    assert d["decisions"] == [{"step": "secrets", "kept": True, "reason": None}]
    redacted = {k: v for k, v in step.stats.to_dict()["extra"].items() if k.startswith("redacted:")}
    assert bool(redacted) == (expected not in (None, content))


def test_counts_per_kind_and_no_secret_in_stats():
    step = SecretsRedactor()
    secret = "ghp_" + "aB3" * 12
    d = doc(f"t = '{secret}'\nmail = 'bob.smith@acme-widgets.com'\nt2 = '{secret}'\n")
    step.run(d)
    extra = step.stats.to_dict()["extra"]
    assert extra == {"docs_redacted": 1, "redacted:email": 1, "redacted:github_token": 2}
    assert secret not in json.dumps(step.stats.to_dict()) + json.dumps(d["decisions"])
    assert d["content"] == "t = '<KEY>'\nmail = '<EMAIL>'\nt2 = '<KEY>'\n"


def test_truncated_private_key_is_redacted_to_the_end_of_its_base64_lines():
    d = doc("k = '-----BEGIN RSA PRIVATE KEY-----\\nMIIEpAIBAAKCAQEA\\nabcdEF+/==\nprint(k)\n")
    SecretsRedactor().run(d)
    assert d["content"] == "k = '<KEY>\nprint(k)\n"


def test_placeholders_and_parts_are_knobs():
    step = SecretsRedactor(SecretsConfig(emails=False, placeholders={"key": "<SECRET>"}))
    d = doc("a = 'sk_live_" + "x1Y2" * 6 + "'  # ann@corp.io\n")
    step.run(d)
    assert d["content"] == "a = '<SECRET>'  # ann@corp.io\n"
    with pytest.raises(ValueError, match="unknown kind"):
        SecretsRedactor(SecretsConfig(placeholders={"phone": "<PHONE>"}))


def test_a_file_with_10000_secrets_is_redacted_counted_and_rejected_and_the_next_file_kept():
    rng = random.Random(1)
    keys = ["AKIA" + _pick(rng, string.ascii_uppercase + string.digits, 16) for _ in range(10_000)]
    dump = doc("".join(f"k{i} = '{k}'\n" for i, k in enumerate(keys)), path="dump.env", language="unknown")
    step = SecretsRedactor()
    assert step.run(dump) == "too_many_secrets"
    assert "AKIA" not in dump["content"] and dump["content"].count("<KEY>") == 10_000
    binaryish = doc("\x01\x02\xff\ufffd" * 5000 + " AKIAABCDEFGHIJKLMNOP " + "\x7f" * 3000, path="blob.bin")
    assert step.run(binaryish) is None and "<KEY>" in binaryish["content"]
    normal = doc("def f():\n    return 1\n")
    assert step.run(normal) is None and normal["content"] == "def f():\n    return 1\n"
    stats = step.stats.to_dict()
    assert stats["dropped"] == {"too_many_secrets": 1} and stats["kept"] == 2
    assert stats["extra"]["redacted:aws_key"] == 10_001


def test_recall_on_seeded_corpus_of_fake_keys():
    files, planted = seeded_corpus(150, seed=7)
    kinds = {kind for kind, _ in planted}
    assert len(kinds - {"email", "ip_address", "password"}) >= 10
    step = SecretsRedactor()
    outputs = []
    for content in files:
        d = doc(content)
        assert step.run(d) is None
        outputs.append(d["content"])
    text = "\n".join(outputs)
    missed = [kind for kind, secret in planted if secret in text]
    recall = 1 - len(missed) / len(planted)
    assert recall >= 0.95, (recall, missed)
    assert not missed, missed
    for content in outputs:  # the code around the secrets is still there
        assert "return event['body']" in content


def test_clean_job_leaves_no_key_in_output_shards(ray_local, tmp_path):
    files, planted = seeded_corpus(60, seed=11)
    source = tmp_path / "repo"
    source.mkdir()
    for number, content in enumerate(files):
        (source / f"mod_{number:03d}.py").write_text(content)
    job = JobConfig.from_dict(
        {"name": "secrets", "output": str(tmp_path / "out"), "inputs": [{"kind": "directory", "path": str(source)}],
         "steps": ["decode", "secrets", {"quality": {"min_alphanum_fraction": 0.25}}], "tasks": {"files_per_task": 30}}
    )  # fmt: skip
    stats = run_job(job, tmp_path / "out")
    out = Path(tmp_path / "out")
    shards = sorted(out.glob("files/*.parquet")) + sorted(out.glob("rejected/*.parquet"))
    contents = [row for shard in shards for row in pq.read_table(shard, columns=["content"]).column(0).to_pylist()]
    assert len(contents) == len(files)
    everything = "\n".join(contents)
    texts = "\n".join(p.read_text() for p in out.rglob("*.json"))
    leaked = [kind for kind, secret in planted if secret in everything or secret in texts]
    assert not leaked, leaked
    step = next(s for s in stats["steps"] if s["step"] == "secrets")
    assert step["kept"] == len(files)
    assert sum(v for k, v in step["extra"].items() if k.startswith("redacted:")) >= len(planted)


def test_line_gated_rules_find_keys_on_keyword_lines_only():
    mailchimp = "0123456789abcdef0123456789abcdef-us12"
    telegram = "110201543:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsawq"
    content = (
        f"x = 1\nMAILCHIMP_API_KEY = '{mailchimp}'\nsend(url)\n"
        f"telegram_bot_token = '{telegram}'\nprint('{mailchimp}')\n"
    )
    d = doc(content)
    step = SecretsRedactor()
    step.run(d)
    assert (
        d["content"]
        == f"x = 1\nMAILCHIMP_API_KEY = '<KEY>'\nsend(url)\ntelegram_bot_token = '<KEY>'\nprint('{mailchimp}')\n"
    )
    extra = step.stats.to_dict()["extra"]
    assert extra["redacted:mailchimp_key"] == 1 and extra["redacted:telegram_token"] == 1


def test_keyword_assignment_plugins_run_on_lines_with_long_values():
    hmac_secret = "0123456789abcdef" * 3
    d = doc(f'cos_hmac_secret_access_key = "{hmac_secret}"\napi_key = short\n')
    step = SecretsRedactor()
    step.run(d)
    assert d["content"] == 'cos_hmac_secret_access_key = "<KEY>"\napi_key = short\n'
    assert step.stats.to_dict()["extra"]["redacted:ibm_cos_hmac_key"] == 1


def test_only_keys_and_passwords_count_towards_max_secrets():
    authors = doc("".join(f"Dev {i} <dev{i}@corp-mail.io>\n" for i in range(20)), path="AUTHORS", language="unknown")
    step = SecretsRedactor(max_secrets=5)
    assert step.run(authors) is None and authors["content"].count("<EMAIL>") == 20
    keys = doc("".join(f"k{i} = 'AKIA{i:016d}'\n" for i in range(6)))
    assert step.run(keys) == "too_many_secrets" and keys["content"].count("<KEY>") == 6
