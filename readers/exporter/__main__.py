import sys

from shm_metrics.readers.exporter.cli import main

sys.exit(main())
