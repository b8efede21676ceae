//! Where tract spends its time on a model: every node of the optimised plan timed over a few
//! single-threaded runs (how `TractBackend` runs each part), summed per operator kind.
//!
//! ```text
//! cargo run --example tract_profile -- MODEL.onnx [BATCH] [RUNS] [OPERATOR]
//! ```
//! BATCH patches per run (default 32: one thread's half of an image), RUNS timed runs after one
//! warm-up (default 3). Prints the operator kinds by total time, then the 15 slowest nodes (of
//! kind OPERATOR, e.g. MoveAxis, if given). The plan is the engine's (channels-last);
//! `LAYOUT=channels-first` profiles the ONNX graph's own layout instead; `PRECISION=fp16` the fp16
//! plan (tract's native fp16 kernels on ARM CPUs with FP16; emulated, and so slow, elsewhere).
use medpatch_engine::Precision;
use medpatch_engine::backend::tract::{ConvLayout, input, optimise};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!("usage: tract_profile MODEL.onnx [BATCH] [RUNS]");
        std::process::exit(2);
    };
    let batch: usize = args.get(1).map_or(Ok(32), |s| s.parse())?;
    let runs: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let only = args.get(3);
    let model = medpatch_engine::Model::from_path(std::path::Path::new(path))?;
    let (channels, patch) = (model.channels, model.patch_size());

    let layout = match std::env::var("LAYOUT").as_deref() {
        Ok("channels-first") => ConvLayout::ChannelsFirst,
        _ => ConvLayout::ChannelsLast,
    };

    let precision: Precision =
        std::env::var("PRECISION").as_deref().unwrap_or("f32").parse().map_err(TractError::msg)?;

    let shape = [batch, channels, patch, patch];
    let started = Instant::now();
    let onnx = tract_onnx::onnx().model_for_read(&mut &model.bytes[..])?;
    let plan = optimise(&onnx, shape, layout, precision)?.into_runnable()?;
    eprintln!("optimised ({layout:?}, {precision}) for batch {batch} in {:.1} s", started.elapsed().as_secs_f64());

    let patches: Vec<f32> = (0..shape.iter().product()).map(|i: usize| (i % 255) as f32 / 127.0 - 1.0).collect();
    let input = input(&patches, shape, precision)?;
    let mut per_node: HashMap<usize, (String, String, Duration)> = HashMap::new();
    let mut wall = Vec::new();
    for run in 0..=runs {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        let started = Instant::now();
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            if run > 0 {
                let entry = per_node
                    .entry(node.id)
                    .or_insert_with(|| (node.op().name().to_string(), node.name.clone(), Duration::ZERO));
                entry.2 += t.elapsed();
            }
            out
        })?;
        if run > 0 {
            wall.push(started.elapsed());
        }
    }
    wall.sort();
    let median = wall[wall.len() / 2];
    println!(
        "median run: {:.1} ms for {batch} patches ({:.2} ms/patch), {} nodes",
        ms(median),
        ms(median) / batch as f64,
        per_node.len()
    );

    let total: Duration = per_node.values().map(|(_, _, d)| *d).sum();
    let mut by_kind: HashMap<&str, (usize, Duration)> = HashMap::new();
    for (kind, _, d) in per_node.values() {
        let e = by_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += *d;
    }
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
    println!("\n| operator | nodes | ms / run | share |\n|---|---|---|---|");
    for (kind, (count, d)) in kinds {
        println!(
            "| {kind} | {count} | {:.1} | {:.1}% |",
            ms(d) / runs as f64,
            100.0 * d.as_secs_f64() / total.as_secs_f64()
        );
    }

    let mut nodes: Vec<_> = per_node.into_values().collect();
    nodes.retain(|(kind, _, _)| only.is_none_or(|o| o == kind));
    nodes.sort_by_key(|(_, _, d)| std::cmp::Reverse(*d));
    println!("\n| slowest nodes | operator | ms / run |\n|---|---|---|");
    for (kind, name, d) in nodes.iter().take(15) {
        println!("| {name} | {kind} | {:.2} |", ms(*d) / runs as f64);
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
