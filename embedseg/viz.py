"""Figures: instance overlays and grouping comparisons (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from scipy import ndimage

from embedseg.grouping.base import foreground_mask
from embedseg.outputs import atomic_path
from embedseg.structures import Instances


def instance_colors(n: int, seed: int = 0) -> np.ndarray:
    """n distinct-looking colours in [0, 1] (random hues, full saturation), row 0 unused."""
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.random(n + 1), np.full(n + 1, 0.85), np.full(n + 1, 0.95)], 1)
    return matplotlib.colors.hsv_to_rgb(hsv)


def overlay(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 image with each instance tinted in its own colour and outlined."""
    rgb = image.astype(np.float32) / 255.0
    ids = label_map.astype(np.int64)
    colors = instance_colors(int(ids.max()) if ids.size else 0)
    fg = ids > 0
    rgb[fg] = (1 - alpha) * rgb[fg] + alpha * colors[ids[fg]]
    edges = fg & (ndimage.grey_erosion(ids, size=3) != ndimage.grey_dilation(ids, size=3))
    rgb[edges] = colors[ids[edges]] * 0.6
    return (rgb.clip(0, 1) * 255).astype(np.uint8)


def save_overlay(image: np.ndarray, instances: Instances, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        plt.imsave(tmp, overlay(image, instances.to_label_map()))


def plot_grouping_comparison(images: list[np.ndarray], ground_truth: list[Instances],
                             predictions: dict[str, list[Instances]], path: str | Path,
                             titles: dict[str, str] | None = None) -> Path:
    """Grid: one row per image; columns image, ground truth, then every grouper's overlay."""
    names = list(predictions)
    n_rows, n_cols = len(images), 2 + len(names)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols, 2.6 * n_rows), squeeze=False)
    for r, image in enumerate(images):
        panels = [(image, "image"), (overlay(image, ground_truth[r].to_label_map()), f"ground truth ({len(ground_truth[r])})")]
        for name in names:
            pred = predictions[name][r]
            label = (titles or {}).get(name, name)
            panels.append((overlay(image, pred.to_label_map()), f"{label} ({len(pred)})"))
        for c, (panel, title) in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].set_title(title, fontsize=9)
            axes[r, c].axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_ap_vs_time(results: dict[str, dict], path: str | Path, title: str | None = None) -> Path:
    """Scatter of COCO AP (percent) against the median ms per image of grouping, one point per grouper.

    `results` is {grouper: metrics} as score_groupers returns it (AP, group_ms_median,
    group_ms_p90); a bar runs from the median to the p90 time. The time axis is logarithmic,
    since groupers differ by orders of magnitude.
    """
    names = list(results)
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(names))]
    aps = [100 * results[n]["AP"] if np.isfinite(results[n].get("AP", np.nan)) else 0.0 for n in names]
    for name, color, ap in zip(names, colors, aps):
        m = results[name]
        median, p90 = m["group_ms_median"], m["group_ms_p90"]
        ax.errorbar([median], [ap], xerr=[[0.0], [max(p90 - median, 0.0)]], fmt="o", color=color, capsize=3)
        ax.annotate(name, (median, ap), textcoords="offset points", xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("grouping time per image, ms (median, bar to p90)")
    ax.set_ylabel("COCO mask AP (%)")
    ax.set_ylim(0, min(105.0, max(5.0, 1.15 * max(aps, default=0.0))))
    ax.grid(True, which="both", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def margin_radii(embedding: np.ndarray, coord_scale: float) -> np.ndarray:
    """[n_sigma, H, W]: per axis, the distance in pixels at which a kernel with a spatial embedding's
    margin (channels 2 onwards, embedseg.losses.spatial) falls to 0.5: sqrt(log 2 / exp(sigma)) units."""
    return np.sqrt(np.log(2) / np.exp(np.asarray(embedding[2:], dtype=np.float64))) / coord_scale


def plot_spatial_outputs(images: list[np.ndarray], outputs: list[dict], coord_scale: float,
                         path: str | Path) -> Path:
    """What a spatial embedding predicts (embedseg.losses.spatial), one row per image: the image with the
    centre each foreground pixel points at (dots), the seed map, and the learned margin as the radius in
    pixels at which a seed's kernel falls to 0.5 (margin_radii; the mean over the axes of a margin per
    axis), on the foreground. A margin per axis adds its elongation: log2 of the radius along y over the
    radius along x (channels 2 and 3 pair with positions y and x)."""
    per_axis = outputs[0]["embedding"].shape[0] == 4
    columns = 4 if per_axis else 3
    fig, axes = plt.subplots(len(images), columns, figsize=(3 * columns, 3 * len(images)), squeeze=False)
    for row, (image, out) in enumerate(zip(images, outputs)):
        foreground = foreground_mask(out).numpy()
        centres = out["embedding"][:2, foreground] / coord_scale  # (y, x) in pixels
        radii = margin_radii(out["embedding"], coord_scale)
        axes[row, 0].imshow(image)
        axes[row, 0].scatter(centres[1], centres[0], s=0.2, c="yellow", alpha=0.3, linewidths=0)
        axes[row, 0].set_xlim(0, image.shape[1] - 1)
        axes[row, 0].set_ylim(image.shape[0] - 1, 0)
        axes[row, 0].set_title("image, centres pointed at", fontsize=9)
        seeds = axes[row, 1].imshow(out["seediness"], vmin=0, vmax=1, cmap="magma")
        axes[row, 1].set_title("seed map", fontsize=9)
        fig.colorbar(seeds, ax=axes[row, 1], fraction=0.046)
        margins = axes[row, 2].imshow(np.where(foreground, radii.mean(0), np.nan), cmap="viridis")
        axes[row, 2].set_title("margin (kernel 0.5 at, px)", fontsize=9)
        fig.colorbar(margins, ax=axes[row, 2], fraction=0.046)
        if per_axis:
            elongation = np.log2(radii[0] / radii[1])
            # at least +-0.1, so margins that are (nearly) equal show pale instead of noise at full colour
            limit = max(float(np.abs(elongation[foreground]).max(initial=0.0)), 0.1)
            shape = axes[row, 3].imshow(np.where(foreground, elongation, np.nan), cmap="coolwarm",
                                        vmin=-limit, vmax=limit)
            axes[row, 3].set_title("log2 margin y / x", fontsize=9)
            fig.colorbar(shape, ax=axes[row, 3], fraction=0.046)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
