"""``shm-exporter``: the segment's values over HTTP for Prometheus, in node_exporter's names.

One job per module:

- ``source``: attach to the segment, re-attach after a publisher restart, read one snapshot per scrape;
- ``collector``: the ``prometheus_client`` Collector (metric names, types, labels and HELP texts);
- ``exposition``: the text exposition, with the ``node_*`` block cached per published sample;
- ``webconfig``: node_exporter's ``--web.config.file`` (TLS and bcrypt basic auth);
- ``server``: the threaded HTTP/1.1 server (keep-alive, TLS, auth, ``/`` and the metrics path);
- ``cli``: the command line.
"""

DEFAULT_LISTEN = "127.0.0.1:19100"
DEFAULT_TELEMETRY_PATH = "/metrics"
