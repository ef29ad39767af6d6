"""The model page's assets: plain HTML, CSS and JavaScript shipped in the package.

No build step and no outside network: ``GET /`` serves ``index.html``, which loads
``page.css``, ``charts.js`` and ``page.js`` from the router itself. ``charts.js`` is the
reusable part (hand-written SVG charts with a small documented API); the policy lab
embeds its text in its self-contained HTML report (``asset("charts.js")``).
"""

from __future__ import annotations

from importlib import resources

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
}


def asset(name: str) -> bytes:
    """The bytes of one shipped asset (``charts.js``, ...); FileNotFoundError if none."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(TYPES)):
        raise FileNotFoundError(name)
    return resources.files(__name__).joinpath(name).read_bytes()
