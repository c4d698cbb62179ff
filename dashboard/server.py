"""What `parcours dashboard` serves: the Streamlit app (`streamlit_app.py`) as an ASGI app, so
that Streamlit's unauthenticated `/_stcore/metrics` endpoint answers 404 (Streamlit has no
setting to turn it off), and so that the session cookie of a local sign-in can be set
(`dashboard/sessions.py`). Health (`/_stcore/health`) stays, for probes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from dashboard.sessions import SessionCookies

HIDDEN = ("/_stcore/metrics",)


class HideEndpoints:
    """ASGI middleware: the paths in `HIDDEN` (under any base URL) are not found."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer 404 for a hidden path; pass everything else on."""
        path = str(scope.get("path", "")).rstrip("/")
        if scope["type"] == "http" and path.endswith(HIDDEN):
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        await self.app(scope, receive, send)


app = st.App(
    Path(__file__).resolve().parent / "streamlit_app.py",
    middleware=[Middleware(HideEndpoints), Middleware(SessionCookies)],
)
