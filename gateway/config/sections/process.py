"""The serving process: shutdown, event loop, logs, metrics.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)


class ProcessSettings(BaseModel):
    """The serving process: shutdown, event loop, logs, metrics."""

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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description="Least severe log lines written. `DEBUG` also shows the embedded "
        "model's own output (llama.cpp's lines).",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json` writes one JSON object per line for log shippers."
    )
    access_log: bool = Field(True, description="One log line per request.")
    metrics_public: bool = Field(
        False,
        description="Serve /metrics without credentials (default: administrators only, e.g. "
        "a Prometheus scraper with an admin API key as bearer token).",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value
