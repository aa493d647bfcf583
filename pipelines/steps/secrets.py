"""Secrets and personal data: detection with detect-secrets' rules, redaction with placeholder tokens.

Detected spans are replaced in `doc["content"]` by the StarCoder pipeline's tokens:

| kind | found by | placeholder |
|---|---|---|
| API keys and tokens (`aws_key`, `github_token`, `slack_token`, `stripe_key`, `openai_token`, ...) | the regex plugins of detect-secrets, plus `EXTRA_KEY_RULES` for formats it lacks | `<KEY>` |
| `private_key` | PEM and PuTTY headers; the whole block up to its END line (or its base64 lines) is replaced | `<KEY>` |
| `password` | detect-secrets' keyword plugin (`password = "..."`) and credentials in URLs (`://user:pw@`) | `<PASSWORD>` |
| `email` | an address regex; `example.*` and `localhost` domains and `git@` are kept | `<EMAIL>` |
| `ip_address` | detect-secrets' public-IPv4 rule, minus version strings and public DNS resolvers | `<IP_ADDRESS>` |

Speed: detect-secrets scans line by line, calling every plugin on every line. Here each plugin
pattern that starts with a literal (`AKIA`, `ghp_`, `xox`, ...) runs once over the whole document,
in C; the patterns without one (keyword assignments such as `cloudant_key = ...`, `[0-9a-z]{32}-us1`)
and the keyword plugin run only on the lines holding one of `LINE_GATE`'s words (`key`, `pass`,
`token`, `secret`, ...), joined into one text; the slowest of them, keyword assignments of 24+
character values (`LONG_VALUE_KINDS`), only on those lines that also hold such a run of characters.
The high-entropy plugin (every long base64 or hex string: hashes, test vectors, embedded data) is
off unless `high_entropy_limit` is set.

Counts per kind are `stats.extra["redacted:<kind>"]`; nothing of a secret is logged or counted
beyond its kind. A document with more than `max_secrets` keys and passwords is rejected
(`too_many_secrets`: a credentials dump, not code) after it is redacted, so that its rejected copy
holds no secret either.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from detect_secrets.filters.heuristic import (
    is_indirect_reference,
    is_likely_id_string,
    is_potential_uuid,
    is_prefixed_with_dollar_sign,
    is_sequential_string,
    is_templated_secret,
)
from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.ip_public import IPPublicDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.keyword import DENYLIST as KEYWORD_DENYLIST
from detect_secrets.plugins.keyword import KeywordDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

from loopcoder.pipelines.steps.filters import Doc, Step

# detect-secrets regex plugins whose match is a key or token, by the kind counted in the stats.
KEY_PLUGINS: dict[str, type] = {
    "artifactory_token": ArtifactoryDetector,
    "aws_key": AWSKeyDetector,
    "azure_storage_key": AzureStorageKeyDetector,
    "cloudant_key": CloudantDetector,
    "discord_token": DiscordBotTokenDetector,
    "github_token": GitHubTokenDetector,
    "gitlab_token": GitLabTokenDetector,
    "ibm_cloud_iam_key": IbmCloudIamDetector,
    "ibm_cos_hmac_key": IbmCosHmacDetector,
    "jwt": JwtTokenDetector,
    "mailchimp_key": MailchimpDetector,
    "npm_token": NpmDetector,
    "openai_token": OpenAIDetector,
    "pypi_token": PypiTokenDetector,
    "sendgrid_key": SendGridDetector,
    "slack_token": SlackDetector,
    "softlayer_key": SoftlayerDetector,
    "square_oauth_secret": SquareOAuthDetector,
    "stripe_key": StripeDetector,
    "telegram_token": TelegramBotTokenDetector,
    "twilio_key": TwilioKeyDetector,
}
# Formats detect-secrets 1.5 has no plugin for (token prefixes as the issuers document them).
EXTRA_KEY_RULES: dict[str, str] = {
    "google_api_key": r"AIza[0-9A-Za-z_\-]{35}",
    "google_oauth_secret": r"GOCSPX-[0-9A-Za-z_\-]{28}",
    "github_token": r"github_pat_[0-9A-Za-z_]{22,255}",
    # a literal first and the boundary check after it: the regex engine skips to the literal
    "openai_token": r"sk-(?:(?:proj|svcacct|admin)-[0-9A-Za-z_\-]{20,}|(?<![\w-]sk-)[0-9A-Za-z]{48}(?![\w-]))",
    "anthropic_key": r"sk-ant-[a-z0-9]+-[0-9A-Za-z_\-]{80,}",
    "npm_token": r"npm_(?<![\w-]npm_)[0-9A-Za-z]{36}(?!\w)",
    "huggingface_token": r"hf_(?<![\w-]hf_)[A-Za-z]{34}(?!\w)",
    "slack_token": r"xox[abposr]-[0-9A-Za-z\-]{10,}",
    "stripe_key": r"(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{24,99}",
    "twilio_key": r"(?:AC|SK)(?<![0-9A-Za-z]AC)(?<![0-9A-Za-z]SK)[0-9a-fA-F]{32}(?![0-9A-Za-z])",
    "sendgrid_key": r"SG\.[0-9A-Za-z_\-]{22}\.[0-9A-Za-z_\-]{43}",
}
# Plugins whose patterns have no literal to skip to (keyword assignments, `[0-9a-z]{32}-us1`): they run
# only on lines holding one of `LINE_GATE`'s words, as does every case-insensitive plugin pattern.
LINE_GATED_KINDS = (
    "artifactory_token",
    "cloudant_key",
    "discord_token",
    "ibm_cloud_iam_key",
    "ibm_cos_hmac_key",
    "mailchimp_key",
    "softlayer_key",
    "telegram_token",
)
# Every keyword of those patterns and of detect-secrets' keyword plugin (`api_?key`, `pwd`, `secret`, ...)
LINE_GATE = re.compile(
    r"key|pw|pass|token|secret|contrase|cloudant|softlayer|slack|xox|artifactory|mailchimp|telegram|discord|bot"
)
# Keyword-assignment plugins whose value is 24+ characters (`cloudant_key = "<64 hex>"`): their patterns,
# the slowest, run only on gated lines that hold such a run of characters.
LONG_VALUE_KINDS = ("cloudant_key", "ibm_cloud_iam_key", "ibm_cos_hmac_key", "softlayer_key")
_LONG_VALUE = re.compile(r"[A-Za-z0-9_\-]{24}")
_PEM_HEADER = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|BEGIN SSH2 ENCRYPTED PRIVATE KEY|PuTTY-User-Key-File-\d"
)
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|---- END SSH2 ENCRYPTED PRIVATE KEY ----")
# a block without its END line: everything up to the first line that is not key material
_KEY_LINES = re.compile(
    r"(?:[ \t]*(?:\\n|\r?\n)[ \t\"']*(?:[A-Za-z0-9+/=]{4,}|(?:Proc-Type|DEK-Info|Comment): [^\n\\]*)"
    r"(?=\\n|\r?\n|[\"'\s]|$))*"
)
PEM_MAX_CHARS = 20_000
_DELIMITERS = " \t\r\n=:\"'"
_AT = re.compile("@")
_EMAIL_USER = re.compile(r"(?<![\w.+%-])[\w.+%-]{1,64}$")
_EMAIL_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
_IP_HINT = re.compile(r"\.\d{1,3}\.\d{1,3}\.")
_URL_USER_BEFORE = re.compile(r"://[^\s/@]*:$")  # `://user:password@host`: a credential, not an address
_VERSION_BEFORE_IP = re.compile(r"\b(?:version|ver|release|build|v)[\s:=\"'(]*$", re.IGNORECASE)
PUBLIC_RESOLVERS = ("8.8.8.8", "8.8.4.4", "1.1.1.1", "1.0.0.1", "9.9.9.9", "149.112.112.112", "208.67.222.222")
DEFAULT_PLACEHOLDERS = {"key": "<KEY>", "password": "<PASSWORD>", "email": "<EMAIL>", "ip_address": "<IP_ADDRESS>"}


@dataclass
class SecretsConfig:
    """What `SecretsRedactor` looks for; `None` or `False` switches a part off."""

    keys: bool = True  # API keys, tokens and private keys
    passwords: bool = True  # keyword assignments (`password = "..."`) and `://user:password@` in URLs
    emails: bool = True
    ip_addresses: bool = True  # public IPv4 only
    high_entropy_limit: float | None = None  # detect-secrets' base64 entropy limit (4.5 in bigcode's pipeline)
    placeholders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))
    kept_email_domains: tuple[str, ...] = ("example.com", "example.org", "example.net", "localhost")
    kept_email_users: tuple[str, ...] = ("git",)  # git@github.com:org/repo is an address of a service
    kept_ips: tuple[str, ...] = PUBLIC_RESOLVERS
    max_secrets: int | None = 1000  # more keys and passwords in one document: `too_many_secrets`
    max_keyword_line_chars: int = 2000  # longer lines are data, not assignments: keyword plugin skipped


class SecretsRedactor(Step):
    """Replaces secrets, emails and public IP addresses by placeholder tokens.

    Reason: `too_many_secrets` (more than `max_secrets` keys and passwords; the content is redacted all the same).
    Counts: `stats.extra["redacted:<kind>"]` and `stats.extra["docs_redacted"]`.
    """

    name = "secrets"

    def __init__(self, config: SecretsConfig | None = None, **overrides: Any):
        super().__init__()
        self.config = config or SecretsConfig(**overrides)
        c = self.config
        unknown = set(c.placeholders) - set(DEFAULT_PLACEHOLDERS)
        if unknown:
            raise ValueError(f"placeholders: unknown kind(s) {sorted(unknown)}; known: {sorted(DEFAULT_PLACEHOLDERS)}")
        self._placeholders = DEFAULT_PLACEHOLDERS | dict(c.placeholders)
        # (kind, class of placeholder, pattern, validator): the plugins' own compiled patterns, run on whole
        # documents, or on the lines that `LINE_GATE` selects
        rules: list[tuple[str, str, re.Pattern, Any]] = []
        if c.keys:
            for kind, plugin_class in KEY_PLUGINS.items():
                plugin = plugin_class()
                validator = getattr(plugin, "is_formally_valid", None)
                rules.extend((kind, "key", pattern, validator) for pattern in plugin.denylist)
            rules.extend((kind, "key", re.compile(p), None) for kind, p in EXTRA_KEY_RULES.items())
        if c.passwords:
            rules.extend(("password", "password", p, None) for p in BasicAuthDetector().denylist)
            self._keyword_plugin = KeywordDetector()
            self._keyword_lines = re.compile("|".join(KEYWORD_DENYLIST))  # on lowered lines: IGNORECASE is 10x slower
        gated = [r for r in rules if r[0] in LINE_GATED_KINDS or r[2].flags & re.IGNORECASE]
        self._document_rules = [r for r in rules if r not in gated]
        # run once over the selected lines joined by newlines, so `^` and `$` must mean a line's ends
        gated = [(k, c, re.compile(p.pattern, p.flags | re.MULTILINE), v) for k, c, p, v in gated]
        self._line_rules = [r for r in gated if r[0] not in LONG_VALUE_KINDS]
        self._long_value_rules = [r for r in gated if r[0] in LONG_VALUE_KINDS]
        self._entropy = Base64HighEntropyString(limit=c.high_entropy_limit) if c.high_entropy_limit else None
        self._ips = IPPublicDetector().denylist[0] if c.ip_addresses else None
        self._kept_email_domains = tuple(d.lower() for d in c.kept_email_domains)

    def apply(self, doc: Doc) -> str | None:
        content = doc["content"]
        spans = self.find(content, doc.get("path") or "")
        if not spans:
            return None
        pieces, position, counts = [], 0, {}
        for start, end, kind, placeholder_class in spans:
            pieces.append(content[position:start])
            pieces.append(self._placeholders[placeholder_class])
            position = end
            counts[kind] = counts.get(kind, 0) + 1
        pieces.append(content[position:])
        doc["content"] = "".join(pieces)
        for kind, n in counts.items():
            self.stats.count(f"redacted:{kind}", n)
        self.stats.count("docs_redacted")
        secrets = sum(1 for span in spans if span[3] in ("key", "password"))
        if self.config.max_secrets is not None and secrets > self.config.max_secrets:
            return "too_many_secrets"
        return None

    def find(self, content: str, path: str = "") -> list[tuple[int, int, str, str]]:
        """Non-overlapping spans `(start, end, kind, placeholder class)` in order; the earliest, then longest, wins."""
        found: list[tuple[int, int, str, str]] = []
        if self.config.keys and ("PRIVATE KEY" in content or "PuTTY-User-Key-File" in content):
            found.extend(_private_key_blocks(content))
        for rule in self._document_rules:
            found.extend(_rule_spans(rule, content, 0))
        found.extend(self._line_spans(content, path))
        if self.config.emails:
            found.extend(self._email_spans(content))
        if self._ips is not None:
            found.extend(self._ip_spans(content))
        return _non_overlapping(found)

    def _line_spans(self, content: str, path: str) -> list[tuple[int, int, str, str]]:
        """The gated patterns and the line-based plugins (keyword, entropy), line by line."""
        spans: list[tuple[int, int, str, str]] = []
        if self._entropy is not None:
            lines = _all_lines(content)
        elif self._line_rules or self._long_value_rules or self.config.passwords:
            lines = _gated_lines(content)
        else:
            return spans
        spans.extend(_joined_spans(content, lines, self._line_rules))
        if self._long_value_rules:
            long_value_lines = [(start, end) for start, end in lines if _LONG_VALUE.search(content, start, end)]
            spans.extend(_joined_spans(content, long_value_lines, self._long_value_rules))
        for start, end in lines:
            line = content[start:end]
            if len(line) > self.config.max_keyword_line_chars:
                continue
            values: list[tuple[str, str]] = []
            if self.config.passwords and self._keyword_lines.search(line.lower()):
                values += [("password", s.secret_value) for s in self._keyword_plugin.analyze_line(path, line)]
            if self._entropy is not None:
                values += [("high_entropy_string", s.secret_value) for s in self._entropy.analyze_line(path, line)]
            for kind, value in values:
                if not value or _is_false_positive(value, line):
                    continue
                at = line.find(value)
                while at >= 0:
                    spans.append(
                        (start + at, start + at + len(value), kind, "password" if kind == "password" else "key")
                    )
                    at = line.find(value, at + len(value))
        return spans

    def _email_spans(self, content: str) -> list[tuple[int, int, str, str]]:
        spans = []
        for at in _AT.finditer(content):
            domain = _EMAIL_DOMAIN.match(content, at.end())
            if domain is None:
                continue
            window_start = max(0, at.start() - 64)
            user = _EMAIL_USER.search(content[window_start : at.start()])
            if user is None:
                continue
            start = window_start + user.start()
            if _URL_USER_BEFORE.search(content[max(0, start - 200) : start]):
                continue
            name = domain.group(0).lower()
            if user.group(0) in self.config.kept_email_users or any(
                name == d or name.endswith("." + d) for d in self._kept_email_domains
            ):
                continue
            spans.append((start, domain.end(), "email", "email"))
        return spans

    def _ip_spans(self, content: str) -> list[tuple[int, int, str, str]]:
        spans = []
        lines: list[tuple[int, int]] = []
        for hint in _IP_HINT.finditer(content):
            start = content.rfind("\n", 0, hint.start()) + 1
            if lines and start < lines[-1][1]:
                continue
            end = content.find("\n", hint.end())
            lines.append((start, len(content) if end < 0 else end))
        matches = (m for start, end in lines for m in self._ips.finditer(content, start, end))
        for match in matches:
            address = match.group(1).split(":")[0]
            if address in self.config.kept_ips or not ipaddress.ip_address(address).is_global:
                continue
            if _VERSION_BEFORE_IP.search(content[max(0, match.start() - 12) : match.start()]):
                continue
            spans.append((match.start(1), match.start(1) + len(address), "ip_address", "ip_address"))
        return spans


def _rule_spans(rule, text: str, offset: int) -> list[tuple[int, int, str, str]]:
    kind, placeholder_class, pattern, validator = rule
    spans = []
    for match in pattern.finditer(text):
        start, end = _secret_span(match, placeholder_class)
        if start == end or (validator is not None and not validator(text[start:end])):
            continue
        spans.append((offset + start, offset + end, kind, placeholder_class))
    return spans


def _joined_spans(content: str, lines: list[tuple[int, int]], rules: list) -> list[tuple[int, int, str, str]]:
    """Spans of `rules` in the given lines of `content`, found in one pass over the lines joined by newlines."""
    if not lines or not rules:
        return []
    joined = "\n".join(content[start:end] for start, end in lines)
    joined_starts = list(itertools.accumulate((end - start + 1 for start, end in lines), initial=0))
    spans = []
    for rule in rules:
        for start, end, kind, placeholder_class in _rule_spans(rule, joined, 0):
            line = bisect.bisect_right(joined_starts, start) - 1
            shift = lines[line][0] - joined_starts[line]
            spans.append((start + shift, min(end + shift, lines[line][1]), kind, placeholder_class))
    return spans


def _gated_lines(content: str) -> list[tuple[int, int]]:
    """(start, end) of the lines holding a `LINE_GATE` word, case-insensitively."""
    lower = content.lower()
    if len(lower) != len(content):  # a few characters (İ) lower to two: positions must match
        lower = "".join(ch.lower()[0] for ch in content)
    lines, position = [], 0
    while (hit := LINE_GATE.search(lower, position)) is not None:
        start = content.rfind("\n", 0, hit.start()) + 1
        end = content.find("\n", hit.end())
        end = len(content) if end < 0 else end
        lines.append((start, end))
        position = end + 1
    return lines


def _all_lines(content: str) -> list[tuple[int, int]]:
    lines, start = [], 0
    for line in content.split("\n"):
        lines.append((start, start + len(line)))
        start += len(line) + 1
    return lines


def _secret_span(match: re.Match, placeholder_class: str) -> tuple[int, int]:
    """The secret inside a plugin's match. The plugins' groups mean different things: the secret itself
    (`aws.{0,20}?key...(40 chars)`, `://user:(password)@`) or a prefix (`(ghp|gho|...)_...`); a group is
    the secret when it is a password or long enough to be key material, otherwise the whole match is,
    less the delimiters some patterns include (`(?:\\s|=|:|"|^)AKC...`)."""
    if match.re.groups:
        group = max(range(1, match.re.groups + 1), key=lambda g: len(match.group(g) or ""))
        if match.group(group) and (placeholder_class == "password" or len(match.group(group)) >= 16):
            return match.span(group)
    start, end = match.span()
    text = match.group(0)
    return start + len(text) - len(text.lstrip(_DELIMITERS)), end - len(text) + len(text.rstrip(_DELIMITERS))


def _is_false_positive(value: str, line: str) -> bool:
    """detect-secrets' default heuristic filters for keyword and entropy findings (placeholders, ids, `$VAR`)."""
    return (
        value in DEFAULT_PLACEHOLDERS.values()
        or is_templated_secret(value)
        or is_sequential_string(value)
        or is_potential_uuid(value)
        or is_prefixed_with_dollar_sign(value)
        or is_likely_id_string(value, line)
        or is_indirect_reference(line)
    )


def _private_key_blocks(content: str) -> list[tuple[int, int, str, str]]:
    spans = []
    for header in _PEM_HEADER.finditer(content):
        end_marker = _PEM_END.search(content, header.end(), header.end() + PEM_MAX_CHARS)
        if end_marker is not None:
            end = end_marker.end()
        else:
            end = _KEY_LINES.match(content, header.end()).end()
        spans.append((header.start(), end, "private_key", "key"))
    return spans


def _non_overlapping(spans: list[tuple[int, int, str, str]]) -> list[tuple[int, int, str, str]]:
    spans.sort(key=lambda s: (s[0], -s[1]))
    kept: list[tuple[int, int, str, str]] = []
    for span in spans:
        if kept and span[0] < kept[-1][1]:
            if span[1] > kept[-1][1]:  # overlapping rules: one span covering both
                last = kept[-1]
                kept[-1] = (last[0], span[1], last[2], last[3])
            continue
        kept.append(span)
    return kept
