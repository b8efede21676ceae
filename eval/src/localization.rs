//! The CheXlocalize protocol (rajpurkarlab/cheXlocalize v1.0.0, `eval.py`,
//! `heatmap_to_segmentation.py`) with the seed's threshold search (`tune_heatmap_threshold_opt.py`).
//!
//! Per image and task, a saliency map (resized to the original image, [`crate::geometry`]) and the
//! ground-truth mask give:
//!
//! * **hit** (pointing game, `get_hitrates`): the map's maximum pixel — numpy's `argmax`, i.e. the
//!   *first* maximum in row-major order — lies inside the mask. Undefined (not counted) when the
//!   mask is empty; counted whatever the predicted probability. An 8×8 patch map is flat on each
//!   64×64 block, so which pixel of a tied maximum is taken matters: the first one, as numpy does.
//! * **IoU** (`cam_to_segmentation` + `calculate_iou`): the map min–max normalised,
//!   `(m − min) / (max − min)` in float32 (as torch computes `m − m.min()` then `.div(.max())`;
//!   a constant map gives NaN everywhere, so an empty segmentation), a pixel is segmented when its
//!   value is `> threshold`. Over "TP, FP, FN" the IoU is undefined only when both masks are empty;
//!   over "TP only" it is undefined unless both are non-empty. The mean skips undefined values.
//! * **Threshold per task**, tuned on the validation split to maximise mIoU with the seed's search:
//!   start at 0.5, step 0.25; 10 rounds of evaluating {t − s, t, t + s}, dropping NaN means, moving to
//!   the best (the largest threshold among exact ties: a stable sort's last), halving s. Every
//!   threshold it can visit is a multiple of 1/2048 in (0, 1), so each map is reduced once to
//!   counts of segmented and of segmented-and-true pixels at all 2,049 such thresholds; the search
//!   then costs nothing per image. The mean is numpy's `nanmean` (pairwise summation), so ties and
//!   near-ties resolve as in Python.

use crate::chexlocalize_bootstrap::{self, Summary};
use crate::geometry::{Rect, resize_bilinear};
use crate::numpy::nanmean;
use crate::rle::Mask;
use std::collections::BTreeMap;

/// The thresholds the seed's search can reach are `j / THRESHOLD_DENOMINATOR`, j in 0..=2048.
pub const THRESHOLD_DENOMINATOR: usize = 2048;
const GRID: usize = THRESHOLD_DENOMINATOR + 1;

/// A saliency map in model space: row-major `height × width`.
#[derive(Debug, Clone)]
pub struct SaliencyMap<'a> {
    pub values: &'a [f32],
    pub width: usize,
    pub height: usize,
}

/// What the metrics need of one (image, task) pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapSummary {
    /// Whether the map's first maximum lies in the mask; `None` when the mask is empty.
    pub hit: Option<bool>,
    /// The first maximum, in original-image pixels (x, y).
    pub argmax: (usize, usize),
    pub gt_pixels: u64,
    /// Segmented pixels at threshold j / 2048, for j = 0..=2048.
    #[serde(skip)]
    pub segmented: Vec<u32>,
    /// Segmented pixels inside the mask at each threshold.
    #[serde(skip)]
    pub overlap: Vec<u32>,
}

/// Which images an IoU is defined on (CheXlocalize's `true_pos_only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IouSlice {
    /// "TP, FP, FN": every image where the predicted or the true mask is non-empty.
    TpFpFn,
    /// "TP only": images where both are non-empty.
    TpOnly,
}

impl IouSlice {
    pub const ALL: [IouSlice; 2] = [IouSlice::TpFpFn, IouSlice::TpOnly];

    pub fn label(self) -> &'static str {
        match self {
            IouSlice::TpFpFn => "TP, FP, FN",
            IouSlice::TpOnly => "TP only",
        }
    }

    /// The key used in files (`tp_fp_fn`, `tp_only`).
    pub fn key(self) -> &'static str {
        match self {
            IouSlice::TpFpFn => "tp_fp_fn",
            IouSlice::TpOnly => "tp_only",
        }
    }
}

