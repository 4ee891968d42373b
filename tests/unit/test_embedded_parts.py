"""The embedded package's own logic, without an engine running: the message
to the child, what the supervisor reads from the engine, chat templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fognode.embedded.engine import REPEAT_PENALTY, EngineConfig
from fognode.embedded.model import ModelUnavailable, chat_template
from fognode.embedded.options import EmbeddedOptions
from fognode.embedded.supervisor import EngineLoad, ServerStatus, State
from fognode.workers.messages import codec

# llama.cpp's /metrics as its server wrote it (xllamacpp 2026.10.11549), cut short.
METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed, excluding cached tokens
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 45
# HELP llamacpp:prompt_tokens_cached_total Number of prompt tokens reused from the cache
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 205
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 25
# HELP llamacpp:requests_processing Number of requests processing
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 1
"""


def test_the_engine_counts_are_read_from_its_metrics() -> None:
    load = EngineLoad.from_metrics(METRICS)
    assert load == EngineLoad(
        slots_busy=3, deferred=1, prompt_tokens=45, cached_tokens=205, generated_tokens=25
    )
    assert EngineLoad.from_metrics("") == EngineLoad()


def test_the_message_to_the_child_says_everything_and_nothing_else(tmp_path: Path) -> None:
    options = EmbeddedOptions(
        tmp_path, model="smollm2:135m", slots=3, context_size=2048, threads=2, idle_seconds=90.4
    )
    config = EngineConfig.build(options, tmp_path / "m.gguf", 8123, "{{ x }}")
    assert EngineConfig.from_json(config.to_json()) == config
    assert (config.slots, config.context_per_slot, config.threads) == (3, 2048, 2)
    assert (config.alias, config.idle_seconds, config.repeat_penalty) == (
        "smollm2:135m",
        90,
        REPEAT_PENALTY,
    )
    never = EngineConfig.build(EmbeddedOptions(tmp_path), tmp_path / "m.gguf", 1, None)
    assert never.idle_seconds == -1  # llama.cpp's "never sleep"
    with pytest.raises(ValueError, match="unknown engine parameters: cache"):
        EngineConfig.from_json(json.dumps({**json.loads(config.to_json()), "cache": True}))


def test_chat_templates_come_from_the_setting_or_with_the_packaged_model(tmp_path: Path) -> None:
    assert chat_template(EmbeddedOptions(tmp_path)) is None  # SmolLM2's file has its own
    gemma = chat_template(EmbeddedOptions(tmp_path, model="gemma3:270m"))
    assert gemma is not None and "<start_of_turn>" in gemma
    text = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_template(EmbeddedOptions(tmp_path, chat_template=text)) == text
    stored = tmp_path / "chat.jinja"
    stored.write_text(text)
    assert chat_template(EmbeddedOptions(tmp_path, chat_template=str(stored))) == text
    with pytest.raises(ModelUnavailable, match="cannot be read"):
        chat_template(EmbeddedOptions(tmp_path, chat_template=str(tmp_path / "missing")))


def test_an_engine_asleep_serves_and_one_loading_says_when_to_retry() -> None:
    asleep = ServerStatus("http://x", "m", State.ASLEEP, 0.0, 0.0, 2.0, 1.0, 0, 4)
    assert asleep.not_ready() is None
    wire = codec(ServerStatus)  # as it crosses a worker's channel (gateway/node/protocol.py)
    assert wire.decode(json.loads(json.dumps(wire.encode(asleep)))) == asleep
    loading = ServerStatus("http://x", "m", State.STARTING, 0.0, 0.0, 30.0, 1.0, 0, 4)
    waiting = loading.not_ready()
    assert waiting is not None and "still loading" in waiting[0] and waiting[1] >= 1
