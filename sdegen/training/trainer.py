"""One training loop for every model family: AdamW, warm-up, clipping, EMA, checkpoints, DDP.

Reproducibility is by construction, not by saved RNG state: step k's batch comes from the
epoch permutation of DistributedSampler (seeded by the run seed and the epoch), and every random
number the objective draws comes from `StepRandom`, seeded by (seed, step) and drawn for the
*global* batch, each process taking its rows. So a resumed run repeats an uninterrupted one step
for step, and a run on W processes sees the same examples with the same noise as one process
with the same global batch.

Multi-process training uses PyTorch's DDP under torchrun (gloo on CPU, nccl on CUDA); rank 0
alone writes checkpoints and logs.

Two-player games (GANs) train in one of two ways. By default one step minimises one objective
with one optimizer: for a GAN's `loss` that is a simultaneous gradient step of both players.
With `players=` (a `Player` per player of the model), a step is a round of *alternating*
updates: each player in turn takes `Player.steps` optimizer steps on its own loss with its own
learning rate and betas, e.g. n_critic = 5 critic steps per generator step (Arjovsky et al.
2017; Gulrajani et al. 2017) or the two-time-scale update rule (Heusel et al. 2017). Every
update draws its own batch and noise from (seed, step, update), so resume stays bit-exact.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler, TensorDataset

from .._progress import Progress
from .._utils import check_bool, check_finite_number, check_int, resolve_device
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

# (model, x, rnd) -> loss; with labels given to the Trainer, (model, x, rnd, y) -> loss;
# with players given, (model, x, rnd, player) -> that player's loss.
Objective = Callable[..., Tensor]

_MIX = 0x9E3779B97F4A7C15  # spreads (seed, step) pairs over the seed space


def _step_seed(seed: int, step: int, stream: int = 0) -> int:
    return (seed * _MIX + step * 1_000_003 + stream * 7919) % (2**63 - 1)


class StepRandom:
    """Random numbers for one training step, the same per example however the batch is split.

    `step` is the training step the numbers belong to (a KL-annealing objective reads it).
    Each draw makes a tensor for the whole global batch from a generator seeded by (seed, step)
    and returns this process's rows [rank::world] (DistributedSampler's interleaving), so
    example i of the global batch gets the same numbers on 1 process or on W.
    """

    def __init__(
        self,
        seed: int,
        step: int,
        rank: int,
        world: int,
        global_batch: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.rank, self.world, self.global_batch = rank, world, global_batch
        self.step = step  # the training step (objectives with a schedule read it)
        self.device = device
        self._gen = torch.Generator().manual_seed(_step_seed(seed, step))
        # for objectives that need no split invariance (e.g. a VAE's sampling inside `loss`)
        self.generator = torch.Generator(device=device).manual_seed(
            _step_seed(seed, step, stream=1 + rank)
        )

    def _rows(self, t: Tensor, dtype: torch.dtype) -> Tensor:
        return t[self.rank :: self.world].to(dtype=dtype, device=self.device)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """U(0, 1) of shape (local_batch, *shape)."""
        return self._rows(
            torch.rand(self.global_batch, *shape, generator=self._gen, dtype=torch.float64), dtype
        )

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """N(0, 1) of shape (local_batch, *shape)."""
        return self._rows(
            torch.randn(self.global_batch, *shape, generator=self._gen, dtype=torch.float64), dtype
        )


def _player_groups(
    model: nn.Module,
    players: dict[str, Player],
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
) -> list[dict]:
    """AdamW parameter groups, one per player (in `players` order), disjoint and non-empty."""
    groups: list[dict] = []
    seen: dict[int, str] = {}
    for name, player in players.items():
        params = list(model.player_parameters(name))  # type: ignore[operator]
        if not params:
            raise ValueError(f"player {name!r} has no parameters to train")
        for p in params:
            if id(p) in seen:
                raise ValueError(
                    f"players {seen[id(p)]!r} and {name!r} share a parameter; "
                    "player_parameters must be disjoint"
                )
            seen[id(p)] = name
        groups.append(
            {
                "params": params,
                "lr": player.lr if player.lr is not None else lr,
                "betas": player.betas if player.betas is not None else betas,
                "weight_decay": (
                    player.weight_decay if player.weight_decay is not None else weight_decay
                ),
                "player": name,
            }
        )
    return groups


class _ObjectiveModule(nn.Module):
    """DDP synchronises gradients only through its module's forward: make the objective it."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: Tensor, rnd: StepRandom, y: Tensor | None = None) -> Tensor:
        args = (self.model, x, rnd) if y is None else (self.model, x, rnd, y)
        return check_loss(self.objective(*args))


