"""The SAE trainer's optimisers: Adam (Gao et al. 2024's recipe: warm-up, then linear decay) and
"signum", sign descent (Bernstein et al. 2018) made schedule-free (Defazio et al. 2024, "The Road Less
Scheduled"), the recipe EleutherAI's sparsify trains with by default. On real UniRep-1900 states
signum reaches Adam's held-out FVU in a fraction of the tokens (bench/time_to_quality.py).

Schedule-free keeps two sequences: the parameters hold y (where gradients are taken) and the
optimiser state holds z; the weights to evaluate and save are their average x = y + (1 - 1/beta)
(z - y). :func:`averaged_copy` builds x out of place, so a checkpoint never moves the training
parameters (an in-place eval()/train() round trip is not exact in floating point and would break
the bit-for-bit resume)."""
from __future__ import annotations

import copy
import math

import torch

OPTIMIZERS = ("adam", "signum")
SIGNUM_MOMENTUM = 0.95  # sparsify's


def schedule_free(optimizer: str) -> bool:
    """Whether the named optimiser is schedule-free: a constant rate (its averaging does what a decay
    would), and the decoder rows held at unit norm through both of its sequences
    (:meth:`ScheduleFreeSignum.unit_rows_`: rescaling y alone would break the averaging)."""
    return optimizer == "signum"


def default_lr(optimizer: str, n_latents: int) -> float:
    """The learning rate scaled with dictionary size (Gao et al. 2024, sec. 2.4): 2e-4 at 2^14 latents
    for Adam; 2.5e-3 for sign descent at 2^14 latents and above, never more.

    Sign descent: sparsify uses 5e-3 on raw activations; esmsae's default input normalisation (scalar:
    unit mean squared norm) makes every bias step relatively larger, and on real UniRep-1900 states
    (bench/time_to_quality.py's data, one run each, 16,384 latents, k 32) 2.5e-3 reached sparsify's
    held-out FVU in 458,752 tokens against 524,288 at 5e-3, while 1e-2 had not after 5 minutes. A sign
    step moves every weight by lr whatever its gradient, so the rate is not scaled up for small
    dictionaries (0.057 at 128 latents killed every latent in tests/test_known_answers.py)."""
    scale = math.sqrt(n_latents / 2**14)
    if schedule_free(optimizer):
        return 2.5e-3 / max(1.0, scale)
    return 2e-4 / scale


class SignSGD(torch.optim.Optimizer):
    """Steepest descent in the L-infinity norm: every parameter moves by lr against its gradient's sign."""

    def __init__(self, params, lr: float):
        if lr <= 0:
            raise ValueError(f"SignSGD: lr must be > 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])


class ScheduleFreeSignum(torch.optim.Optimizer):
    """Schedule-free sign descent (Defazio et al. 2024 around Bernstein et al. 2018's signSGD), fused.

    The same arithmetic as ``schedulefree.ScheduleFreeWrapper(SignSGD(...))`` (Meta's reference
    implementation, which the tests compare against bit for bit) and the same state layout (``z`` per
    parameter; ``k``, ``lr_max``, ``weight_sum`` per group), so a checkpoint of either resumes in the
    other. The wrapper swaps y and z through three XOR passes before and after the inner step and
    allocates ``sign(g)``; here each parameter takes five in-place passes and no temporary:

        y -> x   = lerp(y, z, 1 - 1/beta)        (the average the gradient was not taken at)
        g -> sign(g)                              (in the gradient's own storage)
        z       -= lr * sign(g)
        x       = lerp(x, z, c_k)                 (c_k = w_k / sum w, w = lr_max^2)
        y       = lerp(x, z, 1 - beta)            (the next point where the gradient is taken)

    ``p.grad`` holds sign(g) afterwards (the trainer zeroes gradients before every backward)."""

    def __init__(self, params, lr: float, momentum: float = SIGNUM_MOMENTUM, weight_lr_power: float = 2.0):
        if lr <= 0:
            raise ValueError(f"ScheduleFreeSignum: lr must be > 0, got {lr}")
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"ScheduleFreeSignum: momentum must be in (0, 1), got {momentum}")
        super().__init__(params, {"lr": lr})
        self.momentum, self.weight_lr_power = momentum, weight_lr_power
        self.train_mode = True  # parameters hold y, the point where gradients are taken

    def train(self) -> None:  # the wrapper's interface (averaged_copy reads x out of place instead)
        self.train_mode = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        beta = self.momentum
        for group in self.param_groups:
            lr = group["lr"]
            lr_max = group["lr_max"] = max(lr, group.get("lr_max", 0.0))
            weight = lr_max ** self.weight_lr_power
            weight_sum = group["weight_sum"] = group.get("weight_sum", 0.0) + weight
            c = weight / weight_sum
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "z" not in state:
                    state["z"] = torch.clone(p, memory_format=torch.preserve_format)
                z = state["z"]
                p.lerp_(z, 1 - 1 / beta)
                z.add_(p.grad.sign_(), alpha=-lr)
                p.lerp_(z, c)
                p.lerp_(z, 1 - beta)
            group["k"] = group.get("k", 0) + 1
        return loss


    @torch.no_grad()
    def unit_rows_(self, p: torch.Tensor) -> None:
        """Scale each row of y (the parameter) and of z by one factor per row so that the average x has unit
        rows: x is linear in (y, z), so this is the unit-norm decoder constraint (Gao et al. 2024) applied
        to the point that is evaluated and saved, without breaking the averaging. Without it sign descent
        grows the decoder rows (each step moves every weight by lr, orthogonally to the row as much as
        along it): on the demo's UniRep-1900 store, 4,096 latents, k 64, row norms reached 7.3 after 1,340
        steps while L0 fell from 64 to 34 and the FVU rose from 0.26 to 0.55."""
        z = self.state.get(p, {}).get("z")
        if z is None:
            return
        w = 1 - 1 / self.momentum  # x = y + w (z - y) = (1 - w) y + w z
        yy = torch.linalg.vector_norm(p, dim=1).square_()
        zz = torch.linalg.vector_norm(z, dim=1).square_()
        yz = torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
        xx = (1 - w) ** 2 * yy + 2 * w * (1 - w) * yz + w ** 2 * zz
        scale_F1 = xx.clamp_min(1e-16).rsqrt_().unsqueeze(1)
        p.mul_(scale_F1)
        z.mul_(scale_F1)


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "signum":
        return ScheduleFreeSignum(params, lr=lr)
    if name != "adam":
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    # fused=True: one kernel over each parameter instead of a chain of foreach ops with F x D
    # temporaries; 8x faster Adam at d_in 960 x 16,384 latents on this CPU (same maths)
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


def is_schedule_free(opt: torch.optim.Optimizer) -> bool:
    return hasattr(opt, "train_mode") and hasattr(opt, "momentum")


def averaged_copy(module: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.nn.Module:
    """``module`` itself for Adam; for a schedule-free optimiser a copy holding the averaged weights x
    (what is evaluated and saved), computed without touching the training parameters."""
    if not is_schedule_free(opt):
        return module
    out = copy.deepcopy(module)
    w = 1 - 1 / opt.momentum
    with torch.no_grad():
        for p, q in zip(module.parameters(), out.parameters()):
            z = opt.state.get(p, {}).get("z")
            if z is not None:
                q.copy_(torch.lerp(p, z, w))
    return out
