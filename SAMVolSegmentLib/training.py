"""Training the bundled default model and fine-tuning any model on labelled cases.

Samples go through the inference preprocessing (1.5 mm RAS model grid, 128³ ROI centred on a point of the
target, reference z-normalisation). Each episode encodes the ROI once and simulates several clicks: the
first at the target's deepest point (sometimes a random interior point), each next one at the deepest point
of the largest error region, with the previous logits fed back — the loop the session runs. The loss
(BCE + soft Dice on the 32³ low-res grid) is summed over the clicks. Runs are bounded in wall-clock minutes,
checkpoint atomically, resume exactly, and export the weights file the package ships.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .geometry import RoiWindow
from .io_utils import atomic_path
from .preprocessing import (
    ModelVolume,
    crop_roi,
    load_volume,
    normalize_roi,
    read_image,
    resample_label_to_model_grid,
    resample_to_model_grid,
)
from .synthetic import synthetic_sample

#: Development cases never used for training (manual labels, reported in docs/MODEL_CARD.md). The demo
#: sample is among them so the demo's Dice is a held-out number.
HELD_OUT_CASES = ("ct_msd_spleen2_spleen", "mr_sct_t2_spinalcord", "mr_ibsi_sts010_t1_sarcoma",
                  "mr_pyradiomics_brain1_lesion")
MIN_TARGET_VOXELS_MODEL = 20  # targets smaller than this on the 1.5 mm grid (~70 mm³) are skipped
ROI_SIZE = 128


@dataclass
class Target:
    """One training target: a case's model-grid image and a binary label on the same grid."""

    name: str
    volume: ModelVolume
    label_model: np.ndarray  # uint8, (R, A, S)


def load_targets(data_dir: Path, exclude: Sequence[str] = HELD_OUT_CASES) -> List[Target]:
    """Every label value (and, for multi-label cases, the union) of every case folder not excluded."""
    targets: List[Target] = []
    for folder in sorted(p for p in Path(data_dir).iterdir() if p.is_dir() and p.name not in exclude):
        images, labels = sorted(folder.glob("image.*")), sorted(folder.glob("label.*"))
        if not images or not labels:
            continue
        volume = load_volume(read_image(images[0]))
        model_volume = resample_to_model_grid(volume)
        import SimpleITK as sitk

        label_kji = sitk.GetArrayFromImage(read_image(labels[0]))
        values = [int(v) for v in np.unique(label_kji) if v != 0]
        selections = [(f"{folder.name}:{v}", label_kji == v) for v in values]
        if len(values) > 1:
            selections.append((f"{folder.name}:all", label_kji > 0))
        for name, mask in selections:
            label_model = resample_label_to_model_grid(mask.astype(np.uint8), volume.geometry, model_volume.grid)
            if int(label_model.sum()) >= MIN_TARGET_VOXELS_MODEL:
                targets.append(Target(name, model_volume, label_model))
    return targets


def roi_sample(target: Target, rng: np.random.Generator, size: int = ROI_SIZE,
               augment: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A normalised size³ ROI centred on a random voxel of the target (as a first click would centre it), and
    the target cropped to the same ROI (uint8). ``augment``: :func:`augment_roi` before the normalisation."""
    points = np.argwhere(target.label_model)
    centre_model = points[rng.integers(len(points))]
    roi = RoiWindow(tuple(int(c) - size // 2 for c in centre_model), size, target.volume.grid.origin_ras,
                    target.volume.grid.spacing)
    label = crop_roi(ModelVolume(target.label_model.astype(np.float32), target.volume.grid), roi, normalize=False)
    label = (label > 0.5).astype(np.uint8)
    if not augment:
        return crop_roi(target.volume, roi), label
    raw, label = augment_roi(crop_roi(target.volume, roi, normalize=False), label, rng)
    return normalize_roi(raw), label


def augment_roi(raw: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Random flips (image and label together: the clicks are simulated from the label afterwards, so they stay
    consistent), gamma on the ROI's intensity range and Gaussian noise, on the un-normalised ROI (the
    z-normalisation would undo a plain scale or shift)."""
    for axis in range(3):
        if rng.random() < 0.5:
            raw, label = np.flip(raw, axis), np.flip(label, axis)
    lo, hi = float(raw.min()), float(raw.max())
    if hi > lo and rng.random() < 0.5:
        raw = lo + (hi - lo) * ((raw - lo) / (hi - lo)) ** rng.uniform(0.7, 1.5)
    if rng.random() < 0.5:
        raw = raw + rng.uniform(0, 0.1) * float(raw.std()) * rng.standard_normal(raw.shape)
    return np.ascontiguousarray(raw, dtype=np.float32), np.ascontiguousarray(label)


def low_res_target(label_roi: np.ndarray, low: int) -> np.ndarray:
    """Area-averaged (soft) target on the low-res grid."""
    factor = label_roi.shape[0] // low
    return label_roi.reshape(low, factor, low, factor, low, factor).mean(axis=(1, 3, 5)).astype(np.float32)


def _deepest(region: np.ndarray) -> np.ndarray:
    distance = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(distance)), region.shape))


