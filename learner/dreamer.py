"""The DreamerV3 agent: world model, actor and critic, trained together by ``Dreamer.train_step``.

``Dreamer`` is the learner's side; ``Policy`` is the actor's side, batch-1 inference with the
same encoder, RSSM and actor modules, loaded from ``Dreamer.policy_state_dict()``.

Batch layout (``Dreamer.train_step``): every observation key ``(B, T, ...)``; ``action`` ``(B, T, A)``
in [-1, 1], the action taken after observing step ``t``; ``reward`` ``(B, T)``, received on
arriving at step ``t``; ``is_first``, ``is_last``, ``is_terminal`` ``(B, T)`` flags.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from learner.mathops import ReturnNormaliser, categorical_kl, free_bits, lambda_returns
from learner.networks import (
    RSSM,
    Actor,
    ContinueHead,
    LatentState,
    ObservationDecoder,
    ObservationEncoder,
    ObsSpec,
    TwoHotHead,
    split_obs_spec,
)

__all__ = ["Dreamer", "ModelConfig", "ObsSpec", "Policy", "WorldModel", "preset"]

BATCH_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
"""Non-observation keys of a training batch; observation keys may not use these names."""


@dataclass
class ModelConfig:
    """Sizes and hyperparameters of the agent; defaults are the paper's (the "small" preset's sizes)."""

    # Network sizes.
    deter: int = 256  # GRU state size
    hidden: int = 256  # width of the RSSM's internal layers
    stoch: int = 16  # number of categorical latents
    classes: int = 16  # classes per categorical latent
    units: int = 256  # width of encoder, decoder and head MLPs
    layers: int = 2  # layers of those MLPs
    cnn_depth: int = 16  # channels of the first conv layer, doubled at every stage
    bins: int = 255  # two-hot bins of the reward head and critic
    # Actor-critic.
    horizon: int = 15  # imagined steps
    gamma: float = 1.0 - 1.0 / 333.0  # discount
    lam: float = 0.95  # lambda of the lambda-returns
    entropy: float = 3e-4  # actor entropy bonus
    actor_min_std: float = 0.1
    actor_max_std: float = 1.0
    slow_critic_decay: float = 0.98  # EMA decay of the slow critic, updated every step
    slow_critic_reg: float = 1.0  # weight of the critic's regression towards the slow critic
    replay_critic_scale: float = 0.3  # weight of the critic loss on replayed sequences
    return_norm_decay: float = 0.99  # EMA decay of the return percentile range
    return_norm_limit: float = 1.0  # smallest return scale advantages are divided by
    # World model.
    free_nats: float = 1.0
    kl_dyn: float = 1.0
    kl_rep: float = 0.1
    unimix: float = 0.01
    # Optimisation.
    model_lr: float = 1e-4
    actor_lr: float = 3e-5
    critic_lr: float = 3e-5
    adam_eps: float = 1e-8
    grad_clip: float = 1000.0  # gradient norm clip per optimiser


_PRESETS = {
    "tiny": dict(deter=64, hidden=64, stoch=8, classes=8, units=64, layers=1, cnn_depth=8, horizon=8),
    "small": dict(deter=256, hidden=256, stoch=16, classes=16, units=256, layers=2, cnn_depth=16, horizon=15),
}


def preset(name: str) -> ModelConfig:
    """A named configuration: "tiny" for tests and CPU demos, "small" for real runs."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(_PRESETS))}")
    return ModelConfig(**_PRESETS[name])


def build_policy_modules(obs_spec: ObsSpec, action_dim: int, config: ModelConfig) -> dict[str, nn.Module]:
    """The modules that acting needs, by the names used in ``Dreamer.policy_state_dict``."""
    encoder = ObservationEncoder(obs_spec, config.units, config.layers, config.cnn_depth)
    rssm = RSSM(
        encoder.out_features,
        action_dim,
        config.deter,
        config.hidden,
        config.stoch,
        config.classes,
        config.unimix,
    )
    actor = Actor(
        rssm.feature_dim, action_dim, config.units, config.layers, config.actor_min_std, config.actor_max_std
    )
    return {"encoder": encoder, "rssm": rssm, "actor": actor}