/// Resize `map` onto `target` (a part of the `gt`-sized image) and reduce it against the mask.
/// Fails on non-finite map values.
pub fn summarize_map(map: &SaliencyMap, gt: &Mask, target: Rect) -> Result<MapSummary, String> {
    if let Some(v) = map.values.iter().find(|v| !v.is_finite()) {
        return Err(format!("the map has a non-finite value ({v})"));
    }
    if target.left + target.width > gt.width || target.top + target.height > gt.height {
        return Err(format!(
            "the map's box {}×{} at ({}, {}) does not fit the {}×{} mask",
            target.width, target.height, target.left, target.top, gt.width, gt.height
        ));
    }
    let resized = resize_bilinear(map.values, map.width, map.height, target.width, target.height);
    let (mut min, mut max, mut at) = (f32::INFINITY, f32::NEG_INFINITY, 0usize);
    for (i, &v) in resized.iter().enumerate() {
        min = min.min(v);
        if v > max {
            (max, at) = (v, i);
        }
    }
    let argmax = (target.left + at % target.width, target.top + at / target.width);
    let gt_pixels = gt.count() as u64;
    let hit = (gt_pixels > 0).then(|| gt.get(argmax.0, argmax.1));
    // Histograms of how many grid thresholds lie below each normalised value.
    let mut all = vec![0u32; GRID + 1];
    let mut inside = vec![0u32; GRID + 1];
    let range = max - min;
    if range > 0.0 {
        for y in 0..target.height {
            let row = &resized[y * target.width..(y + 1) * target.width];
            let mask_row = &gt.data[(target.top + y) * gt.width + target.left..][..target.width];
            for (&v, &m) in row.iter().zip(mask_row) {
                let normalised = (v - min) / range;
                // Thresholds j/2048 below the value: ceil(value · 2048), exact in f32.
                let below = (normalised * THRESHOLD_DENOMINATOR as f32).ceil() as usize;
                all[below] += 1;
                inside[below] += m as u32;
            }
        }
    }
    // Segmented at j ⇔ more than j thresholds below the value: suffix sums over the bins.
    let (mut segmented, mut overlap) = (vec![0u32; GRID], vec![0u32; GRID]);
    let (mut s, mut o) = (0u32, 0u32);
    for j in (0..GRID).rev() {
        s += all[j + 1];
        o += inside[j + 1];
        segmented[j] = s;
        overlap[j] = o;
    }
    Ok(MapSummary { hit, argmax, gt_pixels, segmented, overlap })
}

impl MapSummary {
    /// IoU at threshold `j / 2048` (NaN where CheXlocalize leaves it undefined).
    pub fn iou(&self, j: usize, slice: IouSlice) -> f64 {
        let (pred, inter, gt) = (self.segmented[j] as u64, self.overlap[j] as u64, self.gt_pixels);
        let union = pred + gt - inter;
        let defined = match slice {
            IouSlice::TpFpFn => union > 0,
            IouSlice::TpOnly => pred > 0 && gt > 0,
        };
        if defined { inter as f64 / union as f64 } else { f64::NAN }
    }
}

/// mIoU over the maps of one task at threshold `j / 2048`, in the order given (CheXlocalize sorts
/// by image id).
pub fn miou(maps: &[&MapSummary], j: usize, slice: IouSlice) -> f64 {
    let ious: Vec<f64> = maps.iter().map(|m| m.iou(j, slice)).collect();
    nanmean(&ious)
}

/// The seed's threshold search; returns the grid index j (threshold j / 2048) and its mIoU
/// (NaN if every candidate was undefined, then j stays at 0.5).
pub fn tune_threshold(maps: &[&MapSummary], slice: IouSlice) -> (usize, f64) {
    let mut cache = std::collections::HashMap::new();
    let mut score = |j: usize| *cache.entry(j).or_insert_with(|| miou(maps, j, slice));
    let (mut best, mut step) = (THRESHOLD_DENOMINATOR / 2, THRESHOLD_DENOMINATOR / 4);
    for _ in 0..10 {
        let candidates = [best - step, best, best + step];
        let mut chosen: Option<(f64, usize)> = None;
        for j in candidates {
            let m = score(j);
            // Ascending stable sort, take the last: a later candidate wins ties.
            if !m.is_nan() && chosen.is_none_or(|(b, _)| m >= b) {
                chosen = Some((m, j));
            }
        }
        let Some((_, j)) = chosen else { break };
        best = j;
        step /= 2;
    }
    (best, score(best))
}

/// Threshold value of grid index j.
pub fn threshold_value(j: usize) -> f64 {
    j as f64 / THRESHOLD_DENOMINATOR as f64
}

/// Grid index of a threshold value, if it is on the grid (thresholds from a file).
pub fn threshold_index(t: f64) -> Option<usize> {
    let j = t * THRESHOLD_DENOMINATOR as f64;
    (j.fract() == 0.0 && (0.0..=THRESHOLD_DENOMINATOR as f64).contains(&j)).then_some(j as usize)
}