def check_loss(loss, who: str = "the objective") -> Tensor:
    """`loss` when it is a 0-dim float tensor with a gradient (shape and flags only: no host
    synchronisation), else an error naming what `who` returned."""
    if not torch.is_tensor(loss) or loss.ndim != 0 or not loss.is_floating_point():
        got = f"a tensor of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else repr(loss)
        raise TypeError(f"{who} must return the loss as a 0-dim float tensor, got {got}")
    if not loss.requires_grad:
        raise ValueError(
            f"{who} returned a loss without a gradient: it does not depend on the model's "
            "parameters (computed under no_grad, or detached)"
        )
    return loss


@dataclass(frozen=True)
class Player:
    """One player's share of a round of alternating updates (`Trainer(players=...)`).

    Args:
        steps: optimizer steps this player takes per round (per Trainer step), each on a fresh
            batch and fresh noise; e.g. n_critic = 5 for the discriminator of a WGAN.
        lr, betas, weight_decay: this player's AdamW settings; None takes the Trainer's.
    """

    steps: int = 1
    lr: float | None = None
    betas: tuple[float, float] | None = None
    weight_decay: float | None = None

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        if self.lr is not None:
            check_finite_number("lr", self.lr, positive=True)
        if self.weight_decay is not None:
            check_finite_number("weight_decay", self.weight_decay, nonnegative=True)
        if self.betas is not None:
            _check_betas(self.betas)


def _check_betas(betas: object) -> None:
    ok = isinstance(betas, (tuple, list)) and len(betas) == 2
    try:
        ok = ok and all(0 <= check_finite_number("betas", b) < 1 for b in betas)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")


def adversarial_loss() -> Objective:
    """The objective of alternating updates (`Trainer(players=...)`): (model, x, rnd, player)
    -> model.player_loss(player, x, rnd.generator), e.g. a GAN's discriminator or generator
    loss on the batch x (B, *D)."""

    def objective(model: nn.Module, x: Tensor, rnd: StepRandom, player: str) -> Tensor:
        return model.player_loss(player, x, generator=rnd.generator)  # type: ignore[operator]

    return objective


def _check_players(
    players: Mapping[str, Player] | None, model: nn.Module, labels: Tensor | None, world: int
) -> dict[str, Player] | None:
    """The players option, checked against the model: one Player per player it names."""
    if players is None:
        return None
    if not isinstance(players, Mapping) or not players:
        raise TypeError(f"players must be a non-empty dict of name -> Player, got {players!r}")
    for name, player in players.items():
        if not isinstance(player, Player):
            raise TypeError(f"players[{name!r}] must be a Player, got {player!r}")
    names = getattr(model, "players", None)
    if names is None or not callable(getattr(model, "player_parameters", None)):
        raise TypeError(
            "players= needs a model with `players` and `player_parameters(name)` (e.g. a GAN), "
            f"got {type(model).__name__}"
        )
    if set(players) != set(names):
        raise ValueError(
            f"players must name each of the model's players {tuple(names)} once, "
            f"got {tuple(players)}"
        )
    if labels is not None:
        raise ValueError("players= (alternating updates) takes no labels; got labels")
    if world > 1:
        raise ValueError(
            f"players= (alternating updates) runs on one process, got {world} (torchrun); "
            "train it on one process, or use the simultaneous step (players=None) under DDP"
        )
    return dict(players)