def _check_obs_spec(obs_spec: ObsSpec, action_dim: int) -> None:
    if not obs_spec:
        raise ValueError("obs_spec needs at least one observation")
    reserved = sorted(set(obs_spec) & set(BATCH_KEYS))
    if reserved:
        raise ValueError(f"observation keys {reserved} clash with batch keys {list(BATCH_KEYS)}")
    if action_dim < 1:
        raise ValueError(f"action_dim must be at least 1, got {action_dim}")


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward and continue heads, and the world-model loss."""

    def __init__(self, encoder: ObservationEncoder, rssm: RSSM, obs_spec: ObsSpec, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.rssm = rssm
        feature_dim = rssm.feature_dim
        self.decoder = ObservationDecoder(obs_spec, feature_dim, config.units, config.layers, config.cnn_depth)
        self.reward_head = TwoHotHead(feature_dim, config.units, config.layers, config.bins)
        self.continue_head = ContinueHead(feature_dim, config.units, config.layers)

    def loss(
        self,
        obs: dict[str, torch.Tensor],
        previous_action: torch.Tensor,
        reward: torch.Tensor,
        is_first: torch.Tensor,
        is_terminal: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], LatentState]:
        """World-model loss of sequences ``(B, T, ...)``; returns the loss, its parts and the posterior states.

        Loss = reconstruction + reward two-hot cross-entropy + continue BCE (target
        ``1 - is_terminal``) + ``kl_dyn * max(free_nats, KL[sg(q) || p])`` +
        ``kl_rep * max(free_nats, KL[q || sg(p)])``, each averaged over batch and time. The
        dynamics term trains the prior towards the posterior; the smaller representation term
        keeps the posterior predictable.
        """
        config = self.config
        embed = self.encoder(obs)
        states, posterior, prior = self.rssm.observe(embed, previous_action, is_first)
        features = self.rssm.features(states)

        reconstruction = self.decoder.loss(features, obs)
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

        total = (
            sum(value for key, value in parts.items() if not key.startswith("kl_"))
            + config.kl_dyn * parts["kl_dyn"]
            + config.kl_rep * parts["kl_rep"]
        )
        metrics = {f"loss/{key}": value.detach() for key, value in parts.items()}
        metrics["loss/world_model"] = total.detach()
        metrics["world_model/kl"] = kl_dyn.detach().mean()
        return total, metrics, states


class Dreamer(nn.Module):
    """World model + actor + critic; one call of train_step = one full update.

    The actor-critic learns in imagination with REINFORCE: imagined trajectories are rolled out
    without gradients (stop-gradient imagination), and the actor is trained with
    ``-logpi(a) * sg(normalised advantage)`` plus an entropy bonus, as in the 2024 revision of
    DreamerV3. The critic regresses two-hot onto lambda-returns bootstrapped with its own
    predictions, is regularised towards a slow EMA copy of itself, and also regresses onto
    lambda-returns of the replayed sequences (bootstrapped with the imagined returns).
    Imagined steps after a predicted termination are masked by the cumulative product of
    the continue predictions.
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: ModelConfig, device: str = "cpu") -> None:
        super().__init__()
        _check_obs_spec(obs_spec, action_dim)
        self.obs_spec = dict(obs_spec)
        self.image_keys = tuple(split_obs_spec(obs_spec)[0])
        self.action_dim = action_dim
        self.config = config
        self.device = torch.device(device)

        policy_modules = build_policy_modules(obs_spec, action_dim, config)
        self.world_model = WorldModel(policy_modules["encoder"], policy_modules["rssm"], obs_spec, config)
        self.actor = policy_modules["actor"]
        self.critic = TwoHotHead(self.world_model.rssm.feature_dim, config.units, config.layers, config.bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_normaliser = ReturnNormaliser(
            decay=config.return_norm_decay, limit=config.return_norm_limit
        )
        self.to(self.device)

        self.model_optimiser = torch.optim.Adam(
            self.world_model.parameters(), lr=config.model_lr, eps=config.adam_eps
        )
        self.actor_optimiser = torch.optim.Adam(
            self.actor.parameters(), lr=config.actor_lr, eps=config.adam_eps
        )
        self.critic_optimiser = torch.optim.Adam(
            self.critic.parameters(), lr=config.critic_lr, eps=config.adam_eps
        )
        self.updates = 0

    def _policy_modules(self) -> dict[str, nn.Module]:
        # Same names as build_policy_modules, so the keys match Policy's networks.
        return {"encoder": self.world_model.encoder, "rssm": self.world_model.rssm, "actor": self.actor}

    def _optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.model_optimiser, "actor": self.actor_optimiser, "critic": self.critic_optimiser}

    def policy_state_dict(self) -> dict[str, torch.Tensor]:
        """CPU copies of only what ``Policy`` needs (encoder, RSSM, actor), keyed ``"<module>.<name>"``."""
        return {
            f"{module_name}.{name}": value.detach().to("cpu", copy=True)
            for module_name, module in self._policy_modules().items()
            for name, value in module.state_dict().items()
        }

    def checkpoint(self) -> dict:
        """Everything needed to resume: module state (including the slow critic and the return
        normaliser), optimiser states and the update counter.

        Holds only tensors and plain Python values, so ``torch.load(weights_only=True)`` reads
        it back. The tensors are the live ones (as with ``state_dict``): save it before the next
        ``train_step``.
        """
        return {
            "modules": self.state_dict(),
            "optimisers": {name: optimiser.state_dict() for name, optimiser in self._optimisers().items()},
            "updates": self.updates,
        }

    def load_checkpoint(self, state: dict) -> None:
        """Restore what :meth:`checkpoint` returned."""
        self.load_state_dict(state["modules"])
        for name, optimiser in self._optimisers().items():
            optimiser.load_state_dict(state["optimisers"][name])
        self.updates = int(state["updates"])

    def train_step(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, float]:
        """One update of the world model, actor and critic on a batch of sequences; returns metrics.

        All three losses are computed with the current parameters before any optimiser steps.
        The first step of every sequence starts from the learned initial state, whether or not
        it begins an episode, since the state from before the sequence is unknown.
        """
        data = self._prepare_batch(batch)
        obs = {key: data[key] for key in self.obs_spec}
        action = data["action"]
        is_first = data["is_first"].clone()
        is_first[:, 0] = True
        # The RSSM at step t conditions on the action taken after step t - 1.
        previous_action = torch.cat([torch.zeros_like(action[:, :1]), action[:, :-1]], dim=1)

        model_loss, metrics, posterior = self.world_model.loss(
            obs, previous_action, data["reward"], is_first, data["is_terminal"]
        )
        start = LatentState(posterior.deter.detach(), posterior.stoch.detach())
        actor_loss, critic_loss, behaviour_metrics = self._behaviour_losses(
            start, data["reward"], data["is_last"], data["is_terminal"]
        )
        metrics.update(behaviour_metrics)

        for optimiser in self._optimisers().values():
            optimiser.zero_grad(set_to_none=True)
        # The three losses have disjoint graphs (imagination runs without gradients), so one
        # backward pass fills each module's gradients from its own loss only.
        (model_loss + actor_loss + critic_loss).backward()
        for name, module in (("world_model", self.world_model), ("actor", self.actor), ("critic", self.critic)):
            metrics[f"grad_norm/{name}"] = nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        for optimiser in self._optimisers().values():
            optimiser.step()
        self._update_slow_critic()
        self.updates += 1
        return {key: float(value) for key, value in metrics.items()}

    def _prepare_batch(self, batch: dict[str, np.ndarray | torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [key for key in (*self.obs_spec, *BATCH_KEYS) if key not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}")

        def to_tensor(value: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(value).to(device=self.device, dtype=dtype)

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
        return data

    @torch.no_grad()
    def _imagine(self, start: LatentState) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll out ``horizon`` steps of the actor in the world model from ``start`` (N, ...).

        Returns features ``(N, horizon + 1, F)`` of the start and imagined states, and the
        unclipped action samples ``(N, horizon, A)`` (the dynamics receive them clipped).
        """
        rssm = self.world_model.rssm
        state = start
        features = [rssm.features(state)]
        actions = []
        for _ in range(self.config.horizon):
            action = self.actor(features[-1]).sample()
            state = rssm.imagine_step(state, action.clamp(-1.0, 1.0))
            features.append(rssm.features(state))
            actions.append(action)
        return torch.stack(features, dim=1), torch.stack(actions, dim=1)

    def _behaviour_losses(
        self, start: LatentState, reward: torch.Tensor, is_last: torch.Tensor, is_terminal: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Actor and critic losses from imagination started at every posterior state ``(B, T, ...)``."""
        config = self.config
        batch, length = reward.shape
        world_model = self.world_model
        with torch.no_grad():
            features, actions = self._imagine(LatentState(start.deter.flatten(0, 1), start.stoch.flatten(0, 1)))
            rewards = world_model.reward_head.predict(world_model.reward_head(features))
            continues = torch.sigmoid(world_model.continue_head(features))
            # The start state is real, so whether it continues is known.
            continues[:, 0] = 1.0 - is_terminal.flatten().float()
            values = self.critic.predict(self.critic(features))
            returns = lambda_returns(rewards, continues, values, config.gamma, config.lam)
            weights = torch.cumprod(continues, dim=1)[:, :-1]
            self.return_normaliser.update(returns)
            scale = self.return_normaliser.scale()
            advantages = (returns - values[:, :-1]) / scale
            slow_values = self.slow_critic.predict(self.slow_critic(features[:, :-1]))

        policy = self.actor(features[:, :-1])
        log_prob = policy.log_prob(actions).sum(-1)
        entropy = policy.entropy().sum(-1)
        actor_loss = -(weights * (log_prob * advantages + config.entropy * entropy)).mean()

        critic_logits = self.critic(features[:, :-1])
        critic_loss = (
            weights
            * (
                self.critic.loss(critic_logits, returns)
                + config.slow_critic_reg * self.critic.loss(critic_logits, slow_values)
            )
        ).mean()

        imagined_returns = returns[:, 0].reshape(batch, length)
        replay_loss = self._replay_critic_loss(start, reward, is_last, is_terminal, imagined_returns)

        metrics = {
            "loss/actor": actor_loss.detach(),
            "loss/critic": critic_loss.detach(),
            "loss/replay_critic": replay_loss.detach(),
            "actor/entropy": entropy.detach().mean(),
            "actor/std": policy.stddev.detach().mean(),
            "imagination/reward": rewards[:, 1:].mean(),
            "imagination/return": returns.mean(),
            "imagination/value": values.mean(),
            "return_normaliser/scale": scale,
        }
        return actor_loss, critic_loss + config.replay_critic_scale * replay_loss, metrics

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
        """
        config = self.config
        with torch.no_grad():
            features = self.world_model.rssm.features(start)
            not_last = 1.0 - is_last.float()
            targets = lambda_returns(
                reward, 1.0 - is_terminal.float(), imagined_returns, config.gamma, config.lam * not_last
            )
            slow_values = self.slow_critic.predict(self.slow_critic(features[:, :-1]))
        logits = self.critic(features[:, :-1])
        losses = self.critic.loss(logits, targets)
        losses = losses + config.slow_critic_reg * self.critic.loss(logits, slow_values)
        return (not_last[:, :-1] * losses).mean()

    @torch.no_grad()
    def _update_slow_critic(self) -> None:
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, 1.0 - self.config.slow_critic_decay)


class Policy:
    """Batch-1 CPU inference for the actor: same network code as the learner, no grad, its own recurrent state.

    Runs under ``torch.inference_mode``; for the lowest latency the acting process should also
    call ``torch.set_num_threads(1)`` (batch-1 layers are too small to gain from threads).
    """

    def __init__(self, obs_spec: ObsSpec, action_dim: int, config: ModelConfig) -> None:
        _check_obs_spec(obs_spec, action_dim)
        self.image_shapes, self.vector_shapes = split_obs_spec(obs_spec)
        self.action_dim = action_dim
        self.networks = nn.ModuleDict(build_policy_modules(obs_spec, action_dim, config))
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
        """Filter one observation into the recurrent state and choose an action ``(A,)`` float32 in [-1, 1].

        ``is_first`` resets the state first. ``explore`` samples the policy; otherwise its mean
        is taken.
        """
        with torch.inference_mode():
            if is_first:
                self.reset()
            embed = self.encoder(self._obs_tensors(obs))
            self._state, _ = self.rssm.observe_step(self._state, self._previous_action, embed)
            policy = self.actor(self.rssm.features(self._state))
            action = (policy.sample() if explore else policy.mean).clamp(-1.0, 1.0)
            self._previous_action = action
            return action[0].numpy().copy()

    def _obs_tensors(self, obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        tensors = {key: torch.tensor(np.asarray(obs[key], dtype=np.uint8))[None] for key in self.image_shapes}
        for key in self.vector_shapes:
            tensors[key] = torch.tensor(np.asarray(obs[key], dtype=np.float32).reshape(1, -1))
        return tensors

    def _refresh_initial_state(self) -> None:
        # Depends only on the weights, so it is computed once per load rather than per episode.
        with torch.inference_mode():
            self._initial_state = self.rssm.initial_state(1)
            self._zero_action = torch.zeros(1, self.action_dim)
