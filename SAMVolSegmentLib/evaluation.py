"""Click-simulation evaluation: how good is a model after 1..N clicks, next to a classical baseline.

Protocol (deterministic, on the original voxel grid with its real spacing):

* click 1: the target's interior point farthest from its border (Euclidean distance in mm);
* click n > 1: the deepest point (farthest from its border) of the largest connected error region, positive
  if that region is missed foreground, negative if it is a false positive;
* clicks go to the model as world RAS millimetres through :class:`InteractiveSession`, so the whole geometry
  chain is exercised; the baseline gets the same clicks as voxel indices.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .baseline import region_grow
from .errors import InvalidImageError
from .geometry import VolumeGeometry

ProgressCallback = Callable[[float, str], None]
IndexKJI = Tuple[int, int, int]


@dataclass(frozen=True)
class Case:
    """One evaluation target: an image, its label file, and which label value is the target."""

    name: str
    image_path: Path
    label_path: Path
    label_value: Optional[int] = None  # None: every non-zero voxel


@dataclass
class ClickResult:
    case: str
    method: str
    click: int
    positive: bool
    point_ras: List[float]
    dice: float
    hd95_mm: Optional[float]
    latency_s: float


@dataclass
class EvaluationResult:
    model: str
    num_clicks: int
    rows: List[ClickResult] = field(default_factory=list)

    def mean_dice(self, method: str) -> Dict[int, float]:
        """Mean Dice over cases per click count for one method."""
        by_click: Dict[int, List[float]] = {}
        for row in self.rows:
            if row.method == method:
                by_click.setdefault(row.click, []).append(row.dice)
        return {k: float(np.mean(v)) for k, v in sorted(by_click.items())}

    @property
    def methods(self) -> List[str]:
        return sorted({row.method for row in self.rows})

    def summary(self) -> dict:
        cases = sorted({row.case for row in self.rows})
        per_case = {
            case: {
                method: {r.click: r.dice for r in self.rows if r.case == case and r.method == method}
                for method in self.methods
            }
            for case in cases
        }
        latencies = [r.latency_s for r in self.rows if r.method == "model" and r.click > 1]
        return {
            "model": self.model,
            "num_clicks": self.num_clicks,
            "cases": cases,
            "mean_dice": {method: self.mean_dice(method) for method in self.methods},
            "per_case_dice": per_case,
            "model_latency_after_first_click_s": {
                "p50": float(np.percentile(latencies, 50)) if latencies else None,
                "p95": float(np.percentile(latencies, 95)) if latencies else None,
            },
        }


# ---------------------------------------------------------------- metrics
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary arrays; 1.0 when both are empty."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def hd95(a: np.ndarray, b: np.ndarray, spacing_kji: Sequence[float]) -> Optional[float]:
    """95th-percentile symmetric surface distance in mm; None when either mask is empty."""
    a, b = a.astype(bool), b.astype(bool)
    if not a.any() or not b.any():
        return None
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing_kji)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing_kji)
    distances = np.concatenate([to_b[surface_a], to_a[surface_b]])
    return float(np.percentile(distances, 95))


# ---------------------------------------------------------------- click simulation
def deepest_point(region: np.ndarray, spacing_kji: Sequence[float]) -> IndexKJI:
    """Voxel of a binary region farthest (in mm) from the region's border (ties: first in C order)."""
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing_kji)[1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(distance)), region.shape))  # type: ignore[return-value]


def next_click(
    target: np.ndarray, prediction: np.ndarray, spacing_kji: Sequence[float]
) -> Optional[Tuple[IndexKJI, bool]]:
    """The next simulated click: the deepest point of the largest error component, and its sign.

    Returns None when the prediction equals the target.
    """
    target, prediction = target.astype(bool), prediction.astype(bool)
    best: Optional[Tuple[int, np.ndarray, bool]] = None
    for error, positive in ((target & ~prediction, True), (prediction & ~target, False)):
        if not error.any():
            continue
        components, count = ndimage.label(error)
        sizes = np.bincount(components.ravel())[1:]
        largest = int(np.argmax(sizes))
        if best is None or sizes[largest] > best[0]:
            best = (int(sizes[largest]), components == largest + 1, positive)
    if best is None:
        return None
    return deepest_point(best[1], spacing_kji), best[2]


# ---------------------------------------------------------------- cases
def load_target(case: Case) -> Tuple[sitk.Image, np.ndarray]:
    """The image and the binary target array (k, j, i) of a case, checked to share one grid."""
    from .preprocessing import read_image

    image, label = read_image(case.image_path), read_image(case.label_path)
    if image.GetSize() != label.GetSize():
        raise InvalidImageError(
            f"{case.name}: label size {label.GetSize()} differs from image size {image.GetSize()}; "
            "the label must be on the image's voxel grid."
        )
    array = sitk.GetArrayFromImage(label)
    target = array > 0 if case.label_value is None else array == case.label_value
    if not target.any():
        raise InvalidImageError(
            f"{case.name}: the label has no voxels of value "
            f"{'> 0' if case.label_value is None else case.label_value}; pick another --label."
        )
    return image, target.astype(np.uint8)


