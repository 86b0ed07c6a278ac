"""``python -m robotd`` is the ``robotd`` command."""
import sys

from robotd.cli import main

sys.exit(main())
