"""fognode auth (arrives with its own issue)."""
