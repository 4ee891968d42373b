"""The one configuration model of fognode.

Every knob lives here so that operators have a single place to look (README
documents each field). Values come, highest priority first, from: explicit
overrides (the CLI flags), environment variables prefixed ``FOGNODE_``, an
optional TOML file (``FOGNODE_CONFIG`` or ``--config``), then the defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from contextvars import ContextVar
from datetime import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ...discovery.names import DEFAULT_INSTANCE
from .paths import (
    default_api_keys_file,
    default_certs_dir,
    default_session_key_file,
    default_usage_file,
)

CONFIG_ENV = "FOGNODE_CONFIG"
# The --config flag wins over FOGNODE_CONFIG; a context variable carries it into
# settings_customise_sources without mutating the process environment.
_config_path: ContextVar[Path | None] = ContextVar("fognode_config_path", default=None)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the optional config file.

    The file path is only known at runtime (flag or env var), so the source
    is built per instantiation rather than fixed in ``model_config``.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
            # Allow either top-level keys or a [fognode] table.
            self._data = raw.get("fognode", raw)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # Unknown keys go through so that extra="forbid" reports typos.
        return dict(self._data)


# Where Ollama listens unless told otherwise; upstream_kind=auto probes it.
DEFAULT_UPSTREAM_URL = "http://127.0.0.1:11434"

_SERVICE_TYPE = re.compile(
    r"_[A-Za-z0-9](?:[A-Za-z0-9-]{0,13}[A-Za-z0-9])?\._(?:tcp|udp)(?:\.[^.\s]+)*", re.ASCII
)
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)


def _mdns_domain(value: str) -> str:
    """A DNS-SD domain reachable by multicast: it must end in `local`."""
    name = value.strip().rstrip(".").lower()
    labels = name.split(".")
    if labels[-1] != "local" or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not an mDNS domain: mDNS answers only names under `local.` "
            "(such as `local.` or `spezillmfog.local.`)"
        )
    return f"{name}."


class QuotaTier(BaseModel):
    """One tier's limits in quota_tiers (0 or absent: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_per_day: int = Field(0, ge=0)
    requests_per_minute: int = Field(0, ge=0)


