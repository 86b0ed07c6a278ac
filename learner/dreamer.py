"""The DreamerV3 agent: world model, actor and critic, trained together by ``Dreamer.train_step``.

``Dreamer`` is the learner's side; ``Policy`` is the actor's side, batch-1 inference with the
same encoder, RSSM and actor modules, loaded from ``Dreamer.policy_state_dict()``.

Batch layout (``Dreamer.train_step``): every observation key ``(B, T, ...)``; ``action`` ``(B, T, A)``
in [-1, 1] (one-hot for discrete actions), the action taken after observing step ``t``;
``reward`` ``(B, T)``, received on arriving at step ``t``; ``is_first``, ``is_last``,
``is_terminal`` ``(B, T)`` flags. Optional replay context (``ModelConfig.replay_context``, DreamerV3's
``replay_context: 1``): ``context_deter`` ``(B, deter)``, ``context_stoch`` ``(B, stoch, classes)``,
``context_action`` ``(B, A)`` and ``context_valid`` ``(B,)``, the stored posterior latent of the step
before each sequence and the action taken there, which the RSSM continues from instead of the initial
state; ``Dreamer.last_posterior`` holds the latents of the last update for writing back to the replay.

Sizes follow the published presets (Hafner et al. 2024, configs ``size1m`` .. ``size400m``);
every dimension can be overridden. The hyperparameters are the paper's: LaProp with adaptive
gradient clipping 0.3, learning rate 4e-5 after a 1000-step warm-up, one loss and one backward
pass per update with loss scales rec 1, rew 1, con 1, dyn 1, rep 0.1, policy 1, value 1,
replay value 0.3.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learner.allocator import keep_freed_memory
from learner.mathops import (
    ReturnNormaliser,
    categorical_kl,
    categorical_sample,
    free_bits,
    lambda_returns,
    one_hot,
    straight_through_sample,
)
from learner.networks import (
    CNN_STRIDES,
    RSSM,
    Actor,
    ContinueHead,
    LatentState,
    ObservationDecoder,
    ObservationEncoder,
    ObsSpec,
    TwoHotHead,
    compile_norm_act,
    split_obs_spec,
)
from learner.optim import LaProp
from robotd.presets import MODEL_PRESETS, PRESET_NAMES
from robotd.steps import CONTEXT_KEYS as REPLAY_CONTEXT_KEYS

__all__ = ["Dreamer", "ModelConfig", "ObsSpec", "PRESETS", "Policy", "WorldModel", "preset"]

log = logging.getLogger("learner.dreamer")

BATCH_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
"""Non-observation keys of a training batch; observation keys may not use these names."""

CONTEXT_KEYS = tuple(key for key in REPLAY_CONTEXT_KEYS if key.startswith("context_"))
"""Optional replay-context keys of a training batch (see ``ModelConfig.replay_context``); reserved too. The replay's
own list (``robotd.steps.CONTEXT_KEYS``) also carries ``replay_keys``, which only the write-back reads."""

PRECISIONS = ("auto", "float32", "bfloat16")
COMPILE_CHOICES = ("auto", "on", "off")


@dataclass
class ModelConfig:
    """Sizes and hyperparameters of the agent. Defaults are the paper's, with the 12m preset's sizes."""

    # World-model sizes.
    deter: int = 2048  # block-GRU state size
    hidden: int = 256  # width of the RSSM's dense layers
    stoch: int = 32  # number of categorical latents
    classes: int = 16  # classes per categorical latent
    blocks: int = 8  # groups of the block-diagonal GRU
    dynlayers: int = 1  # block-linear hidden layers of the GRU
    imglayers: int = 2  # dense layers of the prior
    obslayers: int = 1  # dense layers of the posterior
    units: int = 256  # width of encoder, decoder, actor and critic MLPs
    layers: int = 3  # layers of those MLPs
    head_layers: int = 1  # layers of the reward and continue heads
    cnn_depth: int = 16  # CNN channel multiplier
    cnn_mults: tuple[int, ...] = (2, 3, 4, 4)  # channels per stage = cnn_depth * mult
    cnn_kernel: int = 5
    cnn_stride: str = "conv"  # "pool": full-resolution conv + 2x2 max pool; "conv": stride-2 conv
    dec_bspace: int = 8  # groups of the decoder's block-linear projection of the GRU state (0: dense)
    bins: int = 255  # two-hot bins of the reward head and critic
    # Actor-critic.
    horizon: int = 15  # imagined steps
    discount_horizon: float = 333.0  # discount gamma = 1 - 1 / discount_horizon
    lam: float = 0.95  # lambda of the lambda-returns
    entropy: float = 3e-4  # actor entropy bonus
    actor_min_std: float = 0.1
    actor_max_std: float = 1.0
    actor_unimix: float = 0.01  # uniform mix of the discrete policy
    actor_outscale: float = 0.01  # initial scale of the actor's output layer
    slow_critic_rate: float = 0.02  # EMA rate of the slow critic, updated every step
    slow_critic_reg: float = 1.0  # weight of the critic's regression towards the slow critic
    return_norm_rate: float = 0.01  # EMA rate of the 5th-95th return percentile range
    return_norm_limit: float = 1.0  # smallest return scale advantages are divided by
    return_norm_debias: bool = False
    # World model.
    free_nats: float = 1.0
    unimix: float = 0.01
    # 1: a replayed sequence continues from the stored posterior latent of the step before it (given by the
    # batch's context_* keys) unless it starts an episode, as published; 0: every sequence starts cold.
    replay_context: int = 1
    # Loss scales.
    loss_rec: float = 1.0
    loss_rew: float = 1.0
    loss_con: float = 1.0
    loss_dyn: float = 1.0
    loss_rep: float = 0.1
    loss_policy: float = 1.0
    loss_value: float = 1.0
    loss_repval: float = 0.3
    repval_grad: bool = True  # the replay value loss also trains the world model's representations (published)
    # Optimiser (LaProp with adaptive gradient clipping).
    lr: float = 4e-5
    agc: float = 0.3
    eps: float = 1e-20
    beta1: float = 0.9
    beta2: float = 0.999
    warmup: int = 1000
    # Execution.
    precision: str = "auto"  # "auto": bfloat16 autocast on CUDA, float32 on CPU
    compile: str = "auto"  # torch.compile of the recurrent steps; "auto": on CUDA only

    def __post_init__(self) -> None:
        self.cnn_mults = tuple(int(mult) for mult in self.cnn_mults)
        checks = [
            ("cnn_stride", self.cnn_stride, CNN_STRIDES),
            ("precision", self.precision, PRECISIONS),
            ("compile", self.compile, COMPILE_CHOICES),
        ]
        for name, value, choices in checks:
            if value not in choices:
                raise ValueError(f"model setting {name} = {value!r} is not one of {', '.join(choices)}: pick one")
        positive = ("deter", "hidden", "stoch", "classes", "blocks", "units", "cnn_depth", "cnn_kernel", "horizon")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model setting {name} = {getattr(self, name)} must be at least 1")
        if self.deter % self.blocks:
            raise ValueError(f"model setting deter = {self.deter} must divide into blocks = {self.blocks}: "
                             f"make deter a multiple of blocks")
        if self.bins < 3 or self.bins % 2 == 0:
            raise ValueError(f"model setting bins = {self.bins} must be odd and at least 3")
        if not self.cnn_mults or min(self.cnn_mults) < 1:
            raise ValueError(f"model setting cnn_mults = {self.cnn_mults} needs at least one positive multiplier")
        if self.replay_context not in (0, 1):
            raise ValueError(f"model setting replay_context = {self.replay_context} must be 0 (cold start) or 1 "
                             f"(continue from the replayed latent)")

    @property
    def gamma(self) -> float:
        """The discount per step."""
        return 1.0 - 1.0 / self.discount_horizon


SMALL = MODEL_PRESETS["small"]
"""The small-compute preset (learner.profile small_cpu), from robotd.presets."""

PRESETS = PRESET_NAMES
"""Known presets (robotd.presets): "tiny" for tests, "small" for learning on a CPU, then the paper's sizes."""


