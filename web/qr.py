"""QR codes for phones (segno): inline SVG for the page, text for a terminal.

Both come from the same `make_qr` so the page and `fognode certs qr` encode
the same link the same way.
"""

from __future__ import annotations

import io

import segno


def make_qr(link: str) -> segno.QRCode:
    # Error correction "M": survives a glare on a screen, still a small code.
    return segno.make_qr(link, error="m", boost_error=False)


def qr_svg(link: str, *, title: str) -> str:
    """An SVG that scales with its box (viewBox, no fixed size): dark on white
    whatever the page's colours, with the 4-module quiet zone readers need."""
    return str(
        make_qr(link).svg_inline(
            scale=1, border=4, dark="#000", light="#fff", omitsize=True, title=title
        )
    )


def qr_text(link: str) -> str:
    """The code in half blocks, two module rows per line (fits a terminal).

    segno draws the light modules as blocks and leaves the dark ones blank,
    which reads right on the usual light-on-dark terminal.
    """
    out = io.StringIO()
    make_qr(link).terminal(out=out, border=4, compact=True)
    return out.getvalue()