def simulate_click(target_low: np.ndarray, prediction_low: Optional[np.ndarray], rng: np.random.Generator,
                   image_size: int) -> Tuple[np.ndarray, int]:
    """Next click in ROI voxel coordinates (R, A, S) and its label (1/0), from low-res masks."""
    low = target_low.shape[0]
    truth = target_low >= 0.5
    if not truth.any():
        truth = target_low > 0
    if prediction_low is None:
        index, label = _deepest(truth) if rng.random() < 0.7 else np.argwhere(truth)[rng.integers(truth.sum())], 1
    else:
        fn, fp = truth & ~prediction_low, prediction_low & ~truth
        best = None
        for error, label in ((fn, 1), (fp, 0)):
            if error.any():
                components, _ = ndimage.label(error)
                sizes = np.bincount(components.ravel())[1:]
                k = int(np.argmax(sizes))
                if best is None or sizes[k] > best[0]:
                    best = (sizes[k], components == k + 1, label)
        if best is None:
            index, label = _deepest(truth), 1
        else:
            index, label = _deepest(best[1]), best[2]
    scale = image_size / low
    point = (index + 0.5) * scale - 0.5 + rng.uniform(-scale / 2, scale / 2, 3)
    return point.astype(np.float32), int(label)


def episode_loss(model, images: torch.Tensor, targets_low: np.ndarray, clicks: int, rng: np.random.Generator,
                 pos_weight: float = 3.0) -> Tuple[torch.Tensor, List[float]]:
    """Encode once, simulate ``clicks`` clicks, sum BCE + soft Dice over the steps; returns per-step Dice."""
    batch = images.shape[0]
    low = targets_low.shape[-1]
    image_size = images.shape[-1]
    embedding = model.encode_image(images)
    target_t = torch.from_numpy(targets_low)[:, None]
    previous = torch.zeros((batch, 1, low, low, low))
    points: List[List[np.ndarray]] = [[] for _ in range(batch)]
    labels: List[List[int]] = [[] for _ in range(batch)]
    predictions: List[Optional[np.ndarray]] = [None] * batch
    total = torch.zeros(())
    dices = []
    for _ in range(clicks):
        for b in range(batch):
            p, lab = simulate_click(targets_low[b], predictions[b], rng, image_size)
            points[b].append(p)
            labels[b].append(lab)
        pts = torch.from_numpy(np.stack([np.stack(p) for p in points]))
        labs = torch.tensor(labels, dtype=torch.int64)
        logits, _ = model.decode_prompts(embedding, pts, labs, previous)
        bce = F.binary_cross_entropy_with_logits(logits, target_t, pos_weight=torch.tensor(pos_weight))
        prob = torch.sigmoid(logits)
        inter = (prob * target_t).flatten(1).sum(1)
        soft_dice = (2 * inter + 1) / (prob.flatten(1).sum(1) + target_t.flatten(1).sum(1) + 1)
        total = total + bce + (1 - soft_dice).mean()
        previous = logits.detach()
        hard = (logits.detach() > 0).numpy()[:, 0]
        predictions = list(hard)
        truth = targets_low >= 0.5
        dices.append(float(np.mean([2 * (h & t).sum() / max(h.sum() + t.sum(), 1) for h, t in zip(hard, truth)])))
    return total / clicks, dices


