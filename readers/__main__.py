import sys

from shm_metrics.readers.cli import main

sys.exit(main())
