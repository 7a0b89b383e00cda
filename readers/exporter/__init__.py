"""``shm-exporter``: the segment's values over HTTP for Prometheus, in node_exporter's names.

One job per module:

- ``source``: attach to the segment, re-attach after a publisher restart, read one snapshot per scrape;
- ``collector``: the ``prometheus_client`` Collector (metric names, types, labels and HELP texts);
- ``render``: the ``node_*`` text exposition (node_exporter's bytes), shared with ``shm-read``;
- ``exposition``: the text exposition, with the ``node_*`` block cached per published sample and ``collect[]`` filter;
- ``owners``: which node_exporter collector each family belongs to (``collect[]``), and node_exporter's refusals;
- ``selfmetrics``: the Go client's ``process_*`` and promhttp's ``promhttp_metric_handler_*``;
- ``textfile``: node_exporter's textfile collector, read per scrape;
- ``webconfig``: node_exporter's ``--web.config.file`` (TLS and bcrypt basic auth);
- ``server``: the HTTP/1.1 server (one event loop for idle connections, a bounded worker pool; keep-alive,
  TLS, auth, ``/`` and the metrics path; connection and scrape limits; several listeners, or systemd's);
- ``cli``: the command line.
"""

DEFAULT_LISTEN = "127.0.0.1:19100"
DEFAULT_TELEMETRY_PATH = "/metrics"
DEFAULT_MAX_CONNECTIONS = 512  # far more than any set of Prometheus servers needs; a flood beyond it evicts idle ones
DEFAULT_MAX_REQUESTS = 40  # node_exporter's --web.max-requests default
DEFAULT_READ_HEADER_TIMEOUT = 5.0  # seconds for the TLS handshake and a whole request head (slowloris guard)
