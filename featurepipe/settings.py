"""Where the services are: arguments, then environment, then the project's configuration file
(``featurepipe.project``), then the project's ``featurepipe dev up`` record, then defaults.

``featurepipe dev up`` (``featurepipe.dev.infra``) records the embedded services it started in
``.featurepipe/dev.json`` under the project root; the record and its reader live here, so
configuration depends on no dev tooling.

Credentials never reach a message: ``redact_url`` masks the password of a URL (as written,
percent-encoded or not) and secret query options, ``scrub`` removes a URL's secrets from any
text, and the Kafka SASL/TLS passwords are handed to kafka-python as ``Secret`` strings, whose
``repr`` (what a logged configuration shows) is ``'***'``.

The event contract's one setting lives here too: how far in the future an event may be dated
(``FEATUREPIPE_FUTURE_TOLERANCE``, default one day; see docs/semantics.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from featurepipe.errors import FeaturepipeError
from featurepipe.project import Project, active_project

KAFKA_ENV = "KAFKA_BOOTSTRAP_SERVERS"
DEFAULT_KAFKA = "127.0.0.1:9092"
DEV_STATE_FILE = Path(".featurepipe") / "dev.json"
KAFKA_CLIENT_ENV = "FEATUREPIPE_KAFKA_CLIENT"
KAFKA_CLIENTS = ("kafka-python", "confluent")  # featurepipe.stream.consumers
FUTURE_TOLERANCE_ENV = "FEATUREPIPE_FUTURE_TOLERANCE"
DEFAULT_FUTURE_TOLERANCE = timedelta(days=1)
MASK = "***"


@dataclass(repr=False)
class DevServices:
    """The record of running embedded services written by ``featurepipe dev up``.

    ``redis_url`` holds the generated password of the embedded server (the record is written
    with mode 0600). ``kafka_identity``/``redis_identity`` are the program and start time of
    each process when it was started, so that ``dev down`` never signals a process that merely
    reuses a recorded PID.
    """

    kafka_bootstrap: str
    redis_url: str
    kafka_pid: int
    redis_pid: int
    workdir: str
    kafka_identity: dict[str, Any] | None = field(default=None)
    redis_identity: dict[str, Any] | None = field(default=None)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    def __repr__(self) -> str:
        return (
            f"DevServices(kafka_bootstrap={self.kafka_bootstrap!r}, "
            f"redis_url={redact_url(self.redis_url)!r}, kafka_pid={self.kafka_pid}, "
            f"redis_pid={self.redis_pid}, workdir={self.workdir!r})"
        )


def load_dev_services(
    state_file: Path | None = None, project: Project | None = None
) -> DevServices | None:
    """The recorded embedded services, or None when there is no (readable) record.

    The record is the project's (``.featurepipe/dev.json`` under its root; ``project``
    defaults to the active one)."""
    if state_file is None:
        state_file = (project or active_project()).root / DEV_STATE_FILE
    if not state_file.exists():
        return None
    try:
        return DevServices(**json.loads(state_file.read_text()))
    except (ValueError, TypeError):
        return None


def kafka_bootstrap(explicit: str | None = None, project: Project | None = None) -> str:
    """The broker: ``explicit``, else $KAFKA_BOOTSTRAP_SERVERS, else the project's
    ``kafka_bootstrap``, else its ``dev up`` record, else 127.0.0.1:9092."""
    if explicit:
        return explicit
    env = os.environ.get(KAFKA_ENV)
    if env:
        return env
    project = project or active_project()
    if project.kafka_bootstrap:
        return project.kafka_bootstrap
    dev = load_dev_services(project=project)
    return dev.kafka_bootstrap if dev is not None else DEFAULT_KAFKA


def kafka_security() -> dict[str, Any]:
    """SASL/TLS settings passed through to kafka-python from the environment.

    KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL), KAFKA_SASL_MECHANISM,
    KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD, KAFKA_SSL_CAFILE, KAFKA_SSL_CERTFILE,
    KAFKA_SSL_KEYFILE, KAFKA_SSL_PASSWORD (of the key file). The passwords are ``Secret``
    strings: a logged client configuration (kafka-python's admin client logs its whole
    configuration at DEBUG) shows ``'***'``.
    """
    table = {
        "KAFKA_SECURITY_PROTOCOL": "security_protocol",
        "KAFKA_SASL_MECHANISM": "sasl_mechanism",
        "KAFKA_SASL_USERNAME": "sasl_plain_username",
        "KAFKA_SASL_PASSWORD": "sasl_plain_password",
        "KAFKA_SSL_CAFILE": "ssl_cafile",
        "KAFKA_SSL_CERTFILE": "ssl_certfile",
        "KAFKA_SSL_KEYFILE": "ssl_keyfile",
        "KAFKA_SSL_PASSWORD": "ssl_password",
    }
    secret = {"sasl_plain_password", "ssl_password"}
    return {
        kw: Secret(os.environ[env]) if kw in secret else os.environ[env]
        for env, kw in table.items()
        if os.environ.get(env)
    }


def kafka_client(explicit: str | None = None) -> str:
    """The stream worker's Kafka consumer: the argument, else FEATUREPIPE_KAFKA_CLIENT, else
    kafka-python. ``confluent`` (confluent-kafka, the extra ``featurepipe[confluent]``) is the
    fast one."""
    name = explicit or os.environ.get(KAFKA_CLIENT_ENV) or KAFKA_CLIENTS[0]
    if name not in KAFKA_CLIENTS:
        origin = "--client" if explicit else KAFKA_CLIENT_ENV
        raise FeaturepipeError(
            f"{origin}: unknown Kafka client '{name}' (choose one of: {', '.join(KAFKA_CLIENTS)})"
        )
    return name


def configured_redis_url(project: Project | None = None) -> str | None:
    """The project's ``redis_url`` (featurepipe.toml / [tool.featurepipe]), if set."""
    return (project or active_project()).redis_url