def save_checkpoint(path: Path, model, optimizer, step: int, elapsed_s: float, rng_state: dict, best: float) -> None:
    payload = {
        "family": model.family,
        "config": model.config.to_dict(),
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "step": step,
        "elapsed_s": elapsed_s,
        "rng": rng_state,
        "best_train_dice": best,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def export_model(model, out_path: Path, meta: Optional[dict] = None) -> Path:
    """Write a weights-only checkpoint the package can ship (family + config + state dict)."""
    payload = {"family": model.family, "config": model.config.to_dict(),
               "model_state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if meta:
        payload["meta"] = {k: (float(v) if isinstance(v, (int, float)) else str(v)) for k, v in meta.items()}
    with atomic_path(out_path) as tmp:
        torch.save(payload, tmp)
    return Path(out_path)


def learning_rate(elapsed_s: float, minutes: float, base_lr: float, decay_from_minute: Optional[float] = None,
                  final_fraction: float = 0.05) -> float:
    """Constant ``base_lr`` until ``decay_from_minute`` (default: half the budget), then a cosine decay to
    ``final_fraction * base_lr`` at ``minutes``. Scheduled on wall time because runs are bounded by it."""
    start_s = 60.0 * (minutes / 2 if decay_from_minute is None else decay_from_minute)
    end_s = 60.0 * minutes
    if elapsed_s <= start_s or end_s <= start_s:
        return base_lr
    progress = min(1.0, (elapsed_s - start_s) / (end_s - start_s))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + np.cos(np.pi * progress)))


