"""What every request is written into: the proxy's Prometheus series, the usage tally per
key and model, and two totals for the web page's charts.

May import: usage (and prometheus_client).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..usage import Tally

# The statuses a model's requests are primed with: a code of each class the proxy gives
# (dashboards match classes, e.g. status=~"5.."), and a key's: served and refused for
# its limits.
STATUSES = ("200", "400", "429", "499", "500", "502", "503", "504")
KEY_STATUSES = ("200", "429")
UPSTREAM_ERRORS = ("timeout", "connect", "midstream")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("llmctl_requests", "Proxied requests by model and status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("llmctl_request_duration_seconds", "Request duration",
                                 ["model"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                          120, 300))
        self.ttfb = Histogram("llmctl_time_to_first_byte_seconds",
                              "Time from request to first upstream byte", ["model"],
                              registry=self.registry,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5,
                                       10, 30))
        self.in_flight = Gauge("llmctl_requests_in_flight", "Requests being served", ["model"],
                               registry=self.registry)
        self.upstream_errors = Counter("llmctl_upstream_errors", "Failures reaching a backend",
                                       ["model", "kind"], registry=self.registry)
        # Per key: its name (never the key), "admin" for the config's keys.
        self.key_requests = Counter("llmctl_key_requests", "Requests by key, model and status",
                                    ["key", "model", "status"], registry=self.registry)
        self.key_tokens = Counter("llmctl_key_tokens", "Tokens by key, model and kind",
                                  ["key", "model", "kind"], registry=self.registry)
        self.scrape_failures = Counter(
            "llmctl_backend_scrape_failures", "Scrapes of the proxy that left a backend's own "
            "metrics out (no answer in time, an error, not the text format)", ["model"],
            registry=self.registry)
        self._children: dict[tuple[str, ...], Any] = {}

    def prime(self, models: list[str], keys: list[tuple[str, list[str]]] = ()) -> None:
        """Make the series whose labels are known in advance, at 0, as Prometheus's
        instrumentation guide asks: each model's requests by status class (one code of
        each that the proxy gives), latencies, requests in flight and failures; each
        key's requests and tokens on each model it may use. A quiet stack then shows
        zeros on a dashboard, not "no data"."""
        for m in models:
            for status in STATUSES:
                self.child("requests", m, status)
            self.child("latency", m)
            self.child("ttfb", m)
            self.child("in_flight", m)
            for kind in UPSTREAM_ERRORS:
                self.child("upstream_errors", m, kind)
        for key, allowed in keys:
            for m in allowed:
                for status in KEY_STATUSES:
                    self.child("key_requests", key, m, status)
                for kind in ("prompt", "completion"):
                    self.child("key_tokens", key, m, kind)

    def child(self, metric: str, *labels: str) -> Any:
        """Cached label children: `labels()` costs microseconds on every request otherwise."""
        key = (metric, *labels)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = getattr(self, metric).labels(*labels)
        return c


class Ledger:
    """The books of one proxy: metrics, the usage tally (written to SQLite by the daemon),
    and the totals behind the web page's requests/s and tokens/s."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.tally = Tally()
        # Two integers, no lock needed: the event loop is the only writer.
        self.counters = {"requests": 0, "tokens": 0}
