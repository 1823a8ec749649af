"""2x super-resolution of the 8x8 digits and posterior-mean error on a Gaussian: moment, PiGDM,
DPS and the pseudo-inverse at equal NFE.

Model: the EXACT score of a Gaussian mixture fitted to the digits' train split (one component
per class: the class mean and covariance, plus the dequantization variance (2/17)^2/12 on the
diagonal), not a trained network: training a digits model would take most of the time budget,
and the exact score isolates the guidance methods' own errors. The mixture is not Gaussian, so
no method is exact on it.

Part "digits": each of the first 64 (--images) test images is averaged over 2x2 blocks
(Downsample(2): 8x8 -> 4x4, plus noise of std sigma_y) and restored by sampling p(x | y) with
each method at an NFE budget (dpmpp_2m, seed fixed): PSNR to the ground truth (data range
[-1, 1], so PSNR = 10 log10(4 / MSE)) and the accuracy of the digits CNN
(`sdegen.metrics.digits`) on the restorations, against the true labels. Baselines: the
pseudo-inverse (nearest-neighbour upsampling, no NFE) and the closed-form posterior mean of one
Gaussian fitted to all digits. Ceiling: the CNN's accuracy on the true images. Sized to the
time budget (moment guidance takes 16 VJPs per evaluation, and the mixture's exact score is not
cheap): 64 images, NFE 10 and 20.

Part "gaussian": one Gaussian fitted to all train digits (exact posterior N(m, S) in closed
form); for 4 test images' low-res observations, 200 posterior samples each by every method at
the largest NFE; reported: RMS over pixels and images of (sample mean - exact posterior mean),
with the Monte Carlo floor sqrt(mean diag S / n) that an exact sampler would show.

    python benchmarks/inverse.py            # ~5 minutes on a busy 2-core machine
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness
from sdegen.data import load_digits
from sdegen.metrics.digits import ensure_digits_classifier, load_digits_classifier
from sdegen.models import GaussianMixtureScore, GaussianScore
from sdegen.sde import VPSDE
from sdegen.solvers.inverse import Downsample

# (label, inverse method, inverse_scale)
METHODS = [
    ("moment", "moment", None),
    ("pigdm", "pigdm", None),
    ("dps (zeta 1)", "dps", 1.0),
    ("dps (zeta 3)", "dps", 3.0),
]
SAMPLER = "dpmpp_2m"
DEQUANT_VAR = (2 / 17) ** 2 / 12


def fit_mixture(
    x: torch.Tensor, y: torch.Tensor, sde, event_shape: tuple[int, ...] = (1, 8, 8)
) -> GaussianMixtureScore:
    """One Gaussian per class: class frequencies, means and covariances (+ dequantization), on
    samples of `event_shape` (benchmarks/peers.py takes flat (64,) vectors)."""
    xf = x.reshape(len(x), -1).double()
    eye = torch.eye(xf.shape[1], dtype=torch.float64)
    w, means, covs = [], [], []
    for k in range(10):
        xk = xf[y == k]
        w.append(len(xk))
        means.append(xk.mean(0))
        covs.append(torch.cov(xk.T) + DEQUANT_VAR * eye)
    return GaussianMixtureScore(
        torch.tensor(w, dtype=torch.float64), torch.stack(means), torch.stack(covs), sde,
        event_shape=event_shape,
    )  # fmt: skip


def gaussian_posterior(mu, C, A, y, sigma_y):
    """Mean (B, D) and covariance (D, D) of x | y for x ~ N(mu, C), y = A x + sigma_y n."""
    S = A @ C @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=C.dtype)
    K = C @ A.T @ torch.linalg.inv(S)
    return mu + (y - mu @ A.T) @ K.T, C - K @ A @ C


def dense(op, event) -> torch.Tensor:
    D = math.prod(event)
    return op(torch.eye(D, dtype=torch.float64).reshape(D, *event)).reshape(D, -1).T


def psnr(x: torch.Tensor, truth: torch.Tensor) -> float:
    mse = float((x.double() - truth.double()).pow(2).mean())
    return 10 * math.log10(4 / mse)


def observe(op, x, sigma_y: float, seed: int) -> torch.Tensor:
    y = op(x.double())
    g = torch.Generator().manual_seed(seed + 1000)
    return y + sigma_y * torch.randn(y.shape, generator=g, dtype=y.dtype)


def digits_part(args, clf) -> dict:
    train, test = load_digits("train"), load_digits("test")
    sde = VPSDE()
    model = fit_mixture(train.x, train.y, sde)
    op = Downsample(2)
    truth, labels = test.x[: args.images].double(), test.y[: args.images]
    flat = train.x.reshape(len(train.x), -1).double()
    mu, C = flat.mean(0), torch.cov(flat.T) + DEQUANT_VAR * torch.eye(64, dtype=torch.float64)
    A = dense(op, (1, 8, 8))

    def accuracy(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((clf(x.float()).argmax(1) == labels).double().mean())

    def score(x: torch.Tensor) -> dict:
        return {"psnr": psnr(x, truth), "accuracy": accuracy(x)}

    records, examples = [], {"truth": truth[:10].flatten(1).tolist()}
    for sigma_y in args.sigma_y:
        y = observe(op, truth, sigma_y, args.seed)
        base = {"sigma_y": sigma_y, "nfe": 0, "nfe_backward": 0, "seconds": 0.0}
        up = op.pinv(y)
        records.append({"method": "pseudo-inverse", **base, **score(up)})
        m, _ = gaussian_posterior(mu, C, A, y.flatten(1), sigma_y)
        m = m.reshape(truth.shape)
        records.append({"method": "Gaussian posterior mean", **base, **score(m)})
        if sigma_y == args.sigma_y[0]:
            examples["pseudo-inverse"] = up[:10].flatten(1).tolist()
            examples["Gaussian posterior mean"] = m[:10].flatten(1).tolist()
        for nfe in args.nfe:
            for label, how, scale in METHODS:
                start = time.perf_counter()
                r = sdegen.sample(
                    model, sde, tuple(truth.shape), method=SAMPLER, nfe=nfe, operator=op,
                    y_obs=y, sigma_y=sigma_y, inverse=how, inverse_scale=scale,
                    generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64,
                )  # fmt: skip
                rec = {
                    "method": label, "sigma_y": sigma_y, "nfe": r.nfe,
                    "nfe_backward": r.nfe_backward,
                    "seconds": round(time.perf_counter() - start, 2), **score(r.x),
                }  # fmt: skip
                records.append(rec)
                print(rec, flush=True)
                if sigma_y == args.sigma_y[0] and nfe == args.nfe[-1]:
                    examples[label] = r.x[:10].flatten(1).tolist()
    return {
        "records": records,
        "examples": examples,
        "ceiling_accuracy": accuracy(truth),
        "images": len(truth),
    }


def gaussian_part(args) -> dict:
    train, test = load_digits("train"), load_digits("test")
    sde = VPSDE()
    flat = train.x.reshape(len(train.x), -1).double()
    mu, C = flat.mean(0), torch.cov(flat.T) + DEQUANT_VAR * torch.eye(64, dtype=torch.float64)
    model = GaussianScore(mu, C, sde, event_shape=(1, 8, 8))
    op, k, n = Downsample(2), args.post_images, args.n_post
    A = dense(op, (1, 8, 8))
    records = []
    for sigma_y in args.sigma_y:
        y = observe(op, test.x[:k], sigma_y, args.seed)
        m, S = gaussian_posterior(mu, C, A, y.flatten(1), sigma_y)
        floor = math.sqrt(float(S.diag().clamp_min(0).mean()) / n)
        y_rep = y.repeat_interleave(n, 0)
        for nfe in args.nfe[-1:]:
            for label, how, scale in METHODS:
                r = sdegen.sample(
                    model, sde, (k * n, 1, 8, 8), method=SAMPLER, nfe=nfe, operator=op,
                    y_obs=y_rep, sigma_y=sigma_y, inverse=how, inverse_scale=scale,
                    generator=torch.Generator().manual_seed(args.seed), dtype=torch.float64,
                )  # fmt: skip
                means = r.x.reshape(k, n, 64).mean(1)
                rms = float((means - m).pow(2).mean().sqrt())
                rec = {"method": label, "sigma_y": sigma_y, "nfe": r.nfe, "rms_error": rms,
                       "mc_floor": floor, "nfe_backward": r.nfe_backward}  # fmt: skip
                records.append(rec)
                print(rec, flush=True)
        pinv_err = float((op.pinv(y).flatten(1) - m).pow(2).mean().sqrt())
        records.append({"method": "pseudo-inverse", "sigma_y": sigma_y, "nfe": 0,
                        "rms_error": pinv_err, "mc_floor": 0.0, "nfe_backward": 0})  # fmt: skip
    return {"records": records, "images": k, "samples_per_image": n}


def markdown(result: dict) -> str:
    meta, dig, gau = result["meta"], result["digits"], result["gaussian"]
    lines = [
        "# Inverse problems: 2x super-resolution of the 8x8 digits",
        "",
        f"Exact score of a 10-component Gaussian mixture fitted to the digits' train split (no "
        f"trained network); VP SDE; sampler {SAMPLER} at the NFE shown (network evaluations, "
        f"counted; VJPs in nfe_bwd); seed {meta['seed']}; the first {dig['images']} test "
        "images, one restoration each; "
        f"wall time {meta['seconds']:.0f} s on one thread of a shared 2-core machine.",
        "",
        f"Classifier accuracy on the true test images (ceiling): {dig['ceiling_accuracy']:.3f}. "
        "PSNR with data range [-1, 1]. Posterior samples, not posterior means: an exact sampler's "
        "MSE is twice the posterior mean's. Column s: wall seconds of the call, on a machine "
        "shared with other jobs (so noisy).",
        "",
        "| sigma_y | method | NFE | nfe_bwd | PSNR (dB) | accuracy | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in dig["records"]:
        lines.append(
            f"| {r['sigma_y']:g} | {r['method']} | {r['nfe']} | {r['nfe_backward']} | "
            f"{r['psnr']:.2f} | {r['accuracy']:.3f} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        f"## Posterior-mean error on the Gaussian fitted to the digits "
        f"({gau['images']} observations x {gau['samples_per_image']} samples, NFE "
        f"{meta['nfe'][-1]})",
        "",
        "RMS over pixels and observations of (sample mean - exact posterior mean); the Monte "
        "Carlo floor is what an exact sampler would show with this many samples.",
        "",
        "| sigma_y | method | NFE | nfe_bwd | RMS error | MC floor |",
        "|---|---|---|---|---|---|",
    ]
    for r in gau["records"]:
        lines.append(
            f"| {r['sigma_y']:g} | {r['method']} | {r['nfe']} | {r['nfe_backward']} | "
            f"{r['rms_error']:.4f} | {r['mc_floor']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def plot_examples(examples: dict, path: Path) -> None:
    plt = harness.pyplot()
    rows = list(examples)
    fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.1 * len(rows)), squeeze=False)
    for i, name in enumerate(rows):
        for j, img in enumerate(examples[name]):
            ax = axes[i][j]
            ax.imshow(torch.tensor(img).reshape(8, 8).numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_psnr(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sigma_y = records[0]["sigma_y"]
    rows = [r for r in records if r["sigma_y"] == sigma_y]
    for label in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["nfe"], r["psnr"]) for r in rows if r["method"] == label)
        if pts[0][0] == 0:
            ax.axhline(pts[0][1], ls="--", lw=1, label=label, color="gray" if "pseudo" in label
                       else "black")  # fmt: skip
        else:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set(xlabel="NFE", ylabel="PSNR (dB)", title=f"2x super-resolution, sigma_y = {sigma_y:g}")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20], help="NFE budgets")
    p.add_argument("--sigma-y", type=float, nargs="+", default=[0.0, 0.1], help="noise std")
    p.add_argument("--images", type=int, default=64, help="test images restored (<= 297)")
    p.add_argument("--post-images", type=int, default=4, help="observations, Gaussian part")
    p.add_argument("--n-post", type=int, default=200, help="posterior samples per observation")
    p.add_argument("--classifier", type=Path, default=None, help="digits CNN weights")
    args = harness.parse(
        p, argv, out=Path(__file__).parent / "results" / "inverse", seed=0, threads=1
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        clf = load_digits_classifier(ensure_digits_classifier(args.classifier))
        result = {"digits": digits_part(args, clf), "gaussian": gaussian_part(args)}
        result["meta"] = {
            "seed": args.seed, "nfe": args.nfe, "sigma_y": args.sigma_y,
            "n_post": args.n_post, "images": args.images, "post_images": args.post_images,
            "sampler": SAMPLER, "torch": torch.__version__,
            "seconds": time.perf_counter() - start, "model": "exact Gaussian-mixture fit",
        }  # fmt: skip
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result),
        {
            "examples.png": lambda path: plot_examples(result["digits"]["examples"], path),
            "psnr_vs_nfe.png": lambda path: plot_psnr(result["digits"]["records"], path),
        },
    )
    return result


if __name__ == "__main__":
    main()