def discover_cases(data: Path, names: Optional[Sequence[str]] = None, label_value: Optional[int] = None) -> List[Case]:
    """Cases from a folder of ``<case>/image.* + label.*`` folders or a CSV manifest ``image,label[,label_value]``."""
    data = Path(data)
    if data.is_file():
        cases = []
        with data.open(newline="") as f:
            for row in csv.reader(f):
                if not row or row[0].strip().lower() in ("image", "#"):
                    continue
                value = int(row[2]) if len(row) > 2 and row[2].strip() else label_value
                image = (data.parent / row[0].strip()).resolve()
                cases.append(Case(image.parent.name + "/" + image.name, image, (data.parent / row[1].strip()).resolve(), value))
    elif data.is_dir():
        cases = []
        for folder in sorted(p for p in data.iterdir() if p.is_dir()):
            images = sorted(folder.glob("image.*"))
            labels = sorted(folder.glob("label.*"))
            if images and labels:
                cases.append(Case(folder.name, images[0], labels[0], label_value))
    else:
        raise FileNotFoundError(f"{data} does not exist: give a folder of case folders or a CSV manifest.")
    if names:
        wanted = set(names)
        cases = [c for c in cases if c.name in wanted]
        missing = wanted - {c.name for c in cases}
        if missing:
            raise FileNotFoundError(f"cases not found in {data}: {', '.join(sorted(missing))}")
    if not cases:
        raise FileNotFoundError(f"no cases (image.* + label.* folders or manifest rows) found in {data}")
    return cases


# ---------------------------------------------------------------- simulation
def simulate_case(
    session, case: Case, num_clicks: int, with_baseline: bool = True
) -> List[ClickResult]:
    """Run the click protocol on one case with a session (model) and the baseline."""
    image, target = load_target(case)
    geometry = VolumeGeometry.from_sitk(image)
    spacing_kji = tuple(image.GetSpacing()[::-1])
    session.set_volume(image)
    session.wait_until_ready()
    prediction = np.zeros_like(target)
    clicks: List[Tuple[IndexKJI, bool]] = []
    rows: List[ClickResult] = []
    baseline_mask = np.zeros_like(target)
    for n in range(1, num_clicks + 1):
        if n == 1:
            click: Optional[Tuple[IndexKJI, bool]] = (deepest_point(target.astype(bool), spacing_kji), True)
        else:
            click = next_click(target, prediction, spacing_kji)
        if click is None:  # perfect: repeat the last scores for the remaining click counts
            rows.extend(
                ClickResult(r.case, r.method, n, r.positive, r.point_ras, r.dice, r.hd95_mm, 0.0)
                for r in rows[-2 if with_baseline else -1 :]
            )
            continue
        index_kji, positive = click
        point_ras = geometry.ijk_to_ras_points(np.array([index_kji[::-1]], dtype=float))[0]
        start = time.perf_counter()
        session.add_click(point_ras, positive)
        latency = time.perf_counter() - start
        prediction = session.mask_array_kji()
        rows.append(ClickResult(case.name, "model", n, positive, point_ras.tolist(), dice(prediction, target),
                                hd95(prediction, target, spacing_kji), latency))
        if with_baseline:
            # The baseline sees the clicks the *model's* errors produced, so both get identical prompts.
            clicks.append((index_kji, positive))
            start = time.perf_counter()
            baseline_mask = region_grow(image, clicks)
            rows.append(ClickResult(case.name, "baseline", n, positive, point_ras.tolist(),
                                    dice(baseline_mask, target), hd95(baseline_mask, target, spacing_kji),
                                    time.perf_counter() - start))
    return rows


def evaluate_cases(
    cases: Sequence[Case],
    model,
    num_clicks: int = 10,
    model_name: str = "model",
    progress: Optional[ProgressCallback] = None,
    with_baseline: bool = True,
) -> EvaluationResult:
    """Evaluate a model (``nn.Module`` or Predictor) on cases; one fresh session per case."""
    from .session import InteractiveSession

    result = EvaluationResult(model=model_name, num_clicks=num_clicks)
    for index, case in enumerate(cases):
        if progress is not None:
            progress(index / max(len(cases), 1), f"{case.name}")
        with InteractiveSession(model) as session:
            result.rows.extend(simulate_case(session, case, num_clicks, with_baseline))
    if progress is not None:
        progress(1.0, "done")
    return result


# ---------------------------------------------------------------- writers
def write_results(result: EvaluationResult, out_dir: Path, plot: bool = True) -> Dict[str, Path]:
    """Write ``clicks.csv``, ``summary.json`` and (optionally) ``dice_vs_clicks.png`` atomically."""
    from .io_utils import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "clicks.csv", "json": out_dir / "summary.json"}
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(result.rows[0]).keys()) if result.rows else ["case"])
        writer.writeheader()
        for row in result.rows:
            writer.writerow(asdict(row))
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(result.summary(), indent=2))
    if plot and result.rows:
        paths["png"] = out_dir / "dice_vs_clicks.png"
        plot_dice_vs_clicks(result, paths["png"])
    return paths


def plot_dice_vs_clicks(result: EvaluationResult, path: Path) -> None:
    """Mean Dice per click count per method (thick), each case thin behind it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io_utils import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    colours = {"model": "tab:blue", "baseline": "tab:orange"}
    summary = result.summary()
    for method in result.methods:
        colour = colours.get(method)
        for per_method in summary["per_case_dice"].values():
            curve = per_method.get(method, {})
            ax.plot(list(curve), list(curve.values()), color=colour, alpha=0.25, linewidth=0.8)
        mean = result.mean_dice(method)
        label = result.model if method == "model" else "baseline (confidence-connected growing)"
        ax.plot(list(mean), list(mean.values()), color=colour, linewidth=2.5, marker="o", label=label)
    ax.set_xlabel("clicks")
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, result.num_clicks + 1))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Dice vs clicks ({len(summary['cases'])} cases)")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
