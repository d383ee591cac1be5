"""The request path, a room per step: who is calling (callers), forwarding (body → route
→ admit → exchange), the stream (the exchange and its filters), and the FastAPI side
(health, ready, metrics, models, control, the web page); `Proxy` (app) joins them.

May import: proxy.app. Measured with tests/perf/bench_proxy.py (numbers in CHANGELOG.md).

    app.py       Proxy: request ids, dispatch, CORS            → api, forward, callers, metrics
    callers.py   config and named keys, checked and reloaded   → keys, limits
    forward.py   POST /v1/*: Route, limits, admit, exchange     → models, stream
    stream.py    Exchange: upstream call, splice, usage, /infill filters, the books
    api.py       FastAPI: /health /ready /metrics /v1/models /api/status /api/history, start/stop, web
    history.py   the status view's last ten minutes: top's figures every 2 s, in a ring
    models.py    Routable and Control (what the proxy reads and asks), lookup by name
    metrics.py   Prometheus series, the usage tally, the page's totals
    answers.py   the error shape, refusals, a backend's error in that shape
    conns.py     connection cap with eviction, head timeout and size (uvicorn's protocol)
    federate.py  the backends' own /metrics, labelled by model, merged into the proxy's
"""

from .app import Proxy

__all__ = ["Proxy"]
