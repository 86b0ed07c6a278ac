"""``python -m robotd.daemon`` (also ``robotd daemon``): the robot daemon process."""
import sys

from robotd.daemon.process import main

sys.exit(main())