/// The fraction of hits among maps whose mask is non-empty, and that count.
pub fn hit_rate(maps: &[&MapSummary]) -> (f64, usize) {
    let hits: Vec<bool> = maps.iter().filter_map(|m| m.hit).collect();
    let rate = if hits.is_empty() { f64::NAN } else { hits.iter().filter(|&&h| h).count() as f64 / hits.len() as f64 };
    (rate, hits.len())
}

/// Tables 2 and 3 for one task.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TaskResult {
    pub task: String,
    /// Maps scored (images of the split with a map for this task).
    pub maps: usize,
    pub hit_rate: Option<f64>,
    /// Images counted in the hit rate (non-empty ground truth).
    pub hit_cases: usize,
    /// Per IoU slice: the threshold applied (from the thresholds file), the mIoU there and the
    /// number of images where the IoU was defined.
    pub miou: BTreeMap<String, SliceResult>,
    /// Per IoU slice: the threshold the seed's search picks on this split, and its mIoU here.
    pub tuned: BTreeMap<String, SliceResult>,
    /// CheXlocalize's bootstrap summary of the hit rate (what the paper's Table 2 reports).
    pub hit_rate_chexlocalize: Option<Summary>,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct SliceResult {
    pub threshold: f64,
    pub miou: Option<f64>,
    pub cases: usize,
    /// CheXlocalize's bootstrap summary of the mIoU (what the paper's Table 3 reports).
    pub chexlocalize: Option<Summary>,
}

fn slice_result(maps: &[&MapSummary], j: usize, slice: IouSlice) -> SliceResult {
    let cases = maps.iter().filter(|m| !m.iou(j, slice).is_nan()).count();
    let m = miou(maps, j, slice);
    SliceResult { threshold: threshold_value(j), miou: (!m.is_nan()).then_some(m), cases, chexlocalize: None }
}

/// Score one task's maps (sorted by image id, as CheXlocalize orders them). `applied` holds the
/// threshold per slice from the validation split, where there is one.
pub fn evaluate_task(task: &str, maps: &[&MapSummary], applied: &BTreeMap<IouSlice, usize>) -> TaskResult {
    let (rate, hit_cases) = hit_rate(maps);
    let mut result = TaskResult {
        task: task.to_string(),
        maps: maps.len(),
        hit_rate: (!rate.is_nan()).then_some(rate),
        hit_cases,
        miou: BTreeMap::new(),
        tuned: BTreeMap::new(),
        hit_rate_chexlocalize: None,
    };
    for slice in IouSlice::ALL {
        let (j, _) = tune_threshold(maps, slice);
        result.tuned.insert(slice.key().to_string(), slice_result(maps, j, slice));
        if let Some(&j) = applied.get(&slice) {
            result.miou.insert(slice.key().to_string(), slice_result(maps, j, slice));
        }
    }
    result
}

