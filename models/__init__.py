"""Model management from the operator's side: `fognode models list | pull | rm`.

A client of a node's admin routes (Ollama's `/api/tags`, `/api/ps`,
`/api/pull`, `/api/delete`, which the gateway serves to administrators
only), over HTTPS with the node's CA and an admin credential. It lives
apart from the gateway because it runs anywhere an operator sits, and
apart from the pages because it is not one; `progress` (what a pull stream
says so far) is plain data, for any front end that shows a pull.
"""
