"""Settings and what they mean on this machine: the one settings model, where state lives
on disk, the node's identity, addresses and bind hosts.
"""
