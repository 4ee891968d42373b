"""fognode discovery (arrives with its own issue)."""