def train(model, targets: List[Target], out_dir: Path, minutes: float, seed: int = 0, batch: int = 2,
          clicks: int = 4, lr: float = 2e-3, synthetic_fraction: float = 0.4, export: Optional[Path] = None,
          resume: bool = False, checkpoint_every_s: float = 300.0, trainable: str = "all",
          decay_from_minute: Optional[float] = None, augment_from_minute: Optional[float] = 0.0) -> dict:
    """Train until ``minutes`` of (cumulative) wall time; checkpoint + export every ``checkpoint_every_s``.

    The learning rate follows :func:`learning_rate` (constant, then cosine decay over the rest of the budget).
    Real ROIs are augmented (:func:`augment_roi`) from ``augment_from_minute`` on (None: never).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    # "decoder": only the per-click part learns (SAM-Med3D: prompt encoder + mask decoder; ClickNet: decoder).
    frozen_prefixes = () if trainable == "all" else ("image_encoder", "stem", "down", "up")
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen_prefixes))
        if p.requires_grad:
            params.append(p)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    step, elapsed, best = 0, 0.0, 0.0
    rng = np.random.default_rng(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    if resume and ckpt_path.is_file():
        state = torch.load(str(ckpt_path), map_location="cpu", weights_only=False)  # our own file: has RNG state
        model.load_state_dict(state["model_state_dict"])
        optimizer.load_state_dict(state["optimizer_state_dict"])
        step, elapsed, best = state["step"], state["elapsed_s"], state["best_train_dice"]
        rng.bit_generator.state = state["rng"]["numpy"]
        torch.set_rng_state(state["rng"]["torch"])
    log = (out_dir / "log.jsonl").open("a")
    try:
        from tqdm import tqdm

        bar = tqdm(total=int(minutes * 60), initial=int(elapsed), unit="s", desc="training", mininterval=10)
    except ImportError:
        bar = None
    model.train()
    start, last_ckpt = time.perf_counter() - elapsed, time.perf_counter()
    window: List[float] = []
    low, size = model.config.low_res_size, model.config.image_size
    while time.perf_counter() - start < minutes * 60:
        images, lows = [], []
        for _ in range(batch):
            if not targets or rng.random() < synthetic_fraction:
                image, label = synthetic_sample(rng, size)
            else:
                augment = augment_from_minute is not None and time.perf_counter() - start >= 60 * augment_from_minute
                image, label = roi_sample(targets[int(rng.integers(len(targets)))], rng, size, augment)
            images.append(image)
            lows.append(low_res_target(label, low))
        x = torch.from_numpy(np.stack(images))[:, None]
        current_lr = learning_rate(time.perf_counter() - start, minutes, lr, decay_from_minute)
        for group in optimizer.param_groups:
            group["lr"] = current_lr
        loss, dices = episode_loss(model, x, np.stack(lows), clicks, rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        step += 1
        window.append(dices[-1])
        window = window[-100:]
        log.write(json.dumps({"step": step, "t": round(time.perf_counter() - start, 1), "loss": loss.item(),
                              "lr": current_lr, "dice_per_click": [round(d, 4) for d in dices]}) + "\n")
        if bar is not None:
            bar.set_postfix(step=step, loss=f"{loss.item():.3f}", dice=f"{np.mean(window):.3f}", refresh=False)
            bar.update(max(0, int(time.perf_counter() - start) - bar.n))  # redraws at most every 10 s
        if time.perf_counter() - last_ckpt > checkpoint_every_s:
            best = _checkpoint(model, optimizer, ckpt_path, export, step, start, rng, window, best)
            last_ckpt = time.perf_counter()
    best = _checkpoint(model, optimizer, ckpt_path, export, step, start, rng, window, best)
    log.close()
    if bar is not None:
        bar.close()
    return {"steps": step, "minutes": (time.perf_counter() - start) / 60, "train_dice_last100": float(np.mean(window or [0]))}


def _checkpoint(model, optimizer, ckpt_path, export, step, start, rng, window, best) -> float:
    elapsed = time.perf_counter() - start
    rng_state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    save_checkpoint(ckpt_path, model, optimizer, step, elapsed, rng_state, best)
    score = float(np.mean(window)) if window else 0.0
    if export is not None:  # the package always holds the latest model; training Dice is logged beside it
        export_model(model, export, {"step": step, "train_dice_last100": score, "minutes": elapsed / 60})
    return max(best, score)


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the small default model (ClickNet) on labelled cases + synthetic data")
    p.add_argument("--data", type=Path, required=True, help="folder of <case>/image.* + label.* folders")
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget (cumulative over resumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", type=Path, default=None, help="weights file to (re)write at every checkpoint")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--decay-from-minute", type=float, default=None,
                   help="keep the learning rate constant until this minute, then cosine-decay it (default: half)")
    p.add_argument("--augment-from-minute", type=float, default=0.0,
                   help="augment real ROIs (flips, gamma, noise) from this minute on (default: from the start)")
    p.set_defaults(func=_cmd_train)

    sub = subparsers.add_parser("finetune", help="fine-tune a model (any checkpoint, official ones included)")
    sub.add_argument("model", help="registry name or checkpoint path")
    sub.add_argument("--data", type=Path, required=True)
    sub.add_argument("--out", type=Path, default=Path("runs/finetune"))
    sub.add_argument("--minutes", type=float, default=30.0)
    sub.add_argument("--trainable", choices=["all", "decoder"], default="decoder",
                     help="decoder = prompt encoder + mask decoder only (the image encoder stays frozen)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--resume", action="store_true")
    sub.set_defaults(func=_cmd_finetune)


def _cmd_train(args: argparse.Namespace) -> int:
    from .model.clicknet import ClickNet, ClickNetConfig

    torch.set_num_threads(args.threads)
    targets = load_targets(args.data)
    print(f"{len(targets)} training targets (held out: {', '.join(HELD_OUT_CASES)})")
    result = train(ClickNet(ClickNetConfig()), targets, args.out, args.minutes, args.seed, export=args.export,
                   resume=args.resume, decay_from_minute=args.decay_from_minute,
                   augment_from_minute=args.augment_from_minute)
    print(json.dumps(result))
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .model import load_model

    model = load_model(args.model)
    targets = load_targets(args.data, exclude=())
    result = train(model, targets, args.out, args.minutes, args.seed, export=args.out / "finetuned.pt",
                   resume=args.resume, synthetic_fraction=0.0, trainable=args.trainable, lr=1e-4)
    print(json.dumps(result))
    return 0


def stats(targets: List[Target]) -> Dict[str, int]:
    return {t.name: int(t.label_model.sum()) for t in targets}
