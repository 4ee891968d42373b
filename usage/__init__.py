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

How a request pipeline uses it::

    store = open_store(store_options); await store.open()
    writer = BatchWriter(store, store_options); writer.start()
    ledger = UsageLedger(writer, quota_options)

    limits = limits_for(quota_options, tier_of(quota_options, claims=..., api_key_name=...))
    reservation = await ledger.admit(uid, limits, estimate=estimate_tokens(parsed, ...))
    # refused: 429 with reservation.decision (code, message, headers); ledger.record(rejected)
    # admitted: reservation.decision.headers go on the response
    asked = ask_for_usage(body, parsed)            # streamed OpenAI routes
    counter = TokenCounter(body_kind(content_type), strip_usage_chunk=asked.added,
                           prompt_estimate=estimate_prompt_tokens(parsed))
    for chunk in upstream: write(counter.feed(chunk)); counter.delivered()
    write(counter.finish()); counter.delivered()
    # finally, however it ended:
    tokens = counter.tokens(completed=...)
    ledger.settle(reservation, UsageRecord(..., tokens.prompt_tokens, tokens.completion_tokens))

    await writer.close(); await store.close()   # at shutdown
"""
