"""The one configuration model of fognode.

Every knob is a field of :class:`Settings`, declared with its description in
the module of its concern (sections/: listening, TLS, auth, mDNS, upstreams,
the embedded model, admission, usage, connections, pages, the process);
docs/configuration.md is generated from those descriptions (config/reference.py).
Values come, highest priority first, from: explicit overrides (the CLI flags),
environment variables prefixed ``FOGNODE_``, an optional TOML file
(``FOGNODE_CONFIG`` or ``--config``), then the defaults.
"""

from __future__ import annotations

import json
import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import (
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ...auth.api_keys import split_entries
from .sections.admission import AdmissionSettings
from .sections.auth import AuthSettings
from .sections.connections import ConnectionSettings
from .sections.embedded import EmbeddedSettings
from .sections.fog import FogSettings
from .sections.listening import ListeningSettings
from .sections.mdns import MdnsSettings, mdns_domain
from .sections.pages import PageSettings
from .sections.process import ProcessSettings
from .sections.tls import TlsSettings
from .sections.upstreams import UpstreamSettings
from .sections.usage import UsageSettings

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


class Settings(
    FogSettings,
    ProcessSettings,
    PageSettings,
    ConnectionSettings,
    UsageSettings,
    AdmissionSettings,
    EmbeddedSettings,
    UpstreamSettings,
    MdnsSettings,
    AuthSettings,
    TlsSettings,
    ListeningSettings,
    BaseSettings,
):
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

    @field_validator(
        "cert_names",
        "allowed_uids",
        "allowed_email_domains",
        "priority_classes",
        "mdns_interfaces",
        "mdns_domains",
        "upstream_urls",
        "fog_peers",
        mode="before",
    )
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # An entry's models= list has commas of its own (auth/api_keys.py).
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else split_entries(text)
        return value

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
                extra = mdns_domain(domain.lstrip("."))
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
        return ["local.", mdns_domain(self.app_host_name)]

    @property
    def service_type(self) -> str:
        """The DNS-SD type announced: what the SpeziLLMFog app browses for in its mode."""
        return self.mdns_service_type or ("_https._tcp" if self.tls else "_http._tcp")

    @property
    def onboarding_enabled(self) -> bool:
        """The onboarding page hands out the CA: by default only a TLS node has one to hand."""
        return self.tls if self.onboarding is None else self.onboarding

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
