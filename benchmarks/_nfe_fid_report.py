"""The report of benchmarks/nfe_fid.py: its markdown tables and its PNGs (the metric against
counted NFE, one panel per SDE), all from results.json."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from sdegen.assembly import harness
from sdegen.solvers import METHODS


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _grid(recs: list[dict], nfes: list[int], key: str, second: str | None = None) -> list[str]:
    """Method x NFE-budget table of `key` (and `second` after a slash); the best cell of each
    column in bold; the counted NFE in parentheses where it differs from the budget."""
    cols = nfes + [None]
    ok = [r for r in recs if "skipped" not in r]
    best = {b: min((r[key] for r in ok if r["nfe_budget"] == b), default=None) for b in cols}
    lines = [
        "| sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive |",
        "|---|" + "---|" * len(cols),
    ]
    for method in dict.fromkeys(r["method"] for r in recs):
        row = []
        for b in cols:
            r = next((r for r in recs if r["method"] == method and r["nfe_budget"] == b), None)
            if r is None:
                row.append("")
            elif "skipped" in r:
                row.append("-")
            else:
                cell = _fmt(r[key]) + (f" / {_fmt(r[second])}" if second else "")
                if r[key] == best[b]:
                    cell = f"**{cell}**"
                if r["nfe"] != b:
                    nfe = r["nfe"]
                    cell += f" ({nfe:.0f})" if isinstance(nfe, float) else f" ({nfe})"
                row.append(cell)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _best_lines(part: dict, nfes: list[int]) -> list[str]:
    lines = [
        "| SDE | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive | floor (test) |",
        "|---|" + "---|" * (len(nfes) + 2),
    ]
    floor = part["noise_floor"]
    for sde_name in part["training"]:
        row = []
        for b in nfes + [None]:
            ok = [
                r
                for r in part["records"]
                if r["sde"] == sde_name and r["nfe_budget"] == b and "skipped" not in r
            ]
            r = min(ok, key=lambda r: r["fid_test"], default=None)
            row.append("" if r is None else f"{r['method']} {_fmt(r['fid_test'])} ({r['nfe']})")
        row.append(f"{floor['fid_test']:.2f} +- {floor['fid_test_std']:.2f}")
        lines.append(f"| {sde_name} | " + " | ".join(row) + " |")
    return lines


def _run_line(meta: dict) -> str:
    line = (
        f"sdegen {meta['sdegen']}, torch {meta['torch']}, {meta['threads']} torch thread(s), "
        f"{meta['machine']}, {meta['date']}; {meta['seconds']:.0f} s in all; NFE budgets "
        f"{', '.join(map(str, meta['nfe']))} and the adaptive methods."
    )
    if meta["excluded"]:
        line += (
            f" Not run: {', '.join(meta['excluded'])} (slow and unstable at few steps, see the "
            "README; `--methods` runs them)."
        )
    return line


def markdown(result: dict) -> str:
    lines = [
        "# Sample quality against counted NFE: analytic mixtures and digits score models",
        "",
        "Every sampler on its default grid and options (adaptive: default rtol/atol); a number "
        "in parentheses is the NFE counted when it differs from the budget (denoising step "
        "included; adaptive: mean over seeds); '-' is a budget below one step of the method; "
        "the best cell of each column is in bold. Nothing was tuned on the digits test split.",
    ]
    if "analytic" in result:
        part = result["analytic"]
        meta, nfes = part["meta"], part["meta"]["nfe"]
        lines += [
            "",
            "## (a) Analytic Gaussian mixtures, exact score",
            "",
            _run_line(meta),
            "",
            f"Cells: Frechet distance (FD) of the samples' Gaussian fit to the true mixture "
            f"moments, mean over sampler seeds {meta['seed']}..{meta['seed'] + meta['seeds'] - 1}"
            f"; sliced W2 and per-cell std in the JSON. Noise floor: the FD of "
            f"{meta['floor_sets']} independent true sets of the same size (mean +- std); cells "
            "inside it are not distinguishable from exact sampling.",
        ]
        for key, floor in part["noise_floor"].items():
            mix, sde_name = key.split("/")
            recs = [r for r in part["records"] if r["mixture"] == mix and r["sde"] == sde_name]
            lines += [
                "",
                f"### {mix} / {sde_name}: n = {floor['n']}, floor FD {floor['frechet']:.2e} +- "
                f"{floor['frechet_std']:.1e}",
                "",
                *_grid(recs, nfes, "frechet"),
            ]
    if "digits" in result:
        part = result["digits"]
        meta, nfes = part["meta"], part["meta"]["nfe"]
        floor = part["noise_floor"]
        cfg = next(iter(part["training"].values()))["config"]
        train = part["training"]
        lines += [
            "",
            "## (b) Score models trained on the 8x8 digits",
            "",
            _run_line(meta),
            "",
            f"One U-Net per SDE ({next(iter(train.values()))['parameters']} parameters, "
            f"{cfg['network_params']}), {cfg['parametrization']}-parametrised, "
            f"{cfg['steps']} steps of batch {cfg['batch_size']}, lr {cfg['lr']}, EMA "
            f"{cfg['ema_decay']}, seed {cfg['seed']}, trained on the train split (1500 images); "
            "training seconds: "
            + ", ".join(f"{s} {t['train_seconds']:.0f}" for s, t in train.items())
            + f". Each cell: n = {floor['n']} samples from seed {meta['seed']} (the same prior "
            "noise in every cell). Cell = digits-FID against the test split "
            f"({floor['n_test']} images) / against {floor['n_train_ref']} train images (the "
            "model was trained on them). Noise floor, disjoint real sets of the same sizes over "
            f"{floor['sets']} random train splits: {floor['n']} train images vs the test split "
            f"**{floor['fid_test']:.2f} +- {floor['fid_test_std']:.2f}**; vs the other "
            f"{floor['n_train_ref']} train images **{floor['fid_train']:.2f} +- "
            f"{floor['fid_train_std']:.2f}**. FID is biased upward at small n: compare only at "
            "this n. One sample set per cell: differences below the floor's spread are not "
            "significant (the shared prior noise makes the comparison paired, which helps only "
            "partly).",
            "",
            "### Best sampler per NFE (test FID, counted NFE)",
            "",
            *_best_lines(part, nfes),
        ]
        for sde_name in train:
            recs = [r for r in part["records"] if r["sde"] == sde_name]
            lines += [
                "",
                f"### {sde_name}: FID test / train",
                "",
                *_grid(recs, nfes, "fid_test", "fid_train"),
            ]
    return "\n".join(lines) + "\n"


def plot_panels(panels: list[tuple[str, list[dict], str, float]], ylabel: str, path: Path) -> None:
    """One panel per (title, records, metric key, floor): the metric against counted NFE (log
    x), one curve per sampler (SDE samplers dashed), adaptive methods as single squares, the
    floor dotted. The y axis stops at 30x the panel's median: blown-up cells are in the table."""
    plt = harness.pyplot()
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (title, recs, key, floor) in zip(axes[0], panels):
        ok = [r for r in recs if "skipped" not in r and math.isfinite(r[key])]
        for i, method in enumerate(dict.fromkeys(r["method"] for r in recs)):
            pts = sorted((r["nfe"], r[key]) for r in ok if r["method"] == method)
            if pts:
                line = "--" if METHODS[method].kind == "sde" else "-"
                style = "s" if len(pts) == 1 else "." + line
                ax.plot(*zip(*pts), style, color=cmap(i % 20), label=method)
        ax.axhline(floor, color="k", ls=":", label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=ylabel, title=title)
        budgets = sorted({r["nfe_budget"] for r in recs if r["nfe_budget"] is not None})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ok:
            values = sorted(r[key] for r in ok)
            top = min(values[-1] * 1.5, 30 * values[len(values) // 2])
            ax.set_ylim(min(values[0], floor) / 1.5, top)
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figures(result: dict) -> dict[str, Callable[[Path], None]]:
    """PNG name -> its drawing: one per mixture of part (a), test and train FID of part (b)."""
    out = {}
    if "analytic" in result:
        part = result["analytic"]
        for mix in dict.fromkeys(r["mixture"] for r in part["records"]):
            panels = [
                (
                    f"{mix} / {key.split('/')[1]}",
                    [
                        r
                        for r in part["records"]
                        if r["mixture"] == mix and r["sde"] == key.split("/")[1]
                    ],
                    "frechet",
                    floor["frechet"],
                )
                for key, floor in part["noise_floor"].items()
                if key.startswith(mix + "/")
            ]
            out[f"analytic_{mix}.png"] = _drawing(panels, "FD to the true moments")
    if "digits" in result:
        part = result["digits"]
        for key, where in (("fid_test", "test"), ("fid_train", "train")):
            panels = [
                (
                    sde_name,
                    [r for r in part["records"] if r["sde"] == sde_name],
                    key,
                    part["noise_floor"][key],
                )
                for sde_name in part["training"]
            ]
            out[f"digits_{key}.png"] = _drawing(panels, f"digits FID vs {where}")
    return out


def _drawing(panels: list, ylabel: str) -> Callable[[Path], None]:
    return lambda path: plot_panels(panels, ylabel, path)
