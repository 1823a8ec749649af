"""A tiny training run for the tests (resume after kill, DDP); run directly or by torchrun."""

import argparse
import time

import torch
from safetensors.torch import save_file

from sdegen import ScoreModel
from sdegen.models import MLP, ring_mixture
from sdegen.sde import VPSDE
from sdegen.training import Trainer, score_matching

p = argparse.ArgumentParser()
p.add_argument("--run-dir", required=True)
p.add_argument("--steps", type=int, default=30)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--resume", action="store_true")
p.add_argument("--dropout", action="store_true")
args = p.parse_args()

torch.set_num_threads(1)
sde = VPSDE()
data = ring_mixture(sde).sample(512, generator=torch.Generator().manual_seed(0))
torch.manual_seed(0)  # identical initial weights in every process
net = MLP(2, hidden=32, depth=2)
if args.dropout:
    inner = MLP(2, hidden=32, depth=2)

    class WithDropout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.drop = inner, torch.nn.Dropout(0.2)

        def forward(self, x, c):
            return self.drop(self.inner(x, c))

    net = WithDropout()
model = ScoreModel(net, sde)
trainer = Trainer(
    model,
    score_matching(),
    data,
    batch_size=args.batch,
    lr=1e-3,
    warmup=5,
    seed=3,
    run_dir=args.run_dir,
    ckpt_every=5,
    log_every=1,
    progress=False,
)
if args.resume:
    trainer.resume()


if args.sleep:  # slow the run down so a test can kill it mid-way
    original = trainer.train_step

    def slow_step():
        out = original()
        time.sleep(args.sleep)
        return out

    trainer.train_step = slow_step
trainer.fit(args.steps)
save_file(
    {k: v.contiguous() for k, v in model.state_dict().items()},
    f"{args.run_dir}/final-rank{trainer.rank}.safetensors",
)
