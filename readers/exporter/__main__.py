import sys

from readers.exporter.cli import main

sys.exit(main())
