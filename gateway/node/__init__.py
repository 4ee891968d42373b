"""The node as a process: serving one process or a supervisor and its workers, the typed
messages between them, the mDNS announcement, the systemd service.
"""
