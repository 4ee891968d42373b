"""fognode certs (arrives with its own issue)."""
