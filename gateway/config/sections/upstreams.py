"""Upstreams: where requests go (Ollama or OpenAI-compatible servers), timeouts, routing.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    Field,
)
from pydantic_settings import NoDecode

# Where Ollama listens unless told otherwise; upstream_kind=auto probes it.
DEFAULT_UPSTREAM_URL = "http://127.0.0.1:11434"


class UpstreamSettings(BaseModel):
    """Upstreams: where requests go (Ollama or OpenAI-compatible servers), timeouts, routing."""

    upstream_url: AnyHttpUrl = Field(
        default_factory=lambda: AnyHttpUrl(DEFAULT_UPSTREAM_URL),
        description="Base URL of the Ollama server the gateway forwards to. Naming it turns "
        "off the embedded model as a fallback (see `upstream_kind`).",
    )
    upstream_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Several upstreams (comma-separated base URLs) instead of `upstream_url`: "
        "requests go to one that has the model and can start it soonest (loaded with a slot "
        "free first), to the one that served the conversation when that costs no wait, with "
        "failover ([upstreams](upstreams.md#several-upstreams)).",
    )
    upstream_max_concurrent: int = Field(
        0,
        ge=0,
        description="Requests in flight per upstream (0: no per-upstream cap). Set it to what "
        "one upstream runs at once (`OLLAMA_NUM_PARALLEL`, llama.cpp's `--parallel`) so routing "
        "knows when one would queue (without a cap it assumes one at a time). A request whose "
        "upstreams are all at their cap waits for a slot (at most `queue_timeout`).",
    )
    upstream_check_interval: float = Field(
        15,
        gt=0,
        description="Seconds between health, model-list and loaded-model (Ollama's `/api/ps`) "
        "checks of the upstreams.",
    )
    upstream_breaker_failures: int = Field(
        3,
        ge=1,
        description="With several upstreams, failures in a row (a connection dropped before "
        "the answer, no answer in time) that take an upstream out; a failure to connect at "
        "all takes it out at once. Until it answers a probe, requests go to the others.",
    )
    upstream_breaker_window: float = Field(
        5.0,
        gt=0,
        description="Seconds of failing that take an upstream out even before "
        "`upstream_breaker_failures` failures: the longest it can keep failing requests.",
    )
    upstream_breaker_cooldown: float = Field(
        1.0,
        gt=0,
        description="Seconds an upstream stays out before the first probe (a model-list "
        "check of it alone); each failed probe doubles it, up to "
        "`upstream_breaker_max_cooldown`.",
    )
    upstream_breaker_max_cooldown: float = Field(
        30.0,
        gt=0,
        description="The longest time between two probes of an upstream that is out: one "
        "that comes back is back within this (and within `upstream_check_interval`).",
    )
    upstream_busy_seconds: float = Field(
        2.0,
        gt=0,
        description="How long an upstream that answered 503 busy (Ollama's full queue, "
        "llama.cpp loading) counts as full when it sent no `Retry-After`: busy is load, not "
        "absence, so requests go to another upstream meanwhile.",
    )
    upstream_load_seconds: float = Field(
        5.0,
        ge=0,
        description="Expected seconds for an upstream to load a model it has on disk, until "
        "the node has measured one of its cold starts: a request goes to an upstream with the "
        "model cold when that is sooner than waiting behind the requests on one with it loaded.",
    )
    upstream_affinity: bool = Field(
        True,
        description="With several upstreams, send a conversation's next turn to the upstream "
        "that served its previous one (its KV cache holds the prompt) unless another could "
        "start it sooner. `false`: by expected start and load only.",
    )
    upstream_affinity_entries: int = Field(
        10_000,
        ge=1,
        description="Conversations remembered for affinity, about 150 bytes each (oldest "
        "forgotten first).",
    )
    upstream_affinity_seconds: float = Field(
        600,
        gt=0,
        description="How long a conversation's upstream is remembered after its last turn "
        "(Ollama unloads an idle model after 5 minutes by default, and its cache with it).",
    )
    upstream_kind: Literal["auto", "ollama", "openai", "embedded"] = Field(
        "auto",
        description="`ollama`: Ollama, with its native /api routes. `openai`: any "
        "OpenAI-compatible server (llama.cpp's server, vLLM, LocalAI): only `/v1` is served, "
        "`/api` routes answer 501, the model list comes from `/v1/models`. `embedded`: fognode "
        "runs llama.cpp's server itself with `embedded_model` (an error together with an "
        "upstream URL); `/api` answers 501 as for `openai`. `auto`: an `upstream_url` or "
        "`upstream_urls` that is set is Ollama, used as given and never replaced by the "
        "embedded model; with neither set, Ollama at the default address if it answers at "
        "start, else the embedded model.",
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
        "`max_concurrent_requests` plus 64 for requests that take no admission slot (model "
        "lists, model management), so an admitted request never waits for a connection. "
        "A value set must be at least `max_concurrent_requests` (else fognode refuses to "
        "start).",
    )
    connect_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds to establish a TCP connection to the upstream; then 504.",
    )
    first_byte_timeout: float = Field(
        900.0,
        gt=0,
        description="Seconds to wait for the upstream's response headers. Ollama sends them "
        "only after loading the model and processing the prompt (and, without streaming, "
        "after the whole answer), which on a CPU can take minutes. Then 504.",
    )
    idle_timeout: float = Field(
        300.0,
        gt=0,
        description="Longest gap, in seconds, between two chunks of an upstream body. A "
        "stream that stalls longer ends with an in-band error event.",
    )
    client_write_timeout: float = Field(
        60.0,
        gt=0,
        description="Longest a client may leave a response unread (back-pressure) before "
        "it is dropped and its upstream request cancelled (so a stalled reader cannot hold a "
        "slot forever).",
    )
    stream_heartbeat_after: float = Field(
        5.0,
        gt=0,
        description="A streamed (SSE) request that has waited this many seconds (in the queue, "
        "or for the upstream's first byte) gets its 200 headers and SSE comment heartbeats, so "
        "phones (60 s idle timeout) do not give up; later errors then arrive in-band "
        "(docs/client-contract.md, waiting without timing out).",
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

    @property
    def upstream_configured(self) -> bool:
        """An upstream the operator named (flag, env var or file), to be used as given."""
        return "upstream_url" in self.model_fields_set or bool(self.upstream_urls)

    @property
    def upstream_base(self) -> str:
        """The upstream URL without a trailing slash, ready for path joining."""
        return str(self.upstream_url).rstrip("/")
