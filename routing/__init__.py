"""Which upstream gets a request, when a node has several, and which member of the fog.

A fog node's answer time is dominated by the model, not the gateway:
loading a model that is not in memory takes seconds to minutes, a busy
upstream makes a request wait for its turn, and reading a long
conversation's prompt again costs more than writing the answer. So the
gateway sends a request where it can start soonest (order.py's expected
start), from what its one periodic check found:

* which upstream has the model loaded ("hot": Ollama's /api/ps; for
  llama.cpp and other OpenAI-compatible servers the model they serve),
  warm.py; who can serve a model and how names compare, holders.py;
* how fast each has been lately, pace.py, and what it has in flight;
* the conversation's previous upstream, whose KV cache still holds most of
  the prompt (conversation.py, affinity.py), first when that costs no wait.

order.py is that rule, as pure functions the gateway's upstream pool (and
its fog peers) feed; every choice carries the reasons a response header and
the access log show. Whether a place is out or back in is the circuit
breaker's (supervision/breaker.py), which the fog's member table uses too.

No part of this package knows about HTTP or the gateway.
"""
