"""Which upstream gets a request, when a node has several.

A fog node's answer time is dominated by the model, not the gateway:
loading a model that is not in memory takes seconds to minutes, and
reading a long conversation's prompt again costs more than writing the
answer. So among the upstreams that have the requested model the gateway
prefers, in this order:

1. one where the model is loaded ("hot": Ollama's /api/ps; for llama.cpp
   and other OpenAI-compatible servers the model they serve), warm.py;
2. the one that served this conversation's previous turn, whose KV cache
   still holds most of the prompt (conversation.py, affinity.py), unless it
   is saturated while another has the model loaded and is idle;
3. the least busy, taking turns among equals.

order.py is that rule, as a pure function the gateway's upstream pool
feeds with what its one periodic check found; every choice carries the
reasons a response header and the access log show.

No part of this package knows about HTTP or the gateway.
"""
