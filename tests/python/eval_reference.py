"""Independent references for `medpatch evaluate` (tests/cli_evaluate.rs runs them).

classification  scikit-learn: roc_auc_score, roc_curve + argmax(tpr - fpr) (Youden), confusion_matrix
                at a threshold, on the per-case scores `medpatch evaluate` wrote (cases.csv).
bootstrap       a numpy/scikit-learn transcription of the seed's bootstrap on given resample indices:
                per-resample metrics, then sorted values at round(m*0.025), round(m*0.975), round(m*0.5).
chexlocalize    a transcription of CheXlocalize v1.0.0 (eval.py get_hitrates/calculate_iou,
                heatmap_to_segmentation.py cam_to_segmentation) with pycocotools and torch's
                F.interpolate, plus the seed's threshold search (tune_heatmap_threshold_opt.py), on
                model-space .npy maps, placed in the crop box (geometry crop) or stretched.
resize          torch F.interpolate(bilinear, align_corners=False) of given maps, for bitwise checks.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

LOCALIZATION_TASKS = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Airspace Opacity", "Edema",
                      "Consolidation", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Support Devices"]


def threshold_of(value):
    return math.inf if value == "inf" else float(value)


def read_cases(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k[len("score:"):] for k in rows[0] if k.startswith("score:")]
    scores = {c: np.array([float(r["score:" + c]) for r in rows], dtype=np.float32) for c in classes}
    labels = {c: np.array([int(r["label:" + c]) for r in rows], dtype=np.int64) for c in classes}
    return classes, scores, labels


def predicted(scores, threshold, rule):
    t = np.float64(threshold)
    return (scores.astype(np.float64) >= t) if rule == "ge" else (scores.astype(np.float64) > t)


def classification(args):
    classes, scores, labels = read_cases(args.cases)
    thresholds = {}
    if args.thresholds:
        thresholds = {k: threshold_of(v) for k, v in json.load(open(args.thresholds))["classification"].items()}
    out = {}
    for c in classes:
        s, l = scores[c], labels[c]
        entry = {"positives": int(l.sum()), "negatives": int((1 - l).sum())}
        if 0 < l.sum() < len(l):
            entry["auroc"] = float(roc_auc_score(l, s))
            fpr, tpr, thr = roc_curve(l, s)
            k = int(np.argmax(tpr - fpr))
            entry["youden_threshold"] = "inf" if np.isinf(thr[k]) else float(thr[k])
        if c in thresholds:
            pred = predicted(s, thresholds[c], args.rule)
            tn, fp, fn, tp = confusion_matrix(l, pred.astype(np.int64), labels=[0, 1]).ravel()
            entry["accuracy"] = float((tp + tn) / (tp + tn + fp + fn))
            entry["sensitivity"] = float(tp / (tp + fn)) if tp + fn > 0 else None
            entry["specificity"] = float(tn / (tn + fp)) if tn + fp > 0 else None
        out[c] = entry
    json.dump(out, open(args.out, "w"), indent=1)


def python_round_index(m, q):
    return min(round(m * q), m - 1)


def summarize(values):
    defined = sorted(v for v in values if not math.isnan(v))
    if not defined:
        return None
    m = len(defined)
    return {"low": defined[python_round_index(m, 0.025)], "high": defined[python_round_index(m, 0.975)],
            "median": defined[python_round_index(m, 0.5)], "mean": float(np.mean(defined)), "defined": m,
            "undefined": len(values) - m}


def bootstrap(args):
    data = json.load(open(args.data))
    indices = np.array(data["indices"], dtype=np.int64)
    rule = data["rule"]
    out = {"values": [], "intervals": []}
    for cls in data["classes"]:
        s = np.array(cls["scores"], dtype=np.float32)
        l = np.array(cls["labels"], dtype=np.int64)
        t = cls["threshold"]
        per_metric = [[], [], [], []]
        for idx in indices:
            rs, rl = s[idx], l[idx]
            p, n = int(rl.sum()), int(len(rl) - rl.sum())
            per_metric[0].append(float(roc_auc_score(rl, rs)) if p > 0 and n > 0 else math.nan)
            pred = predicted(rs, t, rule)
            tp = int((pred & (rl == 1)).sum()); tn = int((~pred & (rl == 0)).sum())
            per_metric[1].append((tp + tn) / len(rl))
            per_metric[2].append(tp / p if p > 0 else math.nan)
            per_metric[3].append(tn / n if n > 0 else math.nan)
        out["intervals"].append([summarize(v) for v in per_metric])
        # JSON has no NaN: undefined values are null.
        out["values"].append([[None if math.isnan(v) else v for v in metric] for metric in per_metric])
    json.dump(out, open(args.out, "w"))


# ---- CheXlocalize ----------------------------------------------------------------------------

def calculate_iou(pred_mask, gt_mask, true_pos_only):
    """CheXlocalize eval.py calculate_iou."""
    intersection = np.logical_and(pred_mask, gt_mask)
    union = np.logical_or(pred_mask, gt_mask)
    if true_pos_only:
        if np.sum(pred_mask) == 0 or np.sum(gt_mask) == 0:
            return np.nan
        return np.sum(intersection) / np.sum(union)
    if np.sum(union) == 0:
        return np.nan
    return np.sum(intersection) / np.sum(union)


def cam_to_segmentation(cam_mask, threshold):
    """heatmap_to_segmentation.py cam_to_segmentation with a given threshold."""
    cam_mask = cam_mask.squeeze()
    m = cam_mask - cam_mask.min()
    m = m.div(m.max()).data
    m = m.cpu().detach().numpy()
    return np.array(m > threshold, dtype="int")


def crop_box(h, w):
    side = min(h, w)
    # torchvision CenterCrop: int(round((size - crop) / 2.0)) (Python's round: half to even)
    return int(round((h - side) / 2.0)), int(round((w - side) / 2.0)), side


class MapCase:
    """One (image, task): the map resized into its place, as CheXlocalize's get_map would."""

    def __init__(self, map_path, gt_item, geometry):
        h, w = gt_item["size"]
        saliency = torch.from_numpy(np.load(map_path).astype(np.float32))[None, None]
        top, left, side = crop_box(h, w)
        if geometry == "stretch":
            top, left, th, tw = 0, 0, h, w
        else:
            th, tw = side, side
        self.box = (top, left, th, tw)
        self.resized = F.interpolate(saliency, size=(th, tw), mode="bilinear", align_corners=False)
        full = np.full((h, w), -np.inf, dtype=np.float32)
        full[top:top + th, left:left + tw] = self.resized.squeeze().numpy()
        self.full_shape = (h, w)
        self.gt = coco_mask.decode(gt_item)
        assert self.gt.shape == full.shape
        x, y = np.unravel_index(np.argmax(full, axis=None), full.shape)
        self.argmax = (int(y), int(x))  # (column, row)
        # get_hitrates: 0; 1 if the maximum is in the mask; nan if the mask is empty.
        hit = 0
        if self.gt[x][y] == 1:
            hit = 1
        elif np.sum(self.gt) == 0:
            hit = np.nan
        self.hit = hit

    def iou(self, threshold, true_pos_only):
        top, left, th, tw = self.box
        seg = np.zeros(self.full_shape, dtype="int")
        seg[top:top + th, left:left + tw] = cam_to_segmentation(self.resized, threshold)
        return calculate_iou(seg, self.gt, true_pos_only)


