"""Below the app, on each connection: the connection guard, deadlines for request heads,
malformed HTTP answered in OpenAI's shape, TLS and its certificate kept fresh.
"""
