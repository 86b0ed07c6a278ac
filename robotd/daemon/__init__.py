"""The robot daemon, the process on the robot PC: ``loop`` (the fixed-rate loop and its actor link),
``robot_io`` (devices, task and safety behind one tick), ``safety``, ``robot_kinds``, ``clock`` (fixed-rate
and lockstep pacing), ``timesync`` (device clocks onto the host's) and ``check`` (``robotd check``).
``python -m robotd.daemon`` starts it (``process.run``)."""
