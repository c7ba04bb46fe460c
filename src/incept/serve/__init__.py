"""`incept serve`: classification over HTTP with server-side batching, and a web page.

`create_app(predictor)` builds the ASGI application (`app.py`); `Batcher` groups concurrent
requests into one forward pass (`batching.py`); `bind` and `serve` run it on uvicorn, and
`serve_in_thread` does so in the background for tests and notebooks (`server.py`);
`index.html` is the page served at `/`.
"""

from incept.serve.app import create_app
from incept.serve.batching import Batcher, Overloaded
from incept.serve.server import bind, serve, serve_in_thread

__all__ = ["Batcher", "Overloaded", "bind", "create_app", "serve", "serve_in_thread"]
