import sys

from shm_metrics.publisher.cli import main

sys.exit(main())
