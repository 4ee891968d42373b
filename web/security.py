"""Security headers every page sends.

Both pages are rendered by the node and load nothing from elsewhere, so the
Content-Security-Policy allows only the node's own styles (and, for the
status page, its own one script and its own fetches): an injected tag or
attribute could neither run a script nor send data away. Framing is refused
(clickjacking of the sign-in and pull forms), and no page leaks its URL as a
referrer.
"""

from __future__ import annotations

_COMMON = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Server": "fognode",
}


def page_headers(*, scripts: bool) -> dict[str, str]:
    """Headers for a page; ``scripts``: it runs its own script and submits forms
    to the node (the status page), else neither (the onboarding page)."""
    if scripts:
        policy = (
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        )
    else:
        policy = (
            "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        )
    return {"Content-Security-Policy": policy, **_COMMON}
