"""MuJoCo simulations of the project's robots: a UR5 arm with a gripper at a table, and a Unitree A1.

These are plain physics helpers, independent of the daemon: they load the MJCF models in
drivers/sim/models/, step them and read them. Later drivers wrap them behind drivers/base.py
(UR5Sim behind Arm + Camera, A1Sim behind Legged), which is why the method names follow it:
command_joint_position, tcp_position, command_motors, damp, home_q_rad, stand_q_rad, ...

Rendering is optional. MUJOCO_GL is set to "egl" here only when the environment does not set it,
and only takes effect if mujoco has not been imported yet. A GL backend that fails to load does not
stop the physics: mujoco is then imported without GL, and render() raises a one-line
RenderUnavailable naming MUJOCO_GL and the system packages to install (libegl1, libosmesa6).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _import_mujoco():
    """Import mujoco with MUJOCO_GL defaulting to egl; if the GL backend breaks the import, import it without GL.

    mujoco imports its GL backend at import time, and a backend whose system library is missing
    (libEGL, libOSMesa) fails there with a non-ImportError. Physics must not depend on GL, so the
    import is retried with MUJOCO_GL=disable and the reason is kept for render() to report.
    Returns (module, reason rendering is unavailable or None). A missing mujoco raises ImportError.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import mujoco

        return mujoco, None
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - a broken GL backend surfaces as AttributeError/OSError/...
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        for name in list(sys.modules):
            if name.split(".")[0] in ("mujoco", "OpenGL"):
                del sys.modules[name]
        backend = os.environ["MUJOCO_GL"]
        os.environ["MUJOCO_GL"] = "disable"
        try:
            import mujoco
        finally:
            os.environ["MUJOCO_GL"] = backend
        return mujoco, f"the GL backend failed to load when mujoco was imported ({reason})"


mujoco, _GL_IMPORT_ERROR = _import_mujoco()

MODELS_DIR = Path(__file__).resolve().parent / "models"
UR5_XML = MODELS_DIR / "ur5.xml"
A1_XML = MODELS_DIR / "a1.xml"


class RenderUnavailable(RuntimeError):
    """MuJoCo could not create an offscreen OpenGL context (no usable GL backend)."""


@dataclass
class Contact:
    """One active contact: the two geoms and bodies by name, and the normal force in newtons."""

    geom1: str
    geom2: str
    body1: str
    body2: str
    force_n: float


