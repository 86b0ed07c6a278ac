"""What a test module needs that an install may lack: each call skips the calling module, with the reason printed,
when it is missing."""
import pytest


def mujoco(why: str = ""):
    """The mujoco module; skips unless it imports (``why``: what needs it, for the reason printed). drivers.sim.mujoco_sim is imported first: it picks MUJOCO_GL=egl when unset and
    survives a broken GL backend (offscreen rendering then fails per call, with its own error)."""
    try:
        import drivers.sim.mujoco_sim  # noqa: F401  (imported for what its import does)
    except ModuleNotFoundError as err:
        if err.name != "mujoco":
            raise
    reason = "mujoco is not installed (pip install 'robotd[sim]')" + (f": {why}" if why else "")
    return pytest.importorskip("mujoco", reason=reason)