def held_out_loss(
    objective: Objective,
    x: Tensor,
    *,
    seed: int = 12345,
    batch: int = 1024,
    labels: Tensor | None = None,
) -> Callable[[nn.Module, int], dict]:
    """An eval_fn for Trainer: the objective on held-out data (and their labels, if given) with
    fixed noise, so successive evaluations differ only through the model."""
    if labels is not None:
        _check_labels(labels, x)

    @torch.no_grad()
    def evaluate(model: nn.Module, step: int) -> dict:
        device = next(model.parameters()).device
        total = 0.0
        for i, chunk in enumerate(x.split(batch)):
            rnd = StepRandom(seed, i, 0, 1, len(chunk), device)
            args: tuple = (model, chunk.to(device), rnd)
            if labels is not None:
                args += (labels[i * batch : i * batch + len(chunk)].to(device),)
            total += float(objective(*args)) * len(chunk)
        return {"test_loss": total / len(x)}

    return evaluate


def _check_labels(labels: Tensor, data: Tensor) -> None:
    # class labels (N,), or one row of token ids (N, L) per example for a text-conditional model
    if (
        not torch.is_tensor(labels)
        or labels.ndim not in (1, 2)
        or labels.shape[0] != data.shape[0]
        or labels.is_floating_point()
        or labels.dtype == torch.bool
    ):
        got = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(
            f"labels must be an integer tensor of shape ({data.shape[0]},) matching data "
            f"(or ({data.shape[0]}, L) token ids), got {got}"
        )


def _check_data(data: Tensor) -> None:
    if not torch.is_tensor(data):
        raise TypeError(f"data must be a torch.Tensor of shape (N, *D), got {type(data).__name__}")
    if not data.is_floating_point():
        raise TypeError(f"data must be a floating-point tensor, got dtype {data.dtype}")
    if data.ndim < 2:
        raise ValueError(
            f"data must have shape (N, *D) with at least one dim per example, got shape "
            f"{tuple(data.shape)}; reshape N scalars to (N, 1)"
        )
    if data.shape[0] == 0:
        raise ValueError(f"data must hold at least one example, got shape {tuple(data.shape)}")


def _check_grad_clip(grad_clip: float | None) -> float | None:
    if grad_clip is None:
        return None
    try:
        return check_finite_number("grad_clip", grad_clip, positive=True)
    except (TypeError, ValueError):
        raise ValueError(
            f"grad_clip must be a finite number > 0 or None, got {grad_clip!r}"
        ) from None


def _check_ema_decay(ema_decay: float | None) -> None:
    if ema_decay is None:
        return
    try:
        ok = check_finite_number("ema_decay", ema_decay, nonnegative=True) < 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"ema_decay must be None or a number in [0, 1), got {ema_decay!r}")


def _check_run_dir(run_dir: Path) -> None:
    """Raise ValueError unless run_dir is (or can be made) a folder this process can write to."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir(exist_ok=True) says so only when the name is not a folder
        raise ValueError(f"run_dir {run_dir} is not a folder: a file of that name exists") from None
    except OSError as e:
        raise ValueError(f"run_dir {run_dir} cannot be created: {e}") from e
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(
            f"run_dir {run_dir} is not writable: no write permission for this user; "
            "pick another folder or change its permissions"
        )


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# How long a process leaving the group waits for the others (`leave_distributed`), in seconds.
LEAVE_TIMEOUT_S = 120.0


def init_distributed(device: str) -> tuple[int, int]:
    """Join the torchrun process group if launched by torchrun (WORLD_SIZE > 1), once per
    process; the process leaves it at exit (`leave_distributed`)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
        atexit.register(leave_distributed)
    return _dist_info()