def _vector(owner: str, what: str, value: object, n: int) -> np.ndarray:
    """Return value as a finite float64 (n,) array (a scalar is broadcast); raise naming what otherwise."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.shape != (n,):
        raise ValueError(f"{owner}: {what} must have shape ({n},), got {array.shape}; pass one value per joint")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{owner}: {what} must be finite, got {array.tolist()}; remove the NaN/inf entries")
    return array.copy()


class _Sim:
    """A loaded model and its data, with stepping, contacts and optional offscreen rendering.

    ``JOINTS`` names the driven joints, in the order ``q`` and ``dq`` report them.
    """

    JOINTS: tuple[str, ...] = ()

    def __init__(self, xml_path: Path | str) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(xml_path))
        self.data = mujoco.MjData(self.model)
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}
        self._qadr = np.array([self.model.joint(j).qposadr[0] for j in self.JOINTS])
        self._dadr = np.array([self.model.joint(j).dofadr[0] for j in self.JOINTS])

    def q(self) -> np.ndarray:
        """Positions of the driven joints, rad, in ``JOINTS`` order."""
        return self.data.qpos[self._qadr].copy()

    def dq(self) -> np.ndarray:
        """Velocities of the driven joints, rad/s, in ``JOINTS`` order."""
        return self.data.qvel[self._dadr].copy()

    @property
    def timestep_s(self) -> float:
        """Physics step length in seconds (the inner rate is 1 / timestep_s)."""
        return float(self.model.opt.timestep)

    @property
    def time_s(self) -> float:
        """Simulated time since the last reset, seconds."""
        return float(self.data.time)

    def _substep(self) -> None:
        mujoco.mj_step(self.model, self.data)

    def step(self, n: int = 1) -> None:
        """Advance n physics steps."""
        for _ in range(int(n)):
            self._substep()

    def advance(self, seconds: float) -> None:
        """Advance by whole physics steps covering `seconds` of simulated time."""
        self.step(max(0, round(float(seconds) / self.timestep_s)))

    def contacts(self) -> list[Contact]:
        """Return every active contact with its normal force."""
        force = np.zeros(6)
        out = []
        for i in range(self.data.ncon):
            con = self.data.contact[i]
            mujoco.mj_contactForce(self.model, self.data, i, force)
            g1, g2 = int(con.geom1), int(con.geom2)
            b1, b2 = int(self.model.geom_bodyid[g1]), int(self.model.geom_bodyid[g2])
            out.append(
                Contact(
                    geom1=self.model.geom(g1).name,
                    geom2=self.model.geom(g2).name,
                    body1=self.model.body(b1).name,
                    body2=self.model.body(b2).name,
                    force_n=float(abs(force[0])),
                )
            )
        return out

    def render(self, width: int, height: int, camera: str | int = -1) -> np.ndarray:
        """Return an RGB frame (height, width, 3) uint8 from `camera`; raise RenderUnavailable without GL."""
        width, height = int(width), int(height)
        offwidth, offheight = int(self.model.vis.global_.offwidth), int(self.model.vis.global_.offheight)
        if not (0 < width <= offwidth and 0 < height <= offheight):
            raise ValueError(
                f"render size {width}x{height} must be between 1x1 and the model's offscreen buffer "
                f"{offwidth}x{offheight}; pass a smaller size or raise <global offwidth/offheight>"
            )
        key = (width, height)
        if _GL_IMPORT_ERROR is not None:
            raise self._render_error(_GL_IMPORT_ERROR)
        try:
            renderer = self._renderers.get(key)
            if renderer is None:
                renderer = mujoco.Renderer(self.model, height=height, width=width)
                self._renderers[key] = renderer
            renderer.update_scene(self.data, camera=camera)
            return renderer.render().copy()
        except (ValueError, KeyError) as err:
            if "camera" in str(err).lower():
                raise
            raise self._render_error(err) from err
        except Exception as err:  # noqa: BLE001 - any GL failure means no usable backend
            raise self._render_error(err) from err

    @staticmethod
    def _render_error(err: BaseException | str) -> RenderUnavailable:
        reason = err if isinstance(err, str) else " ".join(f"{type(err).__name__}: {err}".split())[:300]
        backend = os.environ.get("MUJOCO_GL", "")
        return RenderUnavailable(
            f"MuJoCo offscreen rendering failed with MUJOCO_GL={backend!r} ({reason}); set MUJOCO_GL=egl "
            f"(apt-get install libegl1) or MUJOCO_GL=osmesa (apt-get install libosmesa6) before mujoco is imported"
        )

    def close(self) -> None:
        """Release the renderers' GL contexts."""
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()