class Settings(BaseSettings):
    """fognode settings. Environment variables are ``FOGNODE_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix="FOGNODE_",
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        # A validation error would otherwise quote the values it was given,
        # secrets included (usage_database_url, ca_passphrase, upstream_api_key):
        # the messages name the setting and what is wrong with it, not its value.
        hide_input_in_errors=True,
    )

    # --- listening -------------------------------------------------------
    host: str = Field(
        "127.0.0.1",
        description="Address to bind. `*` serves the LAN on every interface, IPv4 and IPv6 "
        "(`0.0.0.0`: IPv4 only).",
    )
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="TCP port to listen on (0 = any free). Default 8443 with TLS, 8080 without.",
    )
    workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="Processes that serve requests, sharing the port (0: one per core; 1: "
        "everything in one process). The node behaves as one whatever the number: admission, "
        "quotas, affinity, metrics, the status page, mDNS and certificate renewal are the "
        "node's (README, Every core).",
    )

    # --- TLS ---------------------------------------------------------------
    tls: bool = Field(
        True,
        description="Serve HTTPS with the local CA's server certificate. Turn off only for "
        "development (plain HTTP, as the reference's development mode).",
    )
    certs_dir: Path = Field(
        default_factory=default_certs_dir,
        description="Where `fognode certs` keeps ca.crt, ca.key, server.crt and server.key.",
    )
    tls_cert_file: Path | None = Field(
        None, description="Server certificate chain (PEM). Default: <certs_dir>/server.crt."
    )
    tls_key_file: Path | None = Field(
        None, description="Server key (PEM, unencrypted). Default: <certs_dir>/server.key."
    )
    tls_ca_file: Path | None = Field(
        None,
        description="CA the server certificate must chain to. Default: <certs_dir>/ca.crt.",
    )
    cert_names: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="DNS names and IP addresses for the server certificate, comma-separated "
        "or a JSON list. Default: spezillmfog.local, <hostname>.local, localhost, loopback and "
        "the LAN addresses.",
    )
    cert_key_type: Literal["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"] = Field(
        "ecdsa-p256", description="Key type of renewed server certificates."
    )
    cert_validity_days: float = Field(
        397,
        gt=0,
        le=825,
        description="Validity of issued server certificates. iPhones refuse more than 825 days "
        "from a user-installed CA; Apple recommends at most 397.",
    )
    cert_renew_before_days: float = Field(
        30, ge=0, description="Renew the server certificate this many days before it expires."
    )
    cert_check_interval: float = Field(
        3600,
        gt=0,
        description="Seconds between checks of the certificate files (reload when they change, "
        "renew when expiry nears).",
    )
    ca_passphrase: SecretStr | None = Field(
        None,
        description="Passphrase of the CA key, needed for automatic renewal. Prefer "
        "ca_passphrase_file.",
    )
    ca_passphrase_file: Path | None = Field(
        None,
        description="File whose first line is the CA key passphrase (e.g. a Docker secret).",
    )

    # --- authentication and access policy ----------------------------------
    auth: Literal["firebase", "none"] = Field(
        "firebase",
        description="`firebase`: every request but the probes needs a Firebase ID token or an "
        "API key. `none`: no checks at all, for local development only (refused on a "
        "non-loopback address unless allow_no_auth_on_lan).",
    )
    allow_no_auth_on_lan: bool = Field(
        False, description="Let auth=none listen on a non-loopback address. Dangerous."
    )
    firebase_project_id: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_PROJECT_ID", "firebase_project_id", "GOOGLE_CLOUD_PROJECT"
        ),
        description="Firebase project whose ID tokens are accepted (the tokens' aud). Default: "
        "the service account's project, or GOOGLE_CLOUD_PROJECT.",
    )
    firebase_credentials_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_CREDENTIALS_FILE",
            "firebase_credentials_file",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        description="Service account key (JSON). Needed for revocation checks and "
        "`fognode claims`; token signatures alone are checked with Google's public keys.",
    )
    firebase_auth_emulator_host: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_AUTH_EMULATOR_HOST",
            "firebase_auth_emulator_host",
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
        description="host:port of the Firebase Auth Emulator (development). Its tokens are "
        "unsigned, so this is refused together with TLS unless allow_emulator_with_tls.",
    )
    allow_emulator_with_tls: bool = Field(
        False, description="Accept emulator tokens on a TLS (production-looking) node."
    )
    firebase_certs_url: str = Field(
        "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com",
        description="Where the public keys that sign ID tokens are fetched. Change only to "
        "test against a local key set.",
    )
    check_revoked: bool = Field(
        False,
        description="Also check that the token was not revoked and the user is not disabled "
        "(one Admin API call per new token; needs the service account).",
    )
    revocation_recheck_seconds: float = Field(
        300,
        gt=0,
        description="With check_revoked, how long a verified token is trusted before it is "
        "checked again.",
    )
    token_cache_size: int = Field(
        10_000, ge=0, description="Verified tokens remembered until they expire (0: no cache)."
    )
    auth_threads: int = Field(
        4, ge=1, description="Threads for firebase-admin (it blocks; kept off the event loop)."
    )
    required_claims: dict[str, Any] = Field(
        default_factory=dict,
        description='Custom claims every user must have, as JSON: {"fog": true} or '
        '{"role": ["clinician", "admin"]} (one of).',
    )
    allowed_uids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only these Firebase uids (comma-separated or JSON list).",
    )
    allowed_email_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only accounts whose email is in one of these domains.",
    )
    require_email_verified: bool = Field(
        False, description="Only accounts with a verified email address."
    )
    admin_claim: str = Field(
        "admin",
        min_length=1,
        description="Custom claim (set to true) that allows model management (/api/pull ...).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Static API keys as `name:user|admin:sha256hex` entries (comma-separated "
        "or JSON list); `fognode apikey create` makes them.",
    )
    api_keys_file: Path | None = Field(
        default_factory=default_api_keys_file,
        description="File with one `name:user|admin:sha256hex` entry per line. Default: "
        "~/.local/share/fognode/api-keys when setup.sh has made it.",
    )

    # --- mDNS / DNS-SD announcement -----------------------------------------
    app_host_name: str = Field(
        "spezillmfog.local",
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$",
        description="The host name SpeziLLMFog apps are configured with "
        "(LLMFogPlatformConfiguration.host): they browse the DNS-SD domain `<name>.`, send it "
        "as Host and check the server certificate for it.",
    )
    mdns: bool = Field(True, description="Announce the node on the LAN with mDNS.")
    mdns_service_type: str | None = Field(
        None,
        description="DNS-SD service type, without a domain. Default `_https._tcp` with TLS, "
        "`_http._tcp` without (what SpeziLLMFog apps browse for). A domain given here "
        "(`_https._tcp.spezillmfog.local.`) is added to mdns_domains.",
    )
    mdns_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="DNS-SD domains to register the service in (comma-separated). Default: "
        "`local.` (generic tools) and `<app_host_name>.` (where SpeziLLMFog apps browse).",
    )
    mdns_instance_name: str = Field(
        DEFAULT_INSTANCE,
        min_length=1,
        max_length=63,
        description="Service instance name clients browse for. On a name clash the second "
        "node becomes `<name>-2`.",
    )
    mdns_host_name: str | None = Field(
        None,
        description="This node's own host name in the SRV records, with its A/AAAA records. "
        "Default `fognode-<first 8 characters of the node id>.local.`. Each node needs its own: "
        "a shared name makes every service resolve to every node.",
    )
    mdns_interfaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses to announce and answer on (comma-separated). Default: every "
        "non-loopback IPv4/IPv6 address of the machine (or the bound address).",
    )
    mdns_include_loopback: bool = Field(
        False, description="Also announce loopback addresses (for tests on one machine)."
    )
    mdns_refresh_interval: float = Field(
        10, gt=0, description="Seconds between checks of the model list and load for TXT."
    )
    mdns_min_update_interval: float = Field(
        5, ge=0, description="Re-announce a changed TXT record at most this often."
    )
    node_id: str | None = Field(
        None,
        description="Stable id in TXT `id`. Default: made once and kept in "
        "~/.local/share/fognode/node-id.",
    )

    # --- upstream (Ollama) -----------------------------------------------
    upstream_url: AnyHttpUrl = Field(
        default_factory=lambda: AnyHttpUrl(DEFAULT_UPSTREAM_URL),
        description="Base URL of the Ollama server the gateway forwards to.",
    )
    upstream_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Several upstreams (comma-separated base URLs) instead of upstream_url: "
        "requests go to one that has the model, loaded first, then the one that served the "
        "conversation, then the least busy, with failover.",
    )
    upstream_max_concurrent: int = Field(
        0,
        ge=0,
        description="Requests in flight per upstream (0: no per-upstream cap). Set it to what "
        "one upstream runs at once (OLLAMA_NUM_PARALLEL) so routing knows when one would queue.",
    )
    upstream_check_interval: float = Field(
        15,
        gt=0,
        description="Seconds between health, model-list and loaded-model checks of the upstreams.",
    )
    upstream_affinity: bool = Field(
        True,
        description="With several upstreams, send a conversation's next turn to the upstream "
        "that served its previous one (its KV cache holds the prompt) unless that one is busy "
        "and another with the model loaded is idle. false: least busy only.",
    )
    upstream_affinity_entries: int = Field(
        10_000, ge=1, description="Conversations remembered for affinity (oldest forgotten first)."
    )
    upstream_affinity_seconds: float = Field(
        600,
        gt=0,
        description="How long a conversation's upstream is remembered after its last turn.",
    )
    upstream_kind: Literal["auto", "ollama", "openai", "embedded"] = Field(
        "auto",
        description="`ollama`: Ollama, with its native /api routes. `openai`: any "
        "OpenAI-compatible server (llama.cpp's server, vLLM, LocalAI); /api routes answer 501. "
        "`embedded`: fognode runs llama.cpp's server itself with embedded_model. `auto`: an "
        "upstream_url or upstream_urls that is set is Ollama, as given; with neither set, "
        "Ollama at the default address if it answers at start, else the embedded model.",
    )
    upstream_api_key: str | None = Field(
        None,
        description="Bearer key sent upstream (for OpenAI-compatible upstreams that need one). "
        "Client credentials are never forwarded.",
    )
    upstream_max_connections: int = Field(
        0,
        ge=0,
        description="Connections to each upstream at once (its keep-alive pool). 0: "
        "max_concurrent_requests plus 64 for requests that take no admission slot (model "
        "lists, model management), so an admitted request never waits for a connection. "
        "A value set must be at least max_concurrent_requests.",
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to establish a TCP connection to the upstream."
    )
    first_byte_timeout: float = Field(
        900.0,
        gt=0,
        description="Seconds to wait for the upstream's response headers. Ollama sends them "
        "only after loading the model and processing the prompt (and, without streaming, "
        "after the whole answer), which on a CPU can take minutes.",
    )
    idle_timeout: float = Field(
        300.0,
        gt=0,
        description="Longest gap, in seconds, between two chunks of an upstream body.",
    )
    client_write_timeout: float = Field(
        60.0,
        gt=0,
        description="Longest a client may leave a response unread (back-pressure) before "
        "it is dropped and its Ollama request cancelled.",
    )
    stream_heartbeat_after: float = Field(
        5.0,
        gt=0,
        description="A streamed (SSE) request that has waited this many seconds (in the queue, "
        "or for the upstream's first byte) gets its 200 headers and SSE comment heartbeats, so "
        "phones (60 s idle timeout) do not give up; later errors then arrive in-band.",
    )
    stream_heartbeat_interval: float = Field(
        15.0,
        gt=0,
        description="Seconds between SSE comment heartbeats while a streamed request waits or "
        "its upstream is silent.",
    )
    readiness_timeout: float = Field(
        3.0, gt=0, description="Seconds /readyz waits for the upstream before answering 503."
    )
    readiness_cache_seconds: float = Field(
        1.0,
        ge=0,
        description="How long a /readyz result is reused, so probes stay cheap under load.",
    )

    # --- the embedded model (upstream_kind embedded, or auto without Ollama) ---
    embedded_model: str | None = Field(
        None,
        description="What the embedded llama.cpp server runs: a packaged model by name "
        "(`smollm2:135m`, the default; `gemma3:270m`) or the path of a GGUF file.",
    )
    embedded_model_alias: str | None = Field(
        None,
        min_length=1,
        description="Model name clients ask for. Default: a packaged model's name (Ollama's "
        "name for it), else the file name without `.gguf`.",
    )
    embedded_chat_format: str | None = Field(
        None,
        description="llama-cpp-python chat format (`chatml`, `gemma`, `llama-3`, ...). "
        "Default: the chat template stored in the GGUF file (`gemma` for gemma3:270m, whose "
        "file has none).",
    )
    embedded_context_size: int = Field(
        4096, ge=256, description="Context window of the embedded model, in tokens."
    )
    embedded_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads per llama.cpp server process. Default: the cores divided "
        "by embedded_parallel.",
    )
    embedded_parallel: int = Field(
        1,
        ge=1,
        le=64,
        description="Parallel slots: llama.cpp server processes, each answering one request "
        "at a time (they share the model file's pages). Also the default "
        "max_concurrent_requests when the embedded model serves.",
    )
    embedded_start_timeout: float = Field(
        600,
        gt=0,
        description="Seconds a llama.cpp server process may take to load the model before it "
        "is killed and restarted.",
    )

    # --- admission control ---------------------------------------------------
    max_concurrent_requests: int = Field(
        4,
        ge=1,
        description="Inference requests sent to Ollama at once (match OLLAMA_NUM_PARALLEL "
        "times the models you keep loaded). The `load` TXT field's capacity.",
    )
    max_queued_requests: int = Field(
        64, ge=0, description="Requests waiting for a slot; beyond that: 503 with Retry-After."
    )
    per_user_concurrent_requests: int = Field(
        2, ge=1, description="Inference requests one user (uid or API key) may run at once."
    )
    per_user_queued_requests: int = Field(
        8, ge=0, description="Requests one user may have waiting; beyond that: 429."
    )
    queue_timeout: float = Field(120, gt=0, description="Longest wait in the queue before a 503.")

    # --- usage accounting and quotas (usage/) ----------------------------------
    usage_accounting: bool = Field(
        True,
        description="Record every inference request (user, model, tokens, outcome; never a "
        "prompt, an answer or a credential) in the usage store. Quotas need it.",
    )
    usage_database_url: SecretStr | None = Field(
        None,
        description="`postgresql://user:password@host/db`: keep usage in PostgreSQL, shared by "
        "several nodes so that they enforce one budget per user. Default: SQLite in "
        "usage_sqlite_path. A secret: masked by `fognode config`, never logged.",
    )
    usage_sqlite_path: Path = Field(
        default_factory=default_usage_file,
        description="The embedded usage store (SQLite, WAL). Default: "
        "~/.local/share/fognode/usage.sqlite3.",
    )
    usage_flush_records: int = Field(
        100, ge=1, description="Usage records written in one batch (one transaction)."
    )
    usage_flush_seconds: float = Field(
        1.0,
        gt=0,
        description="Longest a usage record waits for its batch; a `kill -9` loses at most "
        "what waited.",
    )
    usage_buffer_limit: int = Field(
        10_000,
        ge=1,
        description="Usage records kept in memory while the store is unreachable; beyond it "
        "new ones are dropped (and counted in /metrics).",
    )
    quota_tokens_per_day: int = Field(
        0, ge=0, description="Tokens (prompt + completion) one user may use per day (0: no limit)."
    )
    quota_requests_per_minute: int = Field(
        0, ge=0, description="Inference requests one user may start per minute (0: no limit)."
    )
    quota_tiers: dict[str, QuotaTier] = Field(
        default_factory=dict,
        description='Limits per tier, as JSON: {"staff": {"tokens_per_day": 0, '
        '"requests_per_minute": 600}, "guest": {"tokens_per_day": 20000}} (0 or absent: no '
        "limit). A user's tier is their quota_tier_claim, an API key's quota_api_key_tiers.",
    )
    quota_tier_claim: str = Field(
        "fog_tier",
        min_length=1,
        description="Firebase custom claim that names a user's tier (`fognode claims set UID "
        "fog_tier=staff`).",
    )
    quota_api_key_tiers: dict[str, str] = Field(
        default_factory=dict,
        description='Tier of each API key, by key name, as JSON: {"ci": "staff"}.',
    )
    quota_day_start: time = Field(
        time(0, 0),
        description="When the daily token budget resets, as HH:MM in UTC.",
    )
    quota_default_completion_tokens: int = Field(
        512,
        ge=1,
        description="What a request that sets no max_tokens is assumed to generate when it is "
        "admitted (its reservation against the daily budget; settled with the real count).",
    )
    usage_metrics_per_user: bool = Field(
        False,
        description="Label the token counters in /metrics by user as well as by model (one "
        "series per user: mind the cardinality).",
    )

    # --- connections and requests ----------------------------------------
    client_first_byte_timeout: float = Field(
        10,
        gt=0,
        description="Seconds a new connection may take to send the first byte of its "
        "first request, TLS handshake included; then it is closed.",
    )
    keepalive_timeout: float = Field(
        75,
        gt=0,
        description="Seconds an idle keep-alive connection stays open between requests.",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Client connections at once (0: the descriptor limit less a reserve for "
        "the upstream pool and the rest). Beyond it the oldest idle one is closed, or the "
        "new one refused if all are busy.",
    )
    max_connections_per_client: int = Field(
        64,
        ge=0,
        description="Connections from one client address (an IPv6 /64) at once (0: no cap). "
        "Raise it, or set 0, behind a reverse proxy.",
    )
    header_timeout: float = Field(
        30, gt=0, description="Seconds a client may take to send a request's headers."
    )
    body_timeout: float = Field(
        120,
        gt=0,
        description="Seconds a client may take to send a request body (large images on a "
        "slow Wi-Fi take a while); then 408.",
    )
    max_body_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted (images in chat requests are base64).",
    )

    # --- the operator's pages: status page, sign-in, phone onboarding (web/) --------
    status_page: bool = Field(
        True,
        description="Serve the status page at `/` to administrators who sign in from a browser "
        "(an admin API key or a Firebase admin's ID token).",
    )
    status_refresh_seconds: float = Field(
        2.0, gt=0, le=300, description="How often an open status page fetches fresh values."
    )
    session_lifetime: float = Field(
        3600,
        ge=60,
        le=7 * 86400,
        description="Seconds a status page sign-in lasts; then the browser signs in again.",
    )
    session_key_file: Path = Field(
        default_factory=default_session_key_file,
        description="Key that signs the status page's session cookies, made (mode 0600) at "
        "first start. Delete it and restart to sign every browser out.",
    )
    onboarding: bool | None = Field(
        None,
        description="Serve the phone onboarding page (QR code and the CA for phones) on its own "
        "plain-HTTP port. Default: on when TLS is on, off without TLS.",
    )
    onboarding_port: int = Field(
        80,
        ge=1,
        le=65535,
        description="Port of the onboarding page. If it cannot be bound (port 80 needs "
        "CAP_NET_BIND_SERVICE), the node logs how to fix it and serves without the page.",
    )
    onboarding_url: AnyHttpUrl | None = Field(
        None,
        description="Base URL phones open for the onboarding page (a DNS name, a port a router "
        "forwards), put in its QR code. Default: http://<this machine's LAN address>[:port].",
    )

    # --- server lifecycle and logs ---------------------------------------
    shutdown_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds open requests get to finish after SIGTERM before being cut.",
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto",
        description="`auto` uses uvloop when it is installed (it is a dependency on Linux "
        "and macOS); `asyncio` forces the standard loop.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        "text", description="`json` writes one JSON object per line for log shippers."
    )
    access_log: bool = Field(True, description="One log line per request.")
    metrics_public: bool = Field(
        False,
        description="Serve /metrics without credentials (default: administrators only, e.g. "
        "a Prometheus scraper with an admin API key as bearer token).",
    )

    @field_validator(
        "cert_names",
        "allowed_uids",
        "allowed_email_domains",
        "api_keys",
        "mdns_interfaces",
        "mdns_domains",
        "upstream_urls",
        mode="before",
    )
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("usage_database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            # The value is a secret: the message does not quote it.
            raise ValueError("must be a postgresql:// URL")
        return value

    @field_validator("quota_day_start")
    @classmethod
    def _utc_day_start(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("give HH:MM in UTC, without an offset")
        return value

    @field_validator("mdns_service_type")
    @classmethod
    def _service_type_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip().rstrip(".")
        if not _SERVICE_TYPE.fullmatch(text):
            raise ValueError(
                f"{value!r} is not a DNS-SD service type: expected `_name._tcp` or `_name._udp` "
                "(a name of at most 15 letters, digits or hyphens), optionally followed by a "
                "domain such as `.local.`"
            )
        return text

    @field_validator("mdns_domains")
    @classmethod
    def _domains_shape(cls, value: list[str]) -> list[str]:
        return [_mdns_domain(d) for d in value]

    @field_validator("mdns_host_name")
    @classmethod
    def _host_name_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip().rstrip(".")
        if name.lower().endswith(".local"):
            name = name[: -len(".local")]
        if not _HOST_LABEL.fullmatch(name):
            raise ValueError(
                f"{value!r} is not a host name for mDNS: one label of letters, digits and "
                "hyphens, optionally followed by `.local`"
            )
        return f"{name}.local."

    @model_validator(mode="after")
    def _defaults(self) -> Settings:
        if self.port is None:
            self.port = 8443 if self.tls else 8080
        domains = self.mdns_domains or self._default_domains()
        if self.mdns_service_type is not None:
            # `_https._tcp.spezillmfog.local.`: the type, and a domain to announce in.
            base, proto, domain = self.mdns_service_type.partition(
                "._tcp" if "._tcp" in self.mdns_service_type else "._udp"
            )
            self.mdns_service_type = base + proto
            if domain.strip("."):
                extra = _mdns_domain(domain.lstrip("."))
                domains = domains if extra in domains else [*domains, extra]
        self.mdns_domains = list(dict.fromkeys(domains))
        if 0 < self.upstream_max_connections < self.max_concurrent_requests:
            raise ValueError(
                f"upstream_max_connections={self.upstream_max_connections} is below "
                f"max_concurrent_requests={self.max_concurrent_requests}: admitted requests "
                "would wait for a connection to the upstream. Raise it, or set 0 (sized "
                "from max_concurrent_requests)"
            )
        self._check_quotas()
        if self.upstream_kind == "embedded" and self.upstream_configured:
            raise ValueError(
                "upstream_kind=embedded runs a model in fognode itself; unset upstream_url "
                "and upstream_urls, or choose upstream_kind ollama or openai for them"
            )
        return self

    def _check_quotas(self) -> None:
        unknown = sorted(set(self.quota_api_key_tiers.values()) - set(self.quota_tiers))
        if unknown:
            raise ValueError(
                f"quota_api_key_tiers names tiers that quota_tiers does not define: {unknown}"
            )
        if self.usage_buffer_limit < self.usage_flush_records:
            raise ValueError("usage_buffer_limit must be at least usage_flush_records")
        limited = (
            self.quota_tokens_per_day
            or self.quota_requests_per_minute
            or any(t.tokens_per_day or t.requests_per_minute for t in self.quota_tiers.values())
        )
        if limited and not self.usage_accounting:
            raise ValueError(
                "quotas are counted from the usage records: set usage_accounting=true, "
                "or remove the quota limits"
            )

    def _default_domains(self) -> list[str]:
        return ["local.", _mdns_domain(self.app_host_name)]

    @property
    def service_type(self) -> str:
        """The DNS-SD type announced: what the SpeziLLMFog app browses for in its mode."""
        return self.mdns_service_type or ("_https._tcp" if self.tls else "_http._tcp")

    @property
    def upstream_configured(self) -> bool:
        """An upstream the operator named (flag, env var or file), to be used as given."""
        return "upstream_url" in self.model_fields_set or bool(self.upstream_urls)

    @property
    def bind_port(self) -> int:
        assert self.port is not None  # filled in by _default_port
        return self.port

    @property
    def server_cert_file(self) -> Path:
        return self.tls_cert_file or self.certs_dir / "server.crt"

    @property
    def server_key_file(self) -> Path:
        return self.tls_key_file or self.certs_dir / "server.key"

    @property
    def ca_cert_file(self) -> Path:
        return self.tls_ca_file or self.certs_dir / "ca.crt"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def onboarding_enabled(self) -> bool:
        """The onboarding page hands out the CA: by default only a TLS node has one to hand."""
        return self.tls if self.onboarding is None else self.onboarding

    @property
    def upstream_base(self) -> str:
        """The upstream URL without a trailing slash, ready for path joining."""
        return str(self.upstream_url).rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _config_path.get()
        if path is None and os.environ.get(CONFIG_ENV):
            path = Path(os.environ[CONFIG_ENV])
        file_source = _TomlFileSource(settings_cls, path)
        return (init_settings, env_settings, file_source)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from overrides, the environment and an optional TOML file.

    Overrides that are ``None`` (CLI flags not given) are ignored so that they
    don't shadow the environment or the file.
    """
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    token = _config_path.set(config_file)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _config_path.reset(token)
