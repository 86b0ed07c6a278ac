"""``python -m actor`` (also ``robotd actor``): the actor process."""
import sys

from actor.process import main

sys.exit(main())
