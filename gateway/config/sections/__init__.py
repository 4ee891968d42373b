"""The settings by concern: one module per part of the node, assembled in config/settings.py."""
