"""``make bench``: the speed targets of issue 4, each measured against a peer in the same run.

``python -m bench`` (``--quick`` for a smoke run, ``--only 1,3`` for some
questions) prints one Markdown table per question; ``bench/README.md`` says
what each one measures and holds a recent result.  One module per question
(``q1_read`` .. ``q6_exporter``); ``common`` holds the timing, the tables and
the processes the benchmark starts (all stopped by their own PID) and the
segments it creates (all removed); ``writer`` is Q5's 1 kHz publisher.
"""
