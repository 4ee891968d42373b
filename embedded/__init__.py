"""The embedded model: fognode runs llama.cpp's server itself.

A node without Ollama still answers chats: fognode starts llama.cpp's own
HTTP server (the one ``llama-server`` runs, from the prebuilt xllamacpp
wheel) as a child process on a loopback port, with a GGUF model (by
default SmolLM2 135M Instruct from PyPI) and several parallel slots that
share the model and are decoded together, and supervises it the way a
service manager would: readiness with visible progress, restart with
backoff after a crash, stop before fognode exits, no orphan if fognode is
killed, and a look every few seconds at what it is doing (asleep, slots in
use, tokens). The gateway treats the child as an OpenAI-compatible
upstream; this package only knows processes, ports and files, never the
gateway.
"""
