"""``python -m shm_metrics.publisher.collectors [--update-docs docs/LAYOUT.md]``: the declared families."""

import sys

from shm_metrics.publisher.collectors import markdown, render_doc

if sys.argv[1:2] == ["--update-docs"]:
    with open(sys.argv[2]) as f:
        updated = render_doc(f.read())
    with open(sys.argv[2], "w") as f:
        f.write(updated)
else:
    print(markdown())