def preset(name: str) -> ModelConfig:
    """The named size preset as a ``ModelConfig`` (the published hyperparameters for every field it leaves)."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}")
    return ModelConfig(**MODEL_PRESETS[name])


def build_policy_modules(obs_spec: ObsSpec, action_dim: int, config: ModelConfig, discrete: bool = False
                         ) -> dict[str, nn.Module]:
    """The modules that acting needs, by the names used in ``Dreamer.policy_state_dict``."""
    encoder = ObservationEncoder(obs_spec, config.units, config.layers, config.cnn_depth, config.cnn_mults,
                                 config.cnn_kernel, config.cnn_stride)
    rssm = RSSM(encoder.out_features, action_dim, config.deter, config.hidden, config.stoch, config.classes,
                config.unimix, config.blocks, config.dynlayers, config.imglayers, config.obslayers)
    actor = Actor(rssm.feature_dim, action_dim, config.units, config.layers, config.actor_min_std,
                  config.actor_max_std, discrete=discrete, unimix=config.actor_unimix,
                  outscale=config.actor_outscale)
    return {"encoder": encoder, "rssm": rssm, "actor": actor}


def _check_obs_spec(obs_spec: ObsSpec, action_dim: int) -> None:
    if not obs_spec:
        raise ValueError("obs_spec needs at least one observation")
    reserved = sorted(set(obs_spec) & {*BATCH_KEYS, *CONTEXT_KEYS})
    if reserved:
        raise ValueError(f"observation keys {reserved} clash with batch keys {[*BATCH_KEYS, *CONTEXT_KEYS]}")
    if action_dim < 1:
        raise ValueError(f"action_dim must be at least 1, got {action_dim}")


def parameter_count(module: nn.Module) -> int:
    """Trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward and continue heads, and the world-model loss."""

    def __init__(self, encoder: ObservationEncoder, rssm: RSSM, obs_spec: ObsSpec, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.rssm = rssm
        feature_dim = rssm.feature_dim
        self.decoder = ObservationDecoder(obs_spec, config.deter, config.stoch * config.classes, config.units,
                                          config.layers, config.cnn_depth, config.cnn_mults, config.cnn_kernel,
                                          config.cnn_stride, config.dec_bspace)
        self.reward_head = TwoHotHead(feature_dim, config.units, config.head_layers, config.bins)
        self.continue_head = ContinueHead(feature_dim, config.units, config.head_layers)

    def loss(
        self,
        obs: dict[str, torch.Tensor],
        previous_action: torch.Tensor,
        reward: torch.Tensor,
        is_first: torch.Tensor,
        is_terminal: torch.Tensor,
        start: LatentState | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], LatentState]:
        """World-model loss of sequences ``(B, T, ...)``; returns the scaled loss, its parts and the posterior states.

        ``start`` is the state before step 0 where ``is_first[:, 0]`` is false (see ``RSSM.observe``).

        Loss = ``loss_rec`` * reconstruction + ``loss_rew`` * reward two-hot cross-entropy +
        ``loss_con`` * continue BCE (target ``1 - is_terminal``) + ``loss_dyn`` *
        ``max(free_nats, KL[sg(q) || p])`` + ``loss_rep`` * ``max(free_nats, KL[q || sg(p)])``,
        each averaged over batch and time. The dynamics term trains the prior towards the
        posterior; the smaller representation term keeps the posterior predictable.
        """
        config = self.config
        embed = self.encoder(obs)
        states, posterior, prior = self.rssm.observe(embed, previous_action, is_first, start)
        features = self.rssm.features(states)

        reconstruction = self.decoder.loss(states.deter, states.stoch, obs)
        parts: dict[str, torch.Tensor] = {}
        if self.decoder.image_shapes:
            parts["image"] = sum(reconstruction[key] for key in self.decoder.image_shapes)
        if self.decoder.vector_shapes:
            parts["vector"] = sum(reconstruction[key] for key in self.decoder.vector_shapes)
        parts["reward"] = self.reward_head.loss(self.reward_head(features), reward).mean()
        parts["continue"] = F.binary_cross_entropy_with_logits(
            self.continue_head(features), 1.0 - is_terminal.float()
        )
        # Summed over the latents, then clipped per step as in the paper.
        kl_dyn = categorical_kl(posterior.detach(), prior).sum(-1)
        kl_rep = categorical_kl(posterior, prior.detach()).sum(-1)
        parts["kl_dyn"] = free_bits(kl_dyn, config.free_nats).mean()
        parts["kl_rep"] = free_bits(kl_rep, config.free_nats).mean()

        scales = {"image": config.loss_rec, "vector": config.loss_rec, "reward": config.loss_rew,
                  "continue": config.loss_con, "kl_dyn": config.loss_dyn, "kl_rep": config.loss_rep}
        total = sum(scales[key] * value for key, value in parts.items())
        metrics = {f"loss/{key}": value.detach() for key, value in parts.items()}
        metrics["loss/world_model"] = total.detach()
        metrics["world_model/kl"] = kl_dyn.detach().mean()
        metrics["world_model/prior_entropy"] = -(prior.exp() * prior).sum(-1).sum(-1).detach().mean()
        metrics["world_model/posterior_entropy"] = -(posterior.exp() * posterior).sum(-1).sum(-1).detach().mean()
        return total, metrics, states


def _resolve_device_choice(choice: str, device: torch.device, on_cuda: str, on_cpu: str) -> str:
    return (on_cuda if device.type == "cuda" else on_cpu) if choice == "auto" else choice


class Dreamer(nn.Module):
    """World model + actor + critic; one call of ``train_step`` = one full update.

    The actor-critic learns in imagination with REINFORCE: imagined trajectories are rolled out
    without gradients (stop-gradient imagination), and the actor is trained with
    ``-logpi(a) * sg(normalised advantage)`` plus an entropy bonus, as in the 2024 revision of
    DreamerV3. The critic regresses two-hot onto lambda-returns bootstrapped with its own
    predictions, is regularised towards a slow EMA copy of itself, and also regresses onto
    lambda-returns of the replayed sequences (bootstrapped with the imagined returns).
    Imagined steps after a predicted termination are masked by the cumulative product of
    the continue predictions. All losses are summed into one and minimised with one
    backward pass and one LaProp step over all parameters.
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: ModelConfig, device: str = "cpu", *,
                 discrete: bool = False) -> None:
        super().__init__()
        _check_obs_spec(obs_spec, action_dim)
        keep_freed_memory()
        self.obs_spec = dict(obs_spec)
        self.image_keys = tuple(split_obs_spec(obs_spec)[0])
        self.action_dim = action_dim
        self.discrete = discrete
        self.config = config
        self.device = torch.device(device)

        policy_modules = build_policy_modules(obs_spec, action_dim, config, discrete)
        self.world_model = WorldModel(policy_modules["encoder"], policy_modules["rssm"], obs_spec, config)
        self.actor = policy_modules["actor"]
        self.critic = TwoHotHead(self.world_model.rssm.feature_dim, config.units, config.layers, config.bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_normaliser = ReturnNormaliser(decay=1.0 - config.return_norm_rate,
                                                  limit=config.return_norm_limit, debias=config.return_norm_debias)
        self.to(self.device)
        if self.device.type == "cpu":
            # Convolutions run fastest on channels-last feature maps on the CPU.
            self.world_model.to(memory_format=torch.channels_last)

        self.optimiser = LaProp([p for p in self.parameters() if p.requires_grad], lr=config.lr,
                                betas=(config.beta1, config.beta2), eps=config.eps, agc=config.agc,
                                warmup=config.warmup)
        self.updates = 0
        # Data-parallel training (learner.parallel) sets this: called between backward and the optimiser step.
        self.reduce_gradients = None
        self._last_posterior: tuple[torch.Tensor, torch.Tensor] | None = None
        precision = _resolve_device_choice(config.precision, self.device, "bfloat16", "float32")
        self.autocast_dtype = torch.bfloat16 if precision == "bfloat16" else None
        self.compiled = _resolve_device_choice(config.compile, self.device, "on", "off") == "on"
        self._imagine_step = self._imagine_step_eager
        self._compile_checked = False
        if self.compiled:
            # Process-wide: every RMSNorm + SiLU becomes one fused kernel, forward and backward.
            compile_norm_act(True)
            self._imagine_step = torch.compile(self._imagine_step_eager, dynamic=False)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part (encoder, rssm, decoder, reward, continue, actor, critic) and in total."""
        world_model = self.world_model
        parts = {"encoder": world_model.encoder, "rssm": world_model.rssm, "decoder": world_model.decoder,
                 "reward": world_model.reward_head, "continue": world_model.continue_head, "actor": self.actor,
                 "critic": self.critic}
        counts = {name: parameter_count(module) for name, module in parts.items()}
        counts["total"] = sum(counts.values())
        return counts

    def _policy_modules(self) -> dict[str, nn.Module]:
        # Same names as build_policy_modules, so the keys match Policy's networks.
        return {"encoder": self.world_model.encoder, "rssm": self.world_model.rssm, "actor": self.actor}

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of only what ``Policy`` needs (encoder, RSSM, actor), keyed ``"<module>.<name>"``."""
        return {
            f"{module_name}.{name}": value.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for module_name, module in self._policy_modules().items()
            for name, value in module.state_dict().items()
        }

    def checkpoint(self) -> dict:
        """Everything needed to resume: module state (slow critic and return normaliser included), the
        optimiser state (moments and step counts, so warm-up continues) and the update counter.

        Holds only tensors and plain Python values, so ``torch.load(weights_only=True)`` reads
        it back. The tensors are the live ones (as with ``state_dict``): save it before the next
        ``train_step``.
        """
        return {
            "format": 2,
            "modules": self.state_dict(),
            "optimiser": self.optimiser.state_dict(),
            "updates": self.updates,
            "config": {key: list(value) if isinstance(value, tuple) else value
                       for key, value in dataclasses.asdict(self.config).items()},
        }

    def load_checkpoint(self, state: dict) -> None:
        """Restore what :meth:`checkpoint` returned."""
        if state.get("format") != 2:
            raise ValueError("checkpoint was written by an older learner (separate optimisers, GRU without blocks): "
                             "it cannot resume this model; start a new session directory")
        self.load_state_dict(state["modules"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.updates = int(state["updates"])

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """One update of the world model, actor and critic on a batch of sequences; returns metrics.

        All losses are computed with the current parameters, summed, and minimised with one
        backward pass and one optimiser step. With ``replay_context`` on and the batch's context
        keys given, the first step of a sequence continues from ``context_deter``/``context_stoch``
        where ``context_valid`` is true and ``is_first`` false; otherwise (and always with
        ``replay_context`` 0) it starts from the learned initial state. The posterior latents of
        the batch are kept in :attr:`last_posterior` afterwards.
        """
        data = self._prepare_batch(batch)
        if self.compiled and not self._compile_checked:
            try:
                return self._train_step(data)
            except Exception as error:  # noqa: BLE001 - any compiler failure falls back to eager execution
                log.warning("torch.compile failed (%s: %s); training goes on without it",
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                self._disable_compile()
            finally:
                self._compile_checked = True
        return self._train_step(data)

    @property
    def last_posterior(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The posterior states of the last ``train_step``'s batch, for writing back to the replay (None before
        the first): deter ``(B, T, deter)`` float32 and the stoch classes ``(B, T, stoch)`` (uint8, int16 when
        more than 256 classes)."""
        return self.posterior_arrays(np.float32)

    def posterior_arrays(self, deter_dtype=np.float32) -> tuple[np.ndarray, np.ndarray] | None:
        """:attr:`last_posterior` with deter as ``deter_dtype`` (float16 or float32), converted on the device."""
        if self._last_posterior is None:
            return None
        deter, stoch = self._last_posterior
        torch_dtype = torch.float16 if np.dtype(deter_dtype) == np.float16 else torch.float32
        return deter.to(torch_dtype).cpu().numpy(), stoch.cpu().numpy()

    def _disable_compile(self) -> None:
        compile_norm_act(False)
        self._imagine_step = self._imagine_step_eager
        self.compiled = False

    def _train_step(self, data: dict[str, torch.Tensor]) -> dict[str, float]:
        with self._autocast():
            model_loss, metrics, posterior = self._world_model_loss(data)
            start = LatentState(posterior.deter.detach(), posterior.stoch.detach())
            index_dtype = torch.uint8 if self.config.classes <= 256 else torch.int16
            self._last_posterior = (start.deter, start.stoch.argmax(-1).to(index_dtype))
            replay_states = posterior if self.config.repval_grad else start
            behaviour_loss, behaviour_metrics = self._behaviour_losses(
                start, data["reward"], data["is_last"], data["is_terminal"], replay_states
            )
        metrics.update(behaviour_metrics)

        self.optimiser.zero_grad(set_to_none=True)
        # Imagination runs without gradients and the actor-critic starts from detached states; the world
        # model's gradients come from its own loss and, with repval_grad, from the replay value loss.
        (model_loss + behaviour_loss).backward()
        if self.reduce_gradients is not None:          # data-parallel: the mean gradient of all ranks
            self.reduce_gradients()
        self.optimiser.step()
        self._update_slow_critic()
        self.updates += 1
        stats = self.optimiser.last_stats
        metrics.update({"optimiser/grad_norm": stats["grad_norm"], "optimiser/update_norm": stats["update_norm"],
                        "optimiser/clipped_fraction": stats["clipped_fraction"], "optimiser/lr": stats["lr"]})
        # One transfer for all metrics instead of one per value.
        names = list(metrics)
        values = torch.stack([torch.as_tensor(metrics[name], device=self.device).float().reshape(())
                              for name in names]).tolist()
        return dict(zip(names, values))

    def _world_model_loss(self, data: dict[str, torch.Tensor]):
        obs = {key: data[key] for key in self.obs_spec}
        action = data["action"]
        is_first = data["is_first"].clone()
        # The RSSM at step t conditions on the action taken after step t - 1; step 0 on the context step's.
        first_action = data.get("context_action", torch.zeros_like(action[:, 0]))
        previous_action = torch.cat([first_action[:, None], action[:, :-1]], dim=1)
        start = None
        if "context_deter" in data:
            # Continue from the replayed latent where it is valid and no episode starts; elsewhere reset.
            is_first[:, 0] |= ~data["context_valid"]
            start = LatentState(data["context_deter"], data["context_stoch"])
        else:
            is_first[:, 0] = True
        return self.world_model.loss(obs, previous_action, data["reward"], is_first, data["is_terminal"], start)

    def _prepare_batch(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [key for key in (*self.obs_spec, *BATCH_KEYS) if key not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}")

        def to_tensor(value: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(value).to(device=self.device, dtype=dtype, non_blocking=True)

        data = {
            key: to_tensor(batch[key], torch.uint8 if key in self.image_keys else torch.float32)
            for key in self.obs_spec
        }
        data["action"] = to_tensor(batch["action"], torch.float32)
        data["reward"] = to_tensor(batch["reward"], torch.float32)
        for key in ("is_first", "is_last", "is_terminal"):
            data[key] = to_tensor(batch[key], torch.bool)
        if data["reward"].dim() != 2 or data["reward"].shape[1] < 2:
            # Replayed returns need a next step to bootstrap from.
            raise ValueError(f"reward must be (B, T) with T >= 2, got {tuple(data['reward'].shape)}")
        if data["action"].shape[-1] != self.action_dim:
            raise ValueError(f"action has {data['action'].shape[-1]} entries per step, the model expects "
                             f"{self.action_dim}")
        if self.config.replay_context and "context_deter" in batch and "context_stoch" in batch:
            self._prepare_context(batch, data, to_tensor)
        return data

    def _prepare_context(self, batch, data: dict[str, torch.Tensor], to_tensor) -> None:
        """Adds the batch's replay context to ``data``, checking its shapes."""
        config = self.config
        size = data["reward"].shape[0]
        expected = {"context_deter": (size, config.deter), "context_stoch": (size, config.stoch, config.classes),
                    "context_action": (size, self.action_dim), "context_valid": (size,)}
        for key, shape in expected.items():
            if key in batch:
                data[key] = to_tensor(batch[key], torch.bool if key == "context_valid" else torch.float32)
                if tuple(data[key].shape) != shape:
                    raise ValueError(f"{key} has shape {tuple(data[key].shape)}, the model expects {shape}")
        if "context_valid" not in data:
            data["context_valid"] = torch.ones(size, dtype=torch.bool, device=self.device)

    def _imagine_step_eager(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        rssm = self.world_model.rssm
        env_action = action if self.discrete else action.clamp(-1.0, 1.0)
        deter = rssm.core(deter, stoch, rssm.action_input(env_action))
        stoch = straight_through_sample(rssm.prior_log_probs(deter)).to(deter.dtype)
        return deter, stoch

    def _imagine(self, start: LatentState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Roll out ``horizon`` steps of the actor in the world model from ``start`` (N, ...).

        The dynamics run without gradients; the actor's outputs keep theirs (on detached
        features), so the actor loss reuses them instead of running the actor again. Returns
        features ``(N, horizon + 1, F)`` of the start and imagined states, the actor's outputs
        ``(N, horizon, ...)`` at the states it acted in, and the action samples ``(N, horizon, A)``
        (continuous ones unclipped; the dynamics receive them clipped).
        """
        rssm = self.world_model.rssm
        deter, stoch = start
        deters, stochs, outputs, actions = [deter], [stoch], [], []
        for _ in range(self.config.horizon):
            output = self.actor.output(rssm.features(LatentState(deter, stoch)))
            with torch.no_grad():
                action = self.actor.distribution(output.detach()).sample()
                deter, stoch = self._imagine_step(deter, stoch, action)
            deters.append(deter)
            stochs.append(stoch)
            outputs.append(output)
            actions.append(action)
        features = rssm.features(LatentState(torch.stack(deters, 1), torch.stack(stochs, 1)))
        return features, torch.stack(outputs, dim=1), torch.stack(actions, dim=1)

    def _behaviour_losses(
        self, start: LatentState, reward: torch.Tensor, is_last: torch.Tensor, is_terminal: torch.Tensor,
        replay_states: LatentState | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scaled actor and critic losses from imagination started at every posterior state ``(B, T, ...)``.

        ``replay_states`` are the posterior states the replay value loss reads (``start`` when not
        given); passed with their gradients, that loss also shapes the world model."""
        config = self.config
        batch, length = reward.shape
        world_model = self.world_model
        features, actor_outputs, actions = self._imagine(
            LatentState(start.deter.flatten(0, 1), start.stoch.flatten(0, 1)))
        # One critic pass with gradients serves both the value targets (detached) and the critic loss.
        all_critic_logits = self.critic(features)
        critic_logits = all_critic_logits[:, :-1]
        with torch.no_grad():
            rewards = world_model.reward_head.predict(world_model.reward_head(features))
            continues = torch.sigmoid(world_model.continue_head(features))
            # The start state is real, so whether it continues is known.
            continues[:, 0] = 1.0 - is_terminal.flatten().float()
            values = self.critic.predict(all_critic_logits.detach())
            returns = lambda_returns(rewards, continues, values, config.gamma, config.lam)
            weights = torch.cumprod(continues, dim=1)[:, :-1]
            self.return_normaliser.update(returns)
            scale = self.return_normaliser.scale()
            advantages = (returns - values[:, :-1]) / scale
            slow_values = self.slow_critic.predict(self.slow_critic(features[:, :-1]))

        policy = self.actor.distribution(actor_outputs)
        log_prob = policy.log_prob(actions)
        entropy = policy.entropy()
        actor_loss = -(weights * (log_prob * advantages + config.entropy * entropy)).mean()

        critic_loss = (
            weights
            * (
                self.critic.loss(critic_logits, returns)
                + config.slow_critic_reg * self.critic.loss(critic_logits, slow_values)
            )
        ).mean()

        imagined_returns = returns[:, 0].reshape(batch, length)
        replay_loss = self._replay_critic_loss(start if replay_states is None else replay_states, reward, is_last,
                                               is_terminal, imagined_returns)

        metrics = {
            "loss/actor": actor_loss.detach(),
            "loss/critic": critic_loss.detach(),
            "loss/replay_critic": replay_loss.detach(),
            "actor/entropy": entropy.detach().mean(),
            "actor/spread": policy.spread().detach(),
            "imagination/reward": rewards[:, 1:].mean(),
            "imagination/return": returns.mean(),
            "imagination/value": values.mean(),
            "imagination/advantage_abs": advantages.abs().mean(),
            "return_normaliser/scale": scale,
        }
        total = (config.loss_policy * actor_loss + config.loss_value * critic_loss
                 + config.loss_repval * replay_loss)
        return total, metrics

    def _replay_critic_loss(
        self,
        start: LatentState,
        reward: torch.Tensor,
        is_last: torch.Tensor,
        is_terminal: torch.Tensor,
        imagined_returns: torch.Tensor,
    ) -> torch.Tensor:
        """Critic loss on the replayed sequences ``(B, T)``.

        Targets are lambda-returns of the real rewards and terminations, bootstrapped with the
        imagined return from each replayed state; the recursion is cut at ``is_last`` so it
        never crosses into the next episode, and the last step of an episode gets no loss.
        The critic reads ``start``'s features as given: with their gradients (``repval_grad``)
        the loss flows into the encoder and RSSM too.
        """
        config = self.config
        features = self.world_model.rssm.features(start)
        with torch.no_grad():
            not_last = 1.0 - is_last.float()
            targets = lambda_returns(
                reward, 1.0 - is_terminal.float(), imagined_returns, config.gamma, config.lam * not_last
            )
            slow_values = self.slow_critic.predict(self.slow_critic(features[:, :-1].detach()))
        logits = self.critic(features[:, :-1])
        losses = self.critic.loss(logits, targets)
        losses = losses + config.slow_critic_reg * self.critic.loss(logits, slow_values)
        return (not_last[:, :-1] * losses).mean()

    @torch.no_grad()
    def _update_slow_critic(self) -> None:
        slow = list(self.slow_critic.parameters())
        torch._foreach_lerp_(slow, list(self.critic.parameters()), self.config.slow_critic_rate)

    @torch.no_grad()
    def report(self, batch: dict[str, np.ndarray | torch.Tensor], context: int = 5, max_videos: int = 4
               ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """A world-model report like DreamerV3's, without training.

        Returns ``(scalars, videos)``: the per-head losses of the batch (``report/loss/...``) and
        the open-loop prediction error of every observation key (``report/openloop/<key>``,
        mean squared error of the imagined part), and for each image key a uint8 video
        ``(T, H, 3 * W, C)`` per shown sequence stacked as ``(N, T, H, 3W, C)``: the recorded
        frames, the model's frames (reconstructions for the first ``context`` steps, then
        predictions from the prior driven by the recorded actions alone), and the absolute
        difference.
        """
        data = self._prepare_batch(batch)
        length = data["reward"].shape[1]
        context = max(1, min(context, length - 1))
        with self._autocast():
            _, losses, _ = self._world_model_loss(data)
            obs = {key: data[key] for key in self.obs_spec}
            rssm = self.world_model.rssm
            action = data["action"]
            previous_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], dim=1)
            is_first = data["is_first"].clone()
            is_first[:, 0] = True
            embed = self.world_model.encoder({key: value[:, :context] for key, value in obs.items()})
            observed, _, _ = rssm.observe(embed, previous_action[:, :context], is_first[:, :context])
            state = LatentState(observed.deter[:, -1], observed.stoch[:, -1])
            deters, stochs = [], []
            for step in range(context, length):
                state = rssm.imagine_step(state, previous_action[:, step])
                deters.append(state.deter)
                stochs.append(state.stoch)
            deter = torch.cat([observed.deter, torch.stack(deters, 1)], 1)
            stoch = torch.cat([observed.stoch, torch.stack(stochs, 1)], 1)
            predictions = self.world_model.decoder(deter, stoch)
        scalars = {f"report/{name}": float(value) for name, value in losses.items()}
        videos = {}
        for key, prediction in predictions.items():
            prediction = prediction.float()
            if key in self.image_keys:
                truth = obs[key].float() / 255.0
                scalars[f"report/openloop/{key}"] = float((prediction - truth)[:, context:].square().mean())
                shown = slice(0, max_videos)
                frames = torch.cat([truth[shown], prediction[shown], (prediction[shown] - truth[shown]).abs()],
                                   dim=-2)
                videos[f"openloop/{key}"] = (frames.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            else:
                target = torch.sign(obs[key].float()) * torch.log1p(obs[key].float().abs())
                scalars[f"report/openloop/{key}"] = float((prediction - target)[:, context:].square().mean())
        return scalars, videos


class Policy:
    """Batch-1 CPU inference for the actor: same networks as the learner, no grad, its own recurrent state.

    ``act`` is a dedicated single-step path: it avoids autograd, distribution objects and
    per-step allocations where it can, and runs under ``torch.inference_mode``. For the lowest
    latency the acting process should also call ``torch.set_num_threads(1)`` (batch-1 layers
    are too small to gain from threads).
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: ModelConfig, *, discrete: bool = False) -> None:
        _check_obs_spec(obs_spec, action_dim)
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.action_dim = action_dim
        self.discrete = discrete
        self.networks = nn.ModuleDict(build_policy_modules(obs_spec, action_dim, config, discrete))
        self.networks.eval().requires_grad_(False)
        self.encoder: ObservationEncoder = self.networks["encoder"]
        self.rssm: RSSM = self.networks["rssm"]
        self.actor: Actor = self.networks["actor"]
        self._shapes = {name: tuple(value.shape) for name, value in self.networks.state_dict().items()}
        self._refresh_initial_state()
        self.reset()

    @property
    def state(self) -> LatentState:
        """The current recurrent state (batch of one)."""
        return self._state

    def load(self, policy_state: dict[str, torch.Tensor | np.ndarray]) -> None:
        """Load weights from ``Dreamer.policy_state_dict()``, as tensors or numpy arrays.

        Raises ``ValueError`` naming the first missing, unexpected or mis-shaped entry. The
        recurrent state is kept, so an episode can go on across weight updates.
        """
        unexpected = sorted(set(policy_state) - set(self._shapes))
        if unexpected:
            raise ValueError(f"unexpected policy parameter {unexpected[0]!r}")
        tensors = {}
        for name, shape in self._shapes.items():
            if name not in policy_state:
                raise ValueError(f"policy parameter {name!r} is missing")
            value = policy_state[name]
            # torch.tensor copies, so read-only buffers received from the network are fine.
            tensor = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(np.asarray(value))
            if tuple(tensor.shape) != shape:
                raise ValueError(f"policy parameter {name!r} has shape {tuple(tensor.shape)}, expected {shape}")
            tensors[name] = tensor
        self.networks.load_state_dict(tensors)
        self._refresh_initial_state()

    def reset(self) -> None:
        """Start a new episode: the learned initial state and a zero previous action."""
        self._state = self._initial_state
        self._previous_action = self._zero_action

    def act(self, obs: dict[str, np.ndarray], is_first: bool, *, explore: bool = True) -> np.ndarray:
        """Filter one observation into the recurrent state and choose an action ``(A,)`` float32.

        Continuous actions are in [-1, 1]; discrete ones are one-hot. ``is_first`` resets the
        state first. ``explore`` samples the policy; otherwise its mode is taken.
        """
        with torch.inference_mode():
            if is_first:
                self.reset()
            rssm = self.rssm
            embed = self.encoder(self._obs_tensors(obs))
            deter = rssm.core(self._state.deter, self._state.stoch, rssm.action_input(self._previous_action))
            posterior = rssm.posterior_log_probs(deter, rssm.posterior_input(embed))
            index = categorical_sample(posterior) if explore else posterior.argmax(-1)
            stoch = one_hot(index, rssm.classes, deter.dtype)
            self._state = LatentState(deter, stoch)
            policy = self.actor(torch.cat([deter, stoch.flatten(-2)], -1))
            action = policy.sample() if explore else policy.mode()
            if not self.discrete:
                action = action.clamp(-1.0, 1.0)
            self._previous_action = action
            return action[0].numpy().copy()

    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = {key: torch.from_numpy(np.ascontiguousarray(obs[key], dtype=np.uint8))[None]
                   for key in self.image_shapes}
        for key in self.vector_shapes:
            tensors[key] = torch.from_numpy(np.asarray(obs[key], dtype=np.float32).reshape(1, -1).copy())
        return tensors

    def _refresh_initial_state(self) -> None:
        # Depends only on the weights, so it is computed once per load rather than per episode.
        with torch.inference_mode():
            self._initial_state = self.rssm.initial_state(1)
            self._zero_action = torch.zeros(1, self.action_dim)


def describe_parameters(counts: dict[str, int]) -> str:
    """One line such as ``"12.1M parameters (encoder 1.2M, rssm 6.9M, ...)"`` for logs."""
    def human(count: int) -> str:
        return f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count / 1e3:.1f}k"
    parts = ", ".join(f"{name} {human(count)}" for name, count in counts.items() if name != "total")
    return f"{human(counts['total'])} parameters ({parts})"


def model_summary(config: ModelConfig) -> str:
    """The sizes that define a model, for logs."""
    return (f"deter {config.deter} ({config.blocks} blocks), hidden {config.hidden}, stoch {config.stoch}x"
            f"{config.classes}, units {config.units}x{config.layers}, cnn depth {config.cnn_depth} "
            f"({config.cnn_stride}), horizon {config.horizon}, gamma {config.gamma:.4f}")

