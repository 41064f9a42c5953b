"""``sweep dashboard``: a live, read-only web view of a sweep store (see :func:`create_app`)."""

from sweep._dashboard._app import create_app
from sweep._dashboard._serve import Listening, ServeError, running, serve

__all__ = ["Listening", "ServeError", "create_app", "running", "serve"]
