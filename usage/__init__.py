"""Usage accounting and quotas: who used how many tokens, and who may use more.

The package is one step of the data flow and knows nothing of the others:
the gateway hands it plain values (uids, claims, the upstream's bytes) and
option objects built from its settings, and gets back records, response
bytes and quota decisions. Pieces, in the order a request meets them:

* :mod:`.quota` decides, before admission, whether a user may start a
  request (pure code), and what OpenAI-style rate-limit headers to send;
* :mod:`.ledger` holds the in-flight reservations that keep concurrent
  requests from overshooting a budget, and settles them into records;
* :mod:`.request_body` asks a streamed OpenAI request for usage figures;
* :mod:`.counter` reads the relayed stream, takes the upstream's own token
  figures and strips the usage chunk the client did not ask for;
* :mod:`.writer` batches records off the request path into a store
  (:mod:`.sqlite_store` embedded, :mod:`.postgres_store` shared by nodes).
"""