def seed_search(cases, true_pos_only):
    """tune_heatmap_threshold_opt.py tune_threshold (memoised, NaN means dropped, last of ties)."""
    cache = {}

    def miou_for(threshold):
        if threshold not in cache:
            cache[threshold] = np.nanmean(np.array([c.iou(threshold, true_pos_only) for c in cases]))
        return cache[threshold]

    step, best = 0.25, 0.5
    for _ in range(10):
        candidates = [best + (x * step) for x in [-1, 0, 1]]
        mious = [(miou_for(x), x) for x in candidates]
        mious = [x for x in mious if not np.isnan(x[0])]
        if len(mious) == 0:
            break
        best = sorted(mious, key=lambda x: x[0])[-1][1]
        step = step / 2
    return best


def chexlocalize_summary(columns):
    """eval.py bootstrap_metric + compute_cis: np.random.seed(0), 1000 replicates of
    np.random.choice over the rows (shared by all tasks), skipna means, CIs at sorted[24], sorted[974]."""
    n = len(next(iter(columns.values())))
    np.random.seed(0)
    means = {task: [] for task in columns}
    for _ in range(1000):
        sample_ids = np.random.choice(n, size=n, replace=True)
        for task, column in columns.items():
            drawn = column[sample_ids]
            means[task].append(np.nanmean(drawn) if np.any(~np.isnan(drawn)) else np.nan)
    out = {}
    for task, m in means.items():
        s = np.sort(np.array(m))  # NaN last, as pandas sort_values
        if np.all(np.isnan(s)):
            out[task] = None
            continue
        lower, upper = s[int(0.05 / 2 * len(s)) - 1], s[int((1 - 0.05 / 2) * len(s)) - 1]
        clean = lambda v: None if np.isnan(v) else float(v)
        out[task] = {"lower": clean(np.round(lower, 3)), "mean": clean(round(np.nanmean(s), 3)),
                     "upper": clean(np.round(upper, 3))}
    return out