class UR5Sim(_Sim):
    """The UR5 with a parallel gripper at a table with two bins and three boxes (drivers/sim/models/ur5.xml).

    Joints are driven by servo-like position actuators (command_joint_position); the gripper by
    one position actuator on the finger travel. Positions are in the arm's base frame (DH frame 0)
    unless a name says world.
    """

    dof = 6
    JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
    TOOL_OFFSET_M = 0.13  # tcp site along flange z (ur5.xml)
    GRIPPER_MAX_OPENING_M = 0.08  # fingers each travel 0 .. 0.04 m
    BOXES = ("box_red", "box_yellow", "box_purple")
    BINS = ("bin_a", "bin_b")
    BIN_HALF_M = 0.1  # bin footprint: 0.2 x 0.2 m around the bin body (walls included)
    BIN_INNER_HALF_M = 0.095  # inside the walls
    BIN_RIM_M = 0.09  # wall top above the bin body origin (the table top)
    BIN_FLOOR_M = 0.01  # bin floor top above the table top
    BOX_HALF_M = 0.02
    LIFT_M = 0.01  # a box this much above where it would rest counts as lifted
    TARGET_HIDDEN_POS = np.array([0.0, 0.0, -10.0])  # world, far below the floor
    home_q_rad = np.array([0.0, -math.pi / 2, math.pi / 2, -math.pi / 2, -math.pi / 2, 0.0])

    def __init__(self, xml_path: Path | str = UR5_XML) -> None:
        super().__init__(xml_path)
        m = self.model
        self._act = np.array([m.actuator(j).id for j in self.JOINTS])
        self._gripper_act = m.actuator("gripper").id
        self._finger_qadr = np.array([m.joint(j).qposadr[0] for j in ("finger_left", "finger_right")])
        self.joint_limits_rad = np.array([m.joint(j).range for j in self.JOINTS], dtype=np.float64)
        self._base = m.body("base").id
        self._tcp = m.site("tcp").id
        self._flange = m.body("flange").id
        arm_root = m.body("shoulder_link").id
        self._arm_bodies = {b for b in range(m.nbody) if self._is_descendant(b, arm_root)} | {self._base}
        self._gripper_bodies = {m.body(n).id for n in ("gripper", "finger_left", "finger_right")}
        self._fk_data = mujoco.MjData(m)
        self._home_key = m.key("home").id
        self._box_bodies = np.array([m.body(b).id for b in self.BOXES])
        self._box_qadr = np.array([m.joint(b).qposadr[0] for b in self.BOXES])
        self._box_dadr = np.array([m.joint(b).dofadr[0] for b in self.BOXES])
        self._bin_bodies = np.array([m.body(b).id for b in self.BINS])
        self._target_mocap = int(m.body_mocapid[m.body("target").id])
        self._target_geom = m.geom("target").id
        self._target_rgba = m.geom_rgba[self._target_geom].copy()
        self._target_world = m.body_pos[m.body("target").id].copy()
        self._target_shown = True
        # Per geom: 1 left finger, 2 right finger, else 0; the box it belongs to, else -1; an arm link (not gripper).
        self._finger_of_geom = np.zeros(m.ngeom, dtype=np.int64)
        self._finger_of_geom[m.geom("finger_left").id] = 1
        self._finger_of_geom[m.geom("finger_right").id] = 2
        self._box_of_geom = np.full(m.ngeom, -1, dtype=np.int64)
        for index, body in enumerate(self._box_bodies):
            self._box_of_geom[m.geom_bodyid == body] = index
        link_bodies = np.array(sorted(self._arm_bodies - self._gripper_bodies))
        self._link_geom = np.isin(m.geom_bodyid, link_bodies)
        self._jacp = np.zeros((3, m.nv))
        self._jacr = np.zeros((3, m.nv))
        self._contact_force = np.zeros(6)
        self.reset()
        self._bins_base = np.array([self._in_base(self.data, self.data.xpos[b].copy()) for b in self._bin_bodies])
        self._r_base = self.data.xmat[self._base].reshape(3, 3).copy()  # the base is welded to the table

    def _is_descendant(self, body: int, root: int) -> bool:
        while body > 0:
            if body == root:
                return True
            body = int(self.model.body_parentid[body])
        return False

    def reset(self, q_rad: np.ndarray | None = None) -> None:
        """Reset the scene (boxes back in bin_a, gripper open) with the arm at q_rad (default home).

        The target keeps its position and visibility (set_target / hide_target)."""
        mujoco.mj_resetDataKeyframe(self.model, self.data, self._home_key)
        if q_rad is not None:
            q = self._check_q(q_rad)
            self.data.qpos[self._qadr] = q
            self.data.ctrl[self._act] = q
        self._place_target()
        mujoco.mj_forward(self.model, self.data)

    def _check_q(self, q_rad: object) -> np.ndarray:
        q = _vector("UR5Sim", "q_rad", q_rad, self.dof)
        lo, hi = self.joint_limits_rad[:, 0], self.joint_limits_rad[:, 1]
        if np.any(q < lo) or np.any(q > hi):
            raise ValueError(
                f"UR5Sim: q_rad {q.tolist()} lies outside joint_limits_rad {self.joint_limits_rad.tolist()}; "
                f"move it inside the limits"
            )
        return q

    def command_joint_position(self, q_rad: np.ndarray) -> None:
        """Set the servo target of every joint (held until changed)."""
        self.data.ctrl[self._act] = self._check_q(q_rad)

    def hold_target(self) -> np.ndarray:
        """Servo targets that hold the arm where it is now: q plus the offset the servos need to carry gravity.

        A position servo settles kp * (target - q) = gravity torque below its target, so commanding the
        current q alone would let the arm sag by that offset (about a millimetre at the tool).
        """
        kp = self.model.actuator_gainprm[self._act, 0]
        return self.q() + self.data.qfrc_bias[self._dadr] / kp

    def command_gripper(self, opening_m: float) -> None:
        """Set the target opening between the fingers, 0 (closed) .. 0.08 m (open); clipped to that range."""
        opening = float(np.clip(float(opening_m), 0.0, self.GRIPPER_MAX_OPENING_M))
        self.data.ctrl[self._gripper_act] = opening / 2.0

    def joint_torques(self) -> np.ndarray:
        """Torques the joint actuators apply now, Nm, (6,)."""
        return self.data.actuator_force[self._act].copy()

    def gripper_opening(self) -> float:
        """Current distance between the fingers, metres."""
        return float(self.data.qpos[self._finger_qadr].sum())

    def _in_base(self, data: mujoco.MjData, pos: np.ndarray, rot: np.ndarray | None = None):
        r_base = data.xmat[self._base].reshape(3, 3)
        p = r_base.T @ (pos - data.xpos[self._base])
        return p if rot is None else (p, r_base.T @ rot)

    def _kinematics(self, q_rad: np.ndarray | None) -> mujoco.MjData:
        """The live data (q_rad None), or a scratch copy posed at q_rad by forward kinematics."""
        if q_rad is None:
            return self.data
        data = self._fk_data
        data.qpos[:] = self.data.qpos
        data.qpos[self._qadr] = _vector("UR5Sim", "q_rad", q_rad, self.dof)
        mujoco.mj_kinematics(self.model, data)
        return data

    def tcp_position(self, q_rad: np.ndarray | None = None) -> np.ndarray:
        """Tool centre point in the base frame, metres, (3,): now, or by forward kinematics for q_rad."""
        data = self._kinematics(q_rad)
        return self._in_base(data, data.site_xpos[self._tcp].copy())

    def flange_pose(self, q_rad: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Flange (DH frame 6) position (3,) and rotation matrix (3, 3) in the base frame."""
        data = self._kinematics(q_rad)
        return self._in_base(data, data.xpos[self._flange].copy(), data.xmat[self._flange].reshape(3, 3).copy())

    def tcp_world_position(self) -> np.ndarray:
        """Tool centre point in the world frame, metres, (3,)."""
        return self.data.site_xpos[self._tcp].copy()

    def object_position(self, name: str) -> np.ndarray:
        """World position of a body (e.g. "box_red"), metres, (3,)."""
        return self.data.body(name).xpos.copy()

    def arm_contacts(self, include_gripper: bool = False) -> list[Contact]:
        """Contacts between the arm (links, and the gripper if asked) and anything else."""
        bodies = self._arm_bodies if include_gripper else self._arm_bodies - self._gripper_bodies
        names = {self.model.body(b).name for b in bodies}
        return [c for c in self.contacts() if (c.body1 in names) != (c.body2 in names)]

    def arm_contact_force(self, include_gripper: bool = False) -> float:
        """Largest normal contact force on the arm, newtons (0.0 without contact)."""
        return max((c.force_n for c in self.arm_contacts(include_gripper)), default=0.0)

    def protective_stop_contact(self, threshold_n: float = 50.0) -> bool:
        """True when an arm link (not the gripper) pushes on something harder than threshold_n (cheap every step)."""
        ncon = self.data.ncon
        if not ncon:
            return False
        link = self._link_geom
        g1, g2 = self.data.contact.geom1[:ncon], self.data.contact.geom2[:ncon]
        candidates = np.flatnonzero(link[g1] != link[g2])  # an arm link touching anything else
        for i in candidates:
            mujoco.mj_contactForce(self.model, self.data, int(i), self._contact_force)
            if abs(self._contact_force[0]) > float(threshold_n):
                return True
        return False

    def render(self, width: int, height: int, camera: str | int = "scene") -> np.ndarray:
        """RGB frame (height, width, 3) uint8 from the fixed "scene" camera (or another one)."""
        return super().render(width, height, camera)

    def render_depth(self, width: int, height: int, camera: str | int = "scene") -> np.ndarray:
        """Depth frame (height, width) uint16, millimetres along the camera axis, from `camera` (shadows stay off)."""
        self.render(width, height, camera)  # validates the size and the camera, creates the renderer
        renderer = self._renderers[(int(width), int(height))]
        try:
            renderer.enable_depth_rendering()
            renderer.update_scene(self.data, camera=camera)
            depth_m = renderer.render()
        except Exception as err:  # noqa: BLE001 - any GL failure means no usable backend
            raise self._render_error(err) from err
        finally:
            renderer.disable_depth_rendering()
        return np.clip(np.rint(depth_m * 1000.0), 0, np.iinfo(np.uint16).max).astype(np.uint16)

    # --- reach target -------------------------------------------------------------------------
    def _place_target(self) -> None:
        shown = self._target_shown
        self.data.mocap_pos[self._target_mocap] = self._target_world if shown else self.TARGET_HIDDEN_POS
        self.model.geom_rgba[self._target_geom] = self._target_rgba if shown else 0.0
        mujoco.mj_kinematics(self.model, self.data)  # the renderer draws body poses, which lag mocap_pos otherwise

    def set_target(self, pos_base: np.ndarray) -> None:
        """Show the target sphere at pos_base, (3,) metres in the base frame."""
        pos = _vector("UR5Sim", "set_target pos_base", pos_base, 3)
        r_base = self.data.xmat[self._base].reshape(3, 3)
        self._target_world = self.data.xpos[self._base] + r_base @ pos
        self._target_shown = True
        self._place_target()

    def hide_target(self) -> None:
        """Take the target out of the scene (far below the floor, transparent) until the next set_target."""
        self._target_shown = False
        self._place_target()

    @property
    def target_shown(self) -> bool:
        """True while the target is in the scene."""
        return self._target_shown

    def target_position(self) -> np.ndarray:
        """Target centre in the base frame, metres, (3,) (where it was last set, also while hidden)."""
        return self._in_base(self.data, self._target_world.copy())

    # --- boxes and bins -----------------------------------------------------------------------
    def object_positions(self) -> np.ndarray:
        """Box centres in the base frame, (n_boxes, 3) metres, in BOXES order (from the state, not lagging a step)."""
        world = self.data.qpos[self._box_qadr[:, None] + np.arange(3)]
        return (world - self.data.xpos[self._base]) @ self.data.xmat[self._base].reshape(3, 3)

    def randomize_objects(self, rng: np.random.Generator, min_gap_m: float = 0.01) -> None:
        """Put the boxes at random non-overlapping positions and yaws inside bin_a, resting on its floor, at rest.

        Boxes keep at least min_gap_m between their circumscribed circles and stay inside the walls.
        """
        radius = self.BOX_HALF_M * math.sqrt(2.0)
        reach = self.BIN_INNER_HALF_M - radius - 0.002
        bin_pos = self.data.xpos[self._bin_bodies[0]]
        centres: list[np.ndarray] = []
        for _ in range(1000):
            centres = []
            for _ in self.BOXES:
                xy = rng.uniform(-reach, reach, 2)
                if any(np.hypot(*(xy - other)) < 2 * radius + min_gap_m for other in centres):
                    break
                centres.append(xy)
            if len(centres) == len(self.BOXES):
                break
        else:
            raise RuntimeError(f"UR5Sim.randomize_objects: no room for {len(self.BOXES)} boxes in bin_a "
                               f"with min_gap_m={min_gap_m}; pass a smaller min_gap_m")
        for index, xy in enumerate(centres):
            yaw = rng.uniform(-math.pi / 4, math.pi / 4)
            adr = self._box_qadr[index]
            self.data.qpos[adr:adr + 3] = [bin_pos[0] + xy[0], bin_pos[1] + xy[1],
                                            bin_pos[2] + self.BIN_FLOOR_M + self.BOX_HALF_M]
            self.data.qpos[adr + 3:adr + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
            dadr = self._box_dadr[index]
            self.data.qvel[dadr:dadr + 6] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def object_bins(self, positions_base: np.ndarray | None = None) -> np.ndarray:
        """Per box, (n_boxes,) int: 1 inside bin_a's footprint below its rim, 2 inside bin_b's, 0 elsewhere.

        For the boxes now, or for box centres positions_base (n, 3) in the base frame.
        """
        pos = self.object_positions() if positions_base is None else np.asarray(positions_base, dtype=np.float64)
        out = np.zeros(len(pos), dtype=np.int64)
        for index, centre in enumerate(self._bins_base):  # bin body origins lie on the table top
            offset = pos - centre
            inside = ((np.abs(offset[:, 0]) < self.BIN_HALF_M) & (np.abs(offset[:, 1]) < self.BIN_HALF_M)
                      & (offset[:, 2] < self.BIN_RIM_M))
            out[inside & (out == 0)] = index + 1
        return out

    def finger_contacts(self) -> np.ndarray:
        """(n_boxes, 2) bool: which boxes the left and the right finger touch now."""
        touching = np.zeros((len(self.BOXES), 2), dtype=bool)
        ncon = self.data.ncon
        if ncon:
            g1, g2 = self.data.contact.geom1[:ncon], self.data.contact.geom2[:ncon]
            for ga, gb in ((g1, g2), (g2, g1)):
                finger, box = self._finger_of_geom[ga], self._box_of_geom[gb]
                hit = (finger > 0) & (box >= 0)
                touching[box[hit], finger[hit] - 1] = True
        return touching

    def grasped(self, positions_base: np.ndarray | None = None, pinched: np.ndarray | None = None) -> np.ndarray:
        """(n_boxes,) bool: the box is pinched between both fingers and lifted LIFT_M above where it would rest
        (on a bin floor inside a bin's footprint, on the table elsewhere).

        For the boxes now, or for box centres positions_base (n, 3) and pinched (n,) bool (both fingers touching).
        """
        pos = self.object_positions() if positions_base is None else np.asarray(positions_base, dtype=np.float64)
        pinched = self.finger_contacts().all(axis=1) if pinched is None else np.asarray(pinched, dtype=bool)
        rest_z = self.BOX_HALF_M + np.where(self.object_bins(pos) > 0, self.BIN_FLOOR_M, 0.0)  # table top is z = 0
        return pinched & (pos[:, 2] >= rest_z + self.LIFT_M)

    # --- kinematics for control ---------------------------------------------------------------
    def tcp_jacobian(self) -> np.ndarray:
        """(6, 6) Jacobian of the tcp site, linear rows then angular, base frame, w.r.t. the six arm joints."""
        mujoco.mj_jacSite(self.model, self.data, self._jacp, self._jacr, self._tcp)
        r_t = self._r_base.T
        return np.vstack([r_t @ self._jacp[:, self._dadr], r_t @ self._jacr[:, self._dadr]])

    def tcp_rotation(self) -> np.ndarray:
        """Tool orientation (the flange's, which the tcp shares), (3, 3) rotation matrix in the base frame."""
        return self._r_base.T @ self.data.xmat[self._flange].reshape(3, 3)

    def gripper_closure(self) -> float:
        """Gripper closure from the finger opening: 0 fully open .. 1 fully closed."""
        return float(np.clip(1.0 - self.gripper_opening() / self.GRIPPER_MAX_OPENING_M, 0.0, 1.0))


class A1Sim(_Sim):
    """The Unitree A1 on a flat floor (drivers/sim/models/a1.xml) driven by per-motor PD targets.

    Every physics step (1 kHz) the motor torque is tau = kp (q_des - q) + kd (dq_des - dq) + tau_ff,
    clipped to +-TORQUE_LIMIT_NM, exactly as the A1's motor boards apply a low-level command.
    """

    n_motors = 12
    LEGS = ("FR", "FL", "RR", "RL")
    MOTORS = tuple(f"{leg}_{part}" for leg in LEGS for part in ("hip", "thigh", "calf"))
    JOINTS = MOTORS  # q and dq in SDK order FR, FL, RR, RL x (hip, thigh, calf)
    TORQUE_LIMIT_NM = 33.5
    stand_q_rad = np.tile([0.0, 0.9, -1.8], 4)
    STAND_KP = 60.0
    STAND_KD = 2.0
    DAMP_KD = 2.0
    # Trunk z axis this far from vertical: fallen. Standing it stays under 0.05 rad; limp on its
    # side the model comes to rest propped on its folded legs at about 0.79 rad (on its belly ~0.1).
    FALL_TILT_RAD = 0.6

    def __init__(self, xml_path: Path | str = A1_XML, fall_tilt_rad: float = FALL_TILT_RAD) -> None:
        super().__init__(xml_path)
        self.fall_tilt_rad = float(fall_tilt_rad)
        m = self.model
        self._act = np.array([m.actuator(j).id for j in self.MOTORS])
        self.joint_limits_rad = np.array([m.joint(j).range for j in self.MOTORS], dtype=np.float64)
        self._trunk = m.body("trunk").id
        trunk_joint = m.joint("trunk")
        self._base_qadr = int(trunk_joint.qposadr[0])
        self._imu_quat = m.sensor("imu_quat")
        self._imu_gyro = m.sensor("imu_gyro")
        self._imu_acc = m.sensor("imu_acc")
        self._q_des = np.zeros(self.n_motors)
        self._dq_des = np.zeros(self.n_motors)
        self._kp = np.zeros(self.n_motors)
        self._kd = np.zeros(self.n_motors)
        self._tau_ff = np.zeros(self.n_motors)
        self.reset()

    def reset(
        self,
        q_rad: np.ndarray | None = None,
        base_pos: np.ndarray | None = None,
        base_quat: np.ndarray | None = None,
    ) -> None:
        """Place the robot (joints q_rad, default standing; trunk at base_pos/base_quat wxyz), at rest.

        Without base_pos the trunk is put at the height where the feet just touch the floor. The
        command is set to holding q_rad with the standing gains.
        """
        mujoco.mj_resetData(self.model, self.data)
        q = self.stand_q_rad if q_rad is None else _vector("A1Sim", "q_rad", q_rad, self.n_motors)
        quat = np.array([1.0, 0.0, 0.0, 0.0]) if base_quat is None else _vector("A1Sim", "base_quat", base_quat, 4)
        quat = quat / np.linalg.norm(quat)
        a = self._base_qadr
        self.data.qpos[self._qadr] = q
        self.data.qpos[a : a + 3] = (0.0, 0.0, 1.0)
        self.data.qpos[a + 3 : a + 7] = quat
        mujoco.mj_kinematics(self.model, self.data)
        if base_pos is None:
            lowest = min(self.data.site(f"{leg}_foot").xpos[2] for leg in self.LEGS) - 0.02
            self.data.qpos[a + 2] = 1.0 - lowest + 0.001
        else:
            self.data.qpos[a : a + 3] = _vector("A1Sim", "base_pos", base_pos, 3)
        mujoco.mj_forward(self.model, self.data)
        self.command_motors(q, np.zeros(self.n_motors), self.STAND_KP, self.STAND_KD, np.zeros(self.n_motors))

    def command_motors(
        self,
        q_rad: np.ndarray,
        dq_rad_s: np.ndarray,
        kp: np.ndarray | float,
        kd: np.ndarray | float,
        tau_nm: np.ndarray | float,
    ) -> None:
        """Command every motor: torque = kp * (q_rad - q) + kd * (dq_rad_s - dq) + tau_nm (held until changed)."""
        self._q_des = _vector("A1Sim", "q_rad", q_rad, self.n_motors)
        self._dq_des = _vector("A1Sim", "dq_rad_s", dq_rad_s, self.n_motors)
        kp_a = _vector("A1Sim", "kp", kp, self.n_motors)
        kd_a = _vector("A1Sim", "kd", kd, self.n_motors)
        if np.any(kp_a < 0) or np.any(kd_a < 0):
            raise ValueError(f"A1Sim: kp and kd must be >= 0, got kp={kp_a.tolist()} kd={kd_a.tolist()}")
        self._kp, self._kd = kp_a, kd_a
        self._tau_ff = _vector("A1Sim", "tau_nm", tau_nm, self.n_motors)

    def damp(self, kd: float | None = None) -> None:
        """Damping mode: kp = 0, kd = damping, no feed-forward (what the A1 does on a fall or stop)."""
        zeros = np.zeros(self.n_motors)
        self.command_motors(self.q(), zeros, 0.0, self.DAMP_KD if kd is None else kd, zeros)

    def motors_off(self) -> None:
        """Zero torque on every motor (the robot goes limp)."""
        zeros = np.zeros(self.n_motors)
        self.command_motors(zeros, zeros, 0.0, 0.0, zeros)

    def motor_torques(self, q: np.ndarray | None = None, dq: np.ndarray | None = None) -> np.ndarray:
        """The PD law's clipped torque for the current command at (q, dq) (default: the current state), Nm."""
        q = self.q() if q is None else q
        dq = self.dq() if dq is None else dq
        tau = self._kp * (self._q_des - q) + self._kd * (self._dq_des - dq) + self._tau_ff
        return np.clip(tau, -self.TORQUE_LIMIT_NM, self.TORQUE_LIMIT_NM)

    def _substep(self) -> None:
        d = self.data
        tau = self._kp * (self._q_des - d.qpos[self._qadr]) + self._kd * (self._dq_des - d.qvel[self._dadr])
        d.ctrl[self._act] = np.clip(tau + self._tau_ff, -self.TORQUE_LIMIT_NM, self.TORQUE_LIMIT_NM)
        mujoco.mj_step(self.model, d)

    def tau(self) -> np.ndarray:
        """Torques applied in the last physics step, Nm, (12,)."""
        return self.data.ctrl[self._act].copy()

    def base_position(self) -> np.ndarray:
        """Trunk centre in the world, metres, (3,)."""
        return self.data.xpos[self._trunk].copy()

    def trunk_height(self) -> float:
        """Trunk centre height above the floor, metres."""
        return float(self.data.xpos[self._trunk][2])

    def trunk_quat(self) -> np.ndarray:
        """Trunk orientation quaternion (w, x, y, z) from the IMU site, (4,)."""
        s = self._imu_quat
        return self.data.sensordata[s.adr[0] : s.adr[0] + 4].copy()

    def imu(self) -> dict[str, np.ndarray]:
        """IMU reading: "quaternion" (w, x, y, z), "gyroscope" rad/s and "accelerometer" m/s^2 in the trunk frame."""
        gyro, acc = self._imu_gyro, self._imu_acc
        return {
            "quaternion": self.trunk_quat(),
            "gyroscope": self.data.sensordata[gyro.adr[0] : gyro.adr[0] + 3].copy(),
            "accelerometer": self.data.sensordata[acc.adr[0] : acc.adr[0] + 3].copy(),
        }

    def tilt_rad(self) -> float:
        """Angle between the trunk's up axis and the world vertical, rad (0 upright, pi upside down)."""
        up_z = float(self.data.xmat[self._trunk][8])
        return float(math.acos(max(-1.0, min(1.0, up_z))))

    def fallen(self, max_tilt_rad: float | None = None) -> bool:
        """True when the trunk is tilted more than max_tilt_rad (default fall_tilt_rad) from upright."""
        return self.tilt_rad() > (self.fall_tilt_rad if max_tilt_rad is None else float(max_tilt_rad))

    def render(self, width: int, height: int, camera: str | int = "side") -> np.ndarray:
        """RGB frame (height, width, 3) uint8 from the tracking "side" camera (or another one)."""
        return super().render(width, height, camera)