def leave_distributed(timeout_s: float = LEAVE_TIMEOUT_S) -> None:
    """Leave the process group, if one was joined: wait (up to `timeout_s`) until every process
    has come here, then destroy the group. Registered at exit by `init_distributed`, so a process
    that runs several commands joins and leaves once. Without it, a process that exits first
    closes its connections while gloo's threads in another still read them, and gloo aborts that
    process (SIGABRT after a finished run). A peer that failed, or never comes, only delays the
    leave by the timeout: the group is destroyed all the same."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            # gloo's monitored barrier takes a timeout and names the ranks that did not come
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError as e:
        print(f"sdegen: leaving the process group without the others: {e}", file=sys.stderr)
    dist.destroy_process_group()


class Trainer:
    """Train `model` on the tensor `data` by minimising objective(model, batch, rnd).

    Args:
        model: any nn.Module (a ScoreModel, a density model...).
        objective: (model, x, StepRandom) -> scalar loss.
        data: training examples, shape (N, *D), held in memory.
        batch_size: the global batch (split evenly over processes).
        lr, weight_decay, betas: AdamW.
        warmup: steps of linear learning-rate warm-up from 0.
        grad_clip: max global gradient norm (None: no clipping).
        ema_decay: decay of the EMA of the weights (None: no EMA).
        seed: the run seed (batches, noise, dropout).
        device: "cpu", "cuda", ...
        run_dir: folder for checkpoints and metrics.jsonl (None: keep nothing); made if missing,
            and refused at construction when it cannot be made or written.
        ckpt_every, log_every: in steps (ckpt_every 0: only the final checkpoint).
        eval_fn: (model_or_ema, step) -> dict of numbers, run every `eval_every` steps on rank 0
            (0: never).
        config: JSON-able description of the run, stored in each checkpoint.
        progress: show progress on rank 0 (a bar on a terminal, else a line every 10 s).
        labels: class labels of `data`, int64 of shape (N,); given, each batch's labels reach
            the objective as a fourth argument (conditional models, classifiers).
        players: None (one optimizer step on the objective per step), or alternating updates:
            {name: Player} naming each of `model.players` once, in update order. The model
            gives each player's parameters (`model.player_parameters(name)`, disjoint) and the
            objective each player's loss, objective(model, x, rnd, name) (`adversarial_loss()`
            for a GAN). One AdamW holds one parameter group per player with its own lr, betas
            and weight decay (so one checkpoint holds both players' Adam states); a step runs
            each player's `steps` updates in turn, each clipping and stepping that player's
            parameters only. One process only (DDP is refused), no labels.

    After each optimizer step the Trainer calls `model.after_step(player)` if the model has it
    (player None for a simultaneous step): a weight-clipped WGAN clips its critic there.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        data: Tensor,
        *,
        batch_size: int = 128,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: int = 0,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        seed: int = 0,
        device: str | torch.device = "cpu",
        run_dir: str | Path | None = None,
        ckpt_every: int = 1000,
        log_every: int = 10,
        eval_fn: Callable[[nn.Module, int], dict] | None = None,
        eval_every: int = 0,
        config: dict | None = None,
        progress: bool = True,
        labels: Tensor | None = None,
        players: Mapping[str, Player] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(objective):
            raise TypeError(
                f"objective must be callable (model, x, rnd) -> loss, got {objective!r}"
            )
        device = resolve_device(device)
        self.rank, self.world = init_distributed(str(device))
        _check_data(data)
        if labels is not None:
            _check_labels(labels, data)
        self.labels = labels
        self.players = _check_players(players, model, labels, self.world)
        check_int("batch_size", batch_size, 1)
        if batch_size % self.world:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the number of processes {self.world}"
            )
        if data.shape[0] < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {data.shape[0]} examples")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("training data hold NaN or inf")
        self.lr = check_finite_number("lr", lr, positive=True)
        check_int("warmup", warmup, 0)
        grad_clip = _check_grad_clip(grad_clip)
        _check_ema_decay(ema_decay)
        check_int("seed", seed, -(2**63), 2**63 - 1)  # torch generators take int64 seeds
        check_int("log_every", log_every, 1)
        check_int("ckpt_every", ckpt_every, 0)
        check_int("eval_every", eval_every, 0)
        if eval_fn is not None and not callable(eval_fn):
            raise TypeError(f"eval_fn must be callable (model, step) -> dict, got {eval_fn!r}")
        if eval_every and eval_fn is None:
            raise ValueError(
                f"eval_every={eval_every} needs eval_fn, the evaluation to run (e.g. "
                "sdegen.training.held_out_loss(objective, x_val))"
            )
        if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
            raise TypeError(f"run_dir must be a path (str or Path) or None, got {run_dir!r}")
        if config is not None:
            try:  # it is written beside every checkpoint: find out now, not at the first one
                json.dumps(config)
            except (TypeError, ValueError) as e:
                raise TypeError(f"config must be a dict that JSON can write: {e}") from None
        # Only rank 0 writes; find out now, not at the first checkpoint an hour in.
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if self.run_dir is not None and self.rank == 0:
            _check_run_dir(self.run_dir)
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.objective, self.data, self.batch_size, self.seed = objective, data, batch_size, seed
        self.warmup, self.grad_clip = warmup, grad_clip
        self.ckpt_every, self.log_every = ckpt_every, log_every
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.config, self.progress = config or {}, check_bool("progress", progress)
        if self.players is None:
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay
            )
        else:
            self.optimizer = torch.optim.AdamW(
                _player_groups(model, self.players, lr, betas, weight_decay),
                lr=lr,
                betas=betas,
                weight_decay=weight_decay,
            )
            # the groups' own learning rates, which warm-up scales
            self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.ema = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay))
            if ema_decay is not None
            else None
        )
        loss_module = _ObjectiveModule(model, objective)
        self.net = (
            nn.parallel.DistributedDataParallel(loss_module) if self.world > 1 else loss_module
        )
        self.sampler: DistributedSampler = DistributedSampler(
            TensorDataset(data),
            num_replicas=self.world,
            rank=self.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.steps_per_epoch = len(self.sampler) // (batch_size // self.world)
        self.step = 0
        # the epoch's permutation of the data, drawn at the first step of each epoch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    # ---- state -----------------------------------------------------------------------------

    def resume(self) -> bool:
        """Load the run folder's latest checkpoint, if any; True if one was loaded."""
        if self.run_dir is None:
            return False
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        meta = load_checkpoint(path, self.model, self.optimizer, self.ema)
        self.step = int(meta["step"])
        self._truncate_log()
        return True

    def save(self) -> None:
        if self.run_dir is not None and self.rank == 0:
            save_checkpoint(
                self.run_dir,
                self.step,
                self.model,
                self.optimizer,
                self.ema,
                extra={"config": self.config, "world": self.world},
            )

    @property
    def eval_model(self) -> nn.Module:
        """The EMA weights if kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # ---- loop ------------------------------------------------------------------------------

    def _batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._order, self._epoch = torch.tensor(list(self.sampler)), epoch
        local = self.batch_size // self.world
        idx = self._order[k * local : (k + 1) * local]
        y = self.labels[idx].to(self.device) if self.labels is not None else None
        return self.data[idx].to(self.device), y

    def _lr(self, step: int) -> float:
        return self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr

    def train_step(self) -> dict:
        """One optimisation step (with players: one round of alternating updates); returns its
        metrics (loss, lr, grad_norm; with players also loss_NAME and grad_norm_NAME: the
        player's mean loss over its updates and its last gradient norm)."""
        if self.players is not None:
            return self._alternating_step()
        step = self.step
        torch.manual_seed(_step_seed(self.seed, step, stream=10_000 + self.rank))  # dropout
        rnd = StepRandom(self.seed, step, self.rank, self.world, self.batch_size, self.device)
        lr = self._lr(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        x, y = self._batch(step)
        loss = self.net(x, rnd, y)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"loss is {float(loss.detach())} at step {step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        self.optimizer.step()
        self._after_step(None)
        self._update_ema()
        self.step += 1
        loss_value = float(loss.detach())
        if self.world > 1:  # the global mean loss, so every rank logs the same curve
            t = torch.tensor([loss_value], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            loss_value = float(t) / self.world
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    def _after_step(self, player: str | None) -> None:
        hook = getattr(self.model, "after_step", None)
        if callable(hook):
            hook(player)

    def _update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update_parameters(self.model)
            # Buffers (batch-norm statistics, ActNorm's init flag) are state, not weights:
            # the EMA copy takes the model's.
            for b_ema, b in zip(self.ema.module.buffers(), self.model.buffers()):
                b_ema.copy_(b)

    def _alternating_step(self) -> dict:
        """One round: each player in turn takes its `steps` updates on its own loss. Update u of
        step s (counted over the round) draws batch, noise and dropout from s * U + u, U the
        updates per round."""
        assert self.players is not None
        step, rounds = self.step, sum(p.steps for p in self.players.values())
        scale = self._lr(step) / self.lr
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * scale
        clip = self.grad_clip if self.grad_clip is not None else math.inf
        self.model.train()
        metrics: dict = {"step": step + 1, "loss": 0.0, "lr": self._lr(step), "grad_norm": 0.0}
        u = 0
        for name, player in self.players.items():
            params = self._player_params(name)
            total = 0.0
            for _ in range(player.steps):
                index = step * rounds + u
                u += 1
                torch.manual_seed(_step_seed(self.seed, index, stream=10_000 + self.rank))
                rnd = StepRandom(
                    self.seed, index, self.rank, self.world, self.batch_size, self.device
                )
                x, _ = self._batch(index)
                loss = check_loss(self.objective(self.model, x, rnd, name), f"the {name} loss")
                if not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"{name} loss is {float(loss.detach())} at step {step}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                # only this player's parameters get gradients, so AdamW steps only them
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                for p, g in zip(params, grads):
                    p.grad = g
                norm = float(nn.utils.clip_grad_norm_(params, clip))
                self.optimizer.step()
                self._after_step(name)
                total += float(loss.detach())
            metrics[f"loss_{name}"] = total / player.steps
            metrics[f"grad_norm_{name}"] = norm
            metrics["loss"] += total / player.steps
            metrics["grad_norm"] = max(metrics["grad_norm"], norm)
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        self.step += 1
        return metrics

    def _player_params(self, name: str) -> list[nn.Parameter]:
        assert self.players is not None
        return self.optimizer.param_groups[list(self.players).index(name)]["params"]

    def fit(self, steps: int) -> list[dict]:
        """Train until `steps` total steps (an int >= 0); returns the metrics of the steps run
        here. Progress (rank 0): a bar on a terminal, else a plain line every 10 s."""
        check_int("steps", steps, 0)
        history = []
        bar = None
        if self.progress and self.rank == 0:
            bar = Progress(steps, "train", initial=self.step)
        start = time.perf_counter()
        while self.step < steps:
            m = self.train_step()
            m["seconds"] = time.perf_counter() - start
            history.append(m)
            if bar is not None:
                bar.update(1, postfix=f"loss {m['loss']:.4f}")
            if self.step % self.log_every == 0 or self.step == steps:
                self._log(m)
            if self.eval_fn is not None and self.eval_every and self.step % self.eval_every == 0:
                self._eval()
            if self.ckpt_every and self.step % self.ckpt_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        if not (history and self.ckpt_every and self.step % self.ckpt_every == 0):
            self.save()  # the end state, unless the loop just saved it
        return history

    def _eval(self) -> None:
        if self.rank != 0 or self.eval_fn is None:
            return
        was = self.eval_model.training
        self.eval_model.eval()
        result = self.eval_fn(self.eval_model, self.step)
        self.eval_model.train(was)
        self._log({"step": self.step, "eval": result})

    # ---- metrics log -----------------------------------------------------------------------

    @property
    def log_path(self) -> Path | None:
        return self.run_dir / "metrics.jsonl" if self.run_dir is not None else None

    def _log(self, record: dict) -> None:
        if self.log_path is None or self.rank != 0:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_log(self) -> None:
        # A killed run may have logged steps after its last checkpoint; they are redone.
        if self.log_path is None or self.rank != 0 or not self.log_path.is_file():
            return
        kept = [line for line in self.log_path.read_text().splitlines() if self._keep(line)]
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.log_path)

    def _keep(self, line: str) -> bool:
        # A writer killed mid-line leaves a partial record: drop it, and anything that is not
        # a record of ours, rather than refuse to resume.
        try:
            step = json.loads(line)["step"]
        except (ValueError, TypeError, KeyError):
            return False
        return isinstance(step, int) and not isinstance(step, bool) and step <= self.step
