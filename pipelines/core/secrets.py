"""Where an endpoint's API key comes from, and what must never be written down.

One rule for every client (distill's teacher, bench's openai targets): an endpoint gets a key only from the
environment variable that its own config names in `api_key_env`. Nothing is sent by default; no variable is
read unless a config names it.

    valid_env_name(name)         a variable *name* (A-Z, 0-9, _; not a digit first) that does not look like a key
    url_has_credentials(url)     user:password@ in the URL, or a key-like query parameter (?api_key=…)
    redact_url(url) / scrub(s)   text safe for a message: credentials and key-like tokens replaced by ***
    key_for(env, url, where)     the key to send, or None; an unset named variable is an error (a warning for
                                 a loopback endpoint, which is usually a local server that needs no key)

The validators of TargetConfig and TeacherConfig call the first two, so a recipe that carries a key (pasted
into `api_key_env`, or in the URL) fails validation and never reaches manifest.json, DONE.json or a report;
their messages name the recipe key and never the value.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from typing import Annotated
from urllib.parse import parse_qsl, urlsplit

from pydantic import AfterValidator

from slmkit.pipelines.core.errors import SlmkitError

log = logging.getLogger("slmkit")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Prefixes of well-known key formats (OpenAI/Anthropic sk-, Stripe, GitHub, Hugging Face, Slack, AWS, Google,
# GitLab, Groq). Checked case-sensitively: HF_TOKEN is a variable name, hf_AbC… a token.
KEY_PREFIXES = ("sk-", "sk_", "pk-", "pk_", "rk_", "ghp_", "gho_", "ghs_", "ghu_", "github_pat_", "hf_",
                "xoxb-", "xoxp-", "AKIA", "ASIA", "AIza", "glpat-", "gsk_", "sess-")
# Query parameters that carry a key (?key=… is how some providers take one).
_KEY_PARAMS = {"key", "api_key", "apikey", "api-key", "token", "access_token", "auth", "password", "secret"}
_TOKEN = re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(p) for p in KEY_PREFIXES) + r")[A-Za-z0-9_\-]{4,}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/@\s]*@")

ENV_NAME_HELP = ("`api_key_env` holds the *name* of the environment variable that holds the key "
                 "(e.g. OPENAI_API_KEY), never the key itself")


def looks_like_key(value: str) -> bool:
    """A known key prefix, or a long random-looking string (mixed case and digits, no underscore)."""
    if value.startswith(KEY_PREFIXES):
        return True
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    return len(value) >= 24 and "_" not in value and classes == 3


def valid_env_name(name: str) -> bool:
    return bool(_ENV_NAME.fullmatch(name)) and not looks_like_key(name)


def env_name_problem(name: str) -> str | None:
    """Why `name` is not usable as `api_key_env` (never quoting it), or None."""
    if valid_env_name(name):
        return None
    if _ENV_NAME.fullmatch(name) is None and not looks_like_key(name):
        return f"not an environment variable name (letters, digits and _, not starting with a digit); {ENV_NAME_HELP}"
    return f"this looks like a key, not a variable name (the value is not shown); {ENV_NAME_HELP}"


def url_has_credentials(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    if "@" in parts.netloc:
        return True
    return any(k.lower() in _KEY_PARAMS or looks_like_key(v) for k, v in parse_qsl(parts.query, True))


def url_problem(url: str) -> str | None:
    if not url_has_credentials(url):
        return None
    return ("the URL carries credentials (user:password@ or a key parameter; the value is not shown): put the key "
            "in an environment variable and name it in `api_key_env`")


def redact_url(url: str) -> str:
    """The URL with its user:password@ and the values of key-like query parameters replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = ("***@" + parts.netloc.rsplit("@", 1)[1]) if "@" in parts.netloc else parts.netloc
    query = "&".join(f"{k}=***" if k.lower() in _KEY_PARAMS or looks_like_key(v) else f"{k}={v}"
                     for k, v in parse_qsl(parts.query, True))
    return parts._replace(netloc=netloc, query=query).geturl()


def scrub(text: str) -> str:
    """Any text made safe for a message: URL credentials and key-like tokens replaced by ***."""
    return _TOKEN.sub("***", _USERINFO.sub(r"\1***@", text))


def is_loopback(url: str | None) -> bool:
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_warned: set[tuple[str, str]] = set()


def key_for(config_env: str | None, base_url: str | None, where: str) -> str | None:
    """The key to send to `base_url`: the value of the variable this endpoint's config names, or None.

    None when `api_key_env` is unset (no Authorization header at all). A named variable that is unset or empty
    is an error naming `where` (the recipe key) and the variable, or a warning (once) when the endpoint is on
    loopback. The key itself never enters a message.
    """
    if config_env is None:
        return None
    problem = env_name_problem(config_env)
    if problem:
        raise SlmkitError(f"{where}: {problem}")
    value = os.environ.get(config_env)
    if value:
        return value
    shown = redact_url(base_url) if base_url else "the endpoint"
    message = f"{where}: names the environment variable {config_env}, which is not set"
    if is_loopback(base_url):
        if (config_env, str(base_url)) not in _warned:
            _warned.add((config_env, str(base_url)))
            log.warning("warning: %s; calling %s (loopback) without a key", message, shown)
        return None
    raise SlmkitError(f"{message} (export it, or remove `api_key_env` if {shown} needs no key)")


def _checked(problem_of):
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value
    return check


# Config field types, one rule for every endpoint config (bench targets, teachers, what comes later).
EnvVarName = Annotated[str, AfterValidator(_checked(env_name_problem))]  # a variable's name, never a key
EndpointURL = Annotated[str, AfterValidator(_checked(url_problem))]  # no credentials in the URL