/// Tables 2 and 3 for every task: `maps[task]` holds (image id, summary) pairs; `applied[slice]`
/// the validation thresholds per task (grid indices). Adds CheXlocalize's bootstrap summaries,
/// drawn over the images that have a map for any task (sorted ids; a missing map is NaN), one draw
/// shared by all tasks, fresh from seed 0 for each table, as separate `eval.py` runs would be.
pub fn evaluate_tasks(
    maps: &BTreeMap<String, Vec<(String, MapSummary)>>,
    applied: &BTreeMap<IouSlice, BTreeMap<String, usize>>,
) -> Vec<TaskResult> {
    let ids: std::collections::BTreeSet<&String> = maps.values().flatten().map(|(id, _)| id).collect();
    let ids: Vec<&String> = ids.into_iter().collect();
    let mut results = Vec::new();
    let mut hit_columns = Vec::new();
    let mut iou_columns: BTreeMap<IouSlice, Vec<Vec<f64>>> = BTreeMap::new();
    for (task, entries) in maps {
        let mut sorted: Vec<&(String, MapSummary)> = entries.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let summaries: Vec<&MapSummary> = sorted.iter().map(|(_, s)| s).collect();
        let task_applied: BTreeMap<IouSlice, usize> =
            applied.iter().filter_map(|(slice, t)| Some((*slice, *t.get(task)?))).collect();
        results.push(evaluate_task(task, &summaries, &task_applied));
        let by_id: BTreeMap<&String, &MapSummary> = sorted.iter().map(|(id, s)| (id, s)).collect();
        let column = |f: &dyn Fn(&MapSummary) -> f64| -> Vec<f64> {
            ids.iter().map(|id| by_id.get(id).map_or(f64::NAN, |s| f(s))).collect()
        };
        hit_columns.push(column(&|s| s.hit.map_or(f64::NAN, |h| h as u8 as f64)));
        for slice in IouSlice::ALL {
            let j = task_applied.get(&slice).copied();
            iou_columns.entry(slice).or_default().push(column(&|s| j.map_or(f64::NAN, |j| s.iou(j, slice))));
        }
    }
    for (result, summary) in results.iter_mut().zip(chexlocalize_bootstrap::summarize(&hit_columns, 1000, 0)) {
        result.hit_rate_chexlocalize = summary;
    }
    for (slice, columns) in iou_columns {
        for (result, summary) in results.iter_mut().zip(chexlocalize_bootstrap::summarize(&columns, 1000, 0)) {
            if let Some(r) = result.miou.get_mut(slice.key()) {
                r.chexlocalize = summary;
            }
        }
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: usize, h: usize, inside: impl Fn(usize, usize) -> bool) -> Mask {
        let mut m = Mask::new(h, w);
        for y in 0..h {
            for x in 0..w {
                m.set(x, y, inside(x, y));
            }
        }
        m
    }

    #[test]
    fn first_maximum_and_counts() {
        // A 2×2 map whose top-right cell is largest, put on a 4×4 image without resizing.
        let values = [0.0f32, 2.0, 1.0, 1.0];
        let map = SaliencyMap { values: &values, width: 2, height: 2 };
        let gt = mask(4, 4, |x, y| x >= 2 && y < 2);
        let full = Rect { left: 0, top: 0, width: 2, height: 2 };
        let s = summarize_map(&map, &gt, full).unwrap();
        assert_eq!((s.hit, s.argmax, s.gt_pixels), (Some(false), (1, 0), 4));
        // Normalised values 0, 1, 0.5, 0.5; at t = 0.25 three pixels segmented, one of them in the mask.
        assert_eq!((s.segmented[512], s.overlap[512]), (3, 0));
        assert_eq!(s.iou(512, IouSlice::TpFpFn), 0.0);
        // t = 0.5: only the value 1 (strictly greater).
        assert_eq!(s.segmented[1024], 1);
        // Placed in the crop box at (2, 0): the maximum moves into the mask.
        let s = summarize_map(&map, &gt, Rect { left: 2, top: 0, width: 2, height: 2 }).unwrap();
        assert_eq!((s.hit, s.argmax), (Some(true), (3, 0)));
        assert_eq!(s.iou(1024, IouSlice::TpFpFn), 0.25);
        // Ties: the first maximum in row-major order.
        let flat = [1.0f32; 4];
        let s = summarize_map(&SaliencyMap { values: &flat, width: 2, height: 2 }, &gt, full).unwrap();
        assert_eq!((s.argmax, s.hit), ((0, 0), Some(false)));
        // A constant map segments nothing: IoU 0 over TP, FP, FN; undefined over TP only.
        assert_eq!((s.segmented[0], s.iou(0, IouSlice::TpFpFn)), (0, 0.0));
        assert!(s.iou(0, IouSlice::TpOnly).is_nan());
        let empty = Mask::new(4, 4);
        let s = summarize_map(&map, &empty, full).unwrap();
        assert_eq!(s.hit, None);
        assert!(summarize_map(&SaliencyMap { values: &[f32::NAN; 4], width: 2, height: 2 }, &gt, full).is_err());
    }

    #[test]
    fn search_moves_towards_the_best_threshold() {
        // One image, map = column index on 0..2048; mask = the right part from 1536 (threshold 0.75).
        let w = 2049;
        let values: Vec<f32> = (0..w).map(|x| x as f32).collect();
        let gt = mask(w, 1, |x, _| x > 1536);
        let s = summarize_map(
            &SaliencyMap { values: &values, width: w, height: 1 },
            &gt,
            Rect { left: 0, top: 0, width: w, height: 1 },
        )
        .unwrap();
        let (j, m) = tune_threshold(&[&s], IouSlice::TpFpFn);
        assert_eq!((j, m), (1536, 1.0));
        assert_eq!(threshold_value(j), 0.75);
        assert_eq!(threshold_index(0.75), Some(1536));
        assert_eq!(threshold_index(0.3), None);
        assert_eq!(hit_rate(&[&s]), (1.0, 1));
    }
}
