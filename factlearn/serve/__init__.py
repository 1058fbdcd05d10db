"""``factlearn serve``: a run's model as an HTTP retrieval service (docs/serve.md).

- :mod:`.settings`: the options, the bearer token and the loopback rule (no web stack imported);
- :mod:`.live`: hot swap, the checkpoint being served and the thread that replaces it;
- :mod:`.batcher`: micro-batching of concurrent image queries;
- :mod:`.app`: the FastAPI routes, errors as JSON, the token and upload-size guard, the page;
- :mod:`.launch`: the checks before listening, and uvicorn.

FastAPI and uvicorn are the optional ``serve`` extra: importing this package does not need them.
"""

from .launch import check_extra, serve_run
from .settings import ServeSettings, read_token

__all__ = ["ServeSettings", "check_extra", "read_token", "serve_run"]