def dev_redis_url(project: Project | None = None) -> str | None:
    dev = load_dev_services(project=project)
    return dev.redis_url if dev is not None else None


# -- the event contract's setting ------------------------------------------------------------
_TOLERANCE = re.compile(r"(\d+)(s|m|h|d|w)")
_TOLERANCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_tolerance(text: str, origin: str = FUTURE_TOLERANCE_ENV) -> timedelta:
    """``'1d'``, ``'6h'``, ``'30m'``, ``'0s'`` ... or ``'off'`` (no limit: ``timedelta.max``)."""
    value = text.strip().lower()
    if value == "off":
        return timedelta.max
    m = _TOLERANCE.fullmatch(value)
    if m is None:
        raise FeaturepipeError(
            f"{origin} {text!r} is not a duration: expected a whole number and a unit "
            "(s, m, h, d, w), e.g. '1d' or '6h', or 'off'"
        )
    return timedelta(seconds=int(m.group(1)) * _TOLERANCE_UNITS[m.group(2)])


def future_tolerance() -> timedelta:
    """How far past the wall clock an event may be dated: ``$FEATUREPIPE_FUTURE_TOLERANCE``,
    else one day. Both paths refuse later events (docs/semantics.md, "Bad input")."""
    env = os.environ.get(FUTURE_TOLERANCE_ENV)
    return parse_tolerance(env) if env else DEFAULT_FUTURE_TOLERANCE


# -- credentials in messages -----------------------------------------------------------------
class Secret(str):
    """A credential handed to a client library: the text itself, but ``repr`` shows ``'***'``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(MASK)


# query options of a URL that carry credentials (redis-py passes unknown options through)
_SECRET_OPTION = re.compile(
    r"(?i)([?&;][^=&;#]*(?:pass|secret|token|credential|auth)[^=&;#]*=)[^&;#]*"
)


def _userinfo(url: str) -> tuple[int, int] | None:
    """Start and end of the user-info of ``url`` (before its last ``@``), or None.

    The last ``@`` of the whole URL, not of the host part: a password written with an
    unencoded ``/``, ``?`` or ``#`` moves the ``@`` out of what a URL parser calls the host.
    """
    start = url.find("://")
    if start < 0:
        return None
    start += 3
    at = url.rfind("@", start)
    return None if at < 0 else (start, at)


def unencoded_credentials(url: str) -> bool:
    """True when the user-info of ``url`` holds an unencoded ``/``, ``?`` or ``#``.

    A URL parser then sees part of the password as host, port or path (and clients print it);
    such a URL is refused with a message saying to percent-encode the password.
    """
    span = _userinfo(url)
    return span is not None and any(ch in url[span[0] : span[1]] for ch in "/?#")


def redact_url(url: str) -> str:
    """``url`` with its password and secret query options replaced by ``***``.

    The user name stays. A password with unencoded ``/``, ``?``, ``#`` or ``@`` is masked
    whole too (everything from the first ``:`` of the user-info to the URL's last ``@``).
    """
    span = _userinfo(url)
    out = url
    if span is not None:
        start, end = span
        user, colon, _password = url[start:end].partition(":")
        out = url[:start] + (f"{user}:{MASK}" if colon else user) + url[end:]
    return _SECRET_OPTION.sub(lambda m: m.group(1) + MASK, out)


def url_secrets(url: str) -> list[str]:
    """The secrets of ``url`` in every form a message could show them: as written,
    percent-decoded and percent-encoded (longest first)."""
    found: set[str] = set()
    span = _userinfo(url)
    if span is not None:
        _user, colon, password = url[span[0] : span[1]].partition(":")
        if colon and password:
            found.add(password)
    for m in _SECRET_OPTION.finditer(url):
        found.add(url[m.end(1) : m.end()])
    for s in list(found):
        found.update({unquote(s), quote(unquote(s), safe="")})
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, url: str | None) -> str:
    """``text`` with every secret of ``url`` (see ``url_secrets``) replaced by ``***``."""
    if not url:
        return text
    for secret in url_secrets(url):
        text = text.replace(secret, MASK)
    return text
