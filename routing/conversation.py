"""Where a conversation's prompt already is: keys for its prefixes.

llama.cpp and Ollama keep the prompt they processed last (one per slot) and
skip the part of the next prompt that matches it. Turn N+1 of a chat sends
turn N's messages again, then the answer to them, then one new user message,
so the upstream that answered turn N holds most of turn N+1's prompt.

What a "prefix" is, for ``/v1/chat/completions`` and Ollama's ``/api/chat``
alike (both send the whole conversation as ``messages``):

* a request is remembered under the key of all its messages: the upstream
  that answers it holds them (and the answer it wrote);
* a request is looked up by the key of the messages before each assistant
  message in it, the latest first. The request that got that assistant
  message as its answer sent exactly those messages, so its upstream holds
  everything up to that answer. The longest remembered prefix wins.

So turn 1 (no assistant message yet) is looked up by nothing, turn 2 finds
turn 1's upstream, turn 3 turn 2's (or, if turn 2 was never seen, turn 1's).
A client that edits an earlier message starts a new conversation.

A key is a BLAKE2b-128 digest of the model, the caller and each message's
role and content (other fields, such as images or tool calls, are left out:
a key is a hint, not a proof). The caller is part of the key so that one
user's requests never reveal, through routing or its explanation, whether
another user sent the same messages. Other routes (completions with a
bare prompt, embeddings, ``/api/generate``) have no conversation.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Conversation:
    record: bytes  # this request's messages, all of them
    lookups: tuple[bytes, ...]  # prefixes ending before an assistant message, longest first


def _encoded(value: object) -> bytes:
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # Parsed JSON may hold lone surrogates ("\ud800"); they are data here too.
    return value.encode("utf-8", "surrogatepass")


def _feed(digest: hashlib.blake2b, value: object) -> None:
    data = _encoded(value)
    digest.update(len(data).to_bytes(8, "little"))  # framed: ("ab","c") != ("a","bc")
    digest.update(data)


def conversation_of(scope: str, model: str, messages: object) -> Conversation | None:
    """The keys of a chat request's ``messages``; None when it has none."""
    if not isinstance(messages, list) or not messages:
        return None
    digest = hashlib.blake2b(digest_size=16)
    _feed(digest, model)
    _feed(digest, scope)
    prefixes: list[bytes] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        role = message.get("role")
        if role == "assistant":
            prefixes.append(digest.copy().digest())
        _feed(digest, role)
        _feed(digest, message.get("content"))
    return Conversation(record=digest.digest(), lookups=tuple(reversed(prefixes)))
