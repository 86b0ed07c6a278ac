"""What reads a finished session: ``inspect`` (report, plots, videos), ``export`` (LeRobot) and ``dataset``
(the episode files as numpy arrays)."""