def chexlocalize(args):
    gt = json.load(open(args.gt))
    applied = {}
    if args.thresholds:
        applied = json.load(open(args.thresholds)).get("localization", {})
    maps_dir = Path(args.maps)
    out = {"tasks": {}}
    per_task = {}
    for task in LOCALIZATION_TASKS:
        cases, ids = [], []
        for cxr_id in sorted(gt.keys()):
            path = maps_dir / f"{cxr_id}_{task}_map.npy"
            if path.exists():
                cases.append(MapCase(path, gt[cxr_id][task], args.geometry))
                ids.append(cxr_id)
        if not cases:
            continue
        hits = np.array([c.hit for c in cases], dtype=np.float64)
        entry = {
            "maps": len(cases),
            "hit_rate": float(np.nanmean(hits)) if np.any(~np.isnan(hits)) else None,
            "hit_cases": int(np.sum(~np.isnan(hits))),
            "per_case": {i: {"hit": (None if np.isnan(c.hit) else int(c.hit)), "argmax": c.argmax}
                         for i, c in zip(ids, cases)},
            "tuned": {}, "miou": {},
        }
        for key, tp_only in [("tp_fp_fn", False), ("tp_only", True)]:
            entry["tuned"][key] = seed_search(cases, tp_only)
            t = applied.get(key, {}).get(task)
            if t is not None:
                ious = np.array([c.iou(t, tp_only) for c in cases], dtype=np.float64)
                n = int(np.sum(~np.isnan(ious)))
                entry["miou"][key] = {"threshold": t, "miou": float(np.nanmean(ious)) if n else None, "cases": n}
        out["tasks"][task] = entry
        per_task[task] = dict(zip(ids, cases))
    # CheXlocalize's summaries: rows are the images with a map for any task, sorted by id.
    rows = sorted({i for cases in per_task.values() for i in cases})
    hit_columns = {t: np.array([per_task[t][i].hit if i in per_task[t] else np.nan for i in rows], dtype=np.float64)
                   for t in per_task}
    for task, summary in chexlocalize_summary(hit_columns).items():
        out["tasks"][task]["hit_rate_chexlocalize"] = summary
    for key, tp_only in [("tp_fp_fn", False), ("tp_only", True)]:
        columns = {}
        for task in per_task:
            t = applied.get(key, {}).get(task)
            if t is not None:
                columns[task] = np.array([per_task[task][i].iou(t, tp_only) if i in per_task[task] else np.nan
                                          for i in rows], dtype=np.float64)
        if columns:
            for task, summary in chexlocalize_summary(columns).items():
                out["tasks"][task]["miou"][key]["chexlocalize"] = summary
    json.dump(out, open(args.out, "w"), indent=1)


def resize(args):
    spec = json.load(open(args.spec))
    out = []
    for item in spec:
        m = torch.tensor(item["map"], dtype=torch.float32).reshape(item["h"], item["w"])[None, None]
        r = F.interpolate(m, size=(item["out_h"], item["out_w"]), mode="bilinear", align_corners=False)
        out.append([float(v) for v in r.flatten().numpy()])
    json.dump({"capability": torch.backends.cpu.get_cpu_capability(), "maps": out}, open(args.out, "w"))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("classification")
    p.add_argument("--cases", required=True)
    p.add_argument("--thresholds")
    p.add_argument("--rule", default="ge")
    p.add_argument("--out", required=True)
    p = sub.add_parser("bootstrap")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p = sub.add_parser("chexlocalize")
    p.add_argument("--gt", required=True)
    p.add_argument("--maps", required=True)
    p.add_argument("--geometry", default="crop", choices=["crop", "stretch"])
    p.add_argument("--thresholds")
    p.add_argument("--out", required=True)
    p = sub.add_parser("resize")
    p.add_argument("--spec", required=True)
    p.add_argument("--out", required=True)
    args = parser.parse_args()
    {"classification": classification, "bootstrap": bootstrap, "chexlocalize": chexlocalize, "resize": resize}[
        args.command](args)


if __name__ == "__main__":
    sys.exit(main())
