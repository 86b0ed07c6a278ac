"""``python -m learner`` (also ``robotd learner``): the learner process."""
import sys

from learner.process import main

sys.exit(main())
