"""Where requests go: one hop to an upstream (HTTP/1.1, pooled), an upstream and what it
serves, the pool that picks one, and the choice made at start.
"""
