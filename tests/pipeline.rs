//! The library API (`diffstyle::pipeline`): a batch gives each pair's lone result (both
//! schedulings), the cache inverts a shared image once, inversions round-trip through
//! cache files, bad calls are errors; submitted requests (the step scheduler) with
//! different knobs give their lone results, report progress, and a cancelled one frees
//! its lane within one step.

mod common;

use std::sync::Arc;

use diffstyle::diffusion::method::Preset;
use diffstyle::pipeline::{
    Cancelled, DeviceChoice, Knobs, ModelSource, Pair, Pipeline, PipelineOptions, Request, Scheduling, Source,
};

fn pipeline(max_batch: usize, cache_mib: usize) -> Pipeline {
    pipeline_with(Scheduling::Step, max_batch, cache_mib)
}

fn pipeline_with(scheduling: Scheduling, max_batch: usize, cache_mib: usize) -> Pipeline {
    pipeline_opts(PipelineOptions { scheduling, max_batch, cache_mib, ..Default::default() })
}

fn pipeline_opts(o: PipelineOptions) -> Pipeline {
    let (scheduling, max_batch, cache_mib, long_every) = (o.scheduling, o.max_batch, o.cache_mib, o.long_every);
    let opts = PipelineOptions {
        device: DeviceChoice::Cpu,
        threads: 1,
        scheduling,
        max_batch,
        small_batches: true,
        cache_mib,
        long_every,
        ..Default::default()
    };
    Pipeline::load(&ModelSource::path(common::fixtures().join("model")), &opts).expect("the fixture model loads")
}

fn knobs() -> diffstyle::diffusion::method::Settings {
    let mut k = Knobs { preset: Some(Preset::Fast), ..Default::default() };
    for (n, v) in [("inv_steps", "5"), ("gen_steps", "7"), ("gamma", "0.7"), ("t_boost", "500")] {
        k.set(n, v).unwrap();
    }
    k.settings()
}

/// A seeded image in model space.
fn image(p: &Pipeline, seed: u32) -> diffstyle::pipeline::Image {
    let n = 3 * p.info().sample_size * p.info().sample_size;
    let mut x = seed.wrapping_mul(747796405).wrapping_add(1);
    let v = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    p.image_from_model_space(v).unwrap()
}

#[test]
fn a_batch_gives_each_pairs_lone_result_and_shared_images_invert_once() {
    batch_equals_lone(Scheduling::Step);
}

#[test]
fn batch_scheduling_gives_each_pairs_lone_result_too() {
    batch_equals_lone(Scheduling::Batch);
}

fn batch_equals_lone(scheduling: Scheduling) {
    let p = pipeline_with(scheduling, 4, 64);
    let engines = if scheduling == Scheduling::Batch { vec![1, 2, 4] } else { vec![4] };
    assert_eq!(p.info().batches, engines);
    let s = knobs();
    let style = image(&p, 1);
    let contents: Vec<_> = (2..5).map(|k| image(&p, k)).collect();
    let alone: Vec<Vec<f32>> = contents
        .iter()
        .map(|c| p.transfer(&Source::Image(c.clone()), &Source::Image(style.clone()), &s, None).unwrap().x)
        .collect();
    // Alone means the batch engine alone, whichever scheduling is under test.
    let r = pipeline_with(Scheduling::Batch, 1, 0);
    for (k, c) in contents.iter().enumerate() {
        let x = r.transfer(&Source::Image(c.clone()), &Source::Image(style.clone()), &s, None).unwrap().x;
        assert!(x == alone[k], "pair {k}: differs from the batch engine's lone run");
    }
    let st = p.cache_stats();
    // 4 distinct images, the style inverted once and found twice.
    assert_eq!((st.misses, st.hits, st.entries), (4, 2, 4));
    let pairs: Vec<Pair> = contents
        .iter()
        .map(|c| Pair { content: Source::Image(c.clone()), style: Source::Image(style.clone()) })
        .collect();
    let mut ticks = 0;
    let together = p.transfer_batch(&pairs, &s, None, &mut || ticks += 1).unwrap();
    assert_eq!(ticks, s.gen_steps, "all inversions cached: one generation batch of 7 steps");
    for (k, o) in together.iter().enumerate() {
        assert!(o.x == alone[k], "pair {k}: the batch differs from the lone run");
    }
    assert_ne!(alone[0], alone[1]);
    // The style's inversion by id, and through a cache file.
    let id = p.inversion_id(&style, s.inv_steps);
    let inv = p.cached(&id).expect("cached");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("style.safetensors");
    p.save_inversion(&f, &inv, s.inv_steps, "style").unwrap();
    let back = p.load_inversion(&f, s.inv_steps).unwrap();
    assert!(back.x_t == inv.x_t && back.h == inv.h);
    let via_file = p.transfer(&Source::Image(contents[0].clone()), &Source::Inversion(back), &s, None).unwrap();
    assert!(via_file.x == alone[0]);
    assert!(p.load_inversion(&f, 6).is_err(), "a cache of other steps is refused");
}

#[test]
fn bad_calls_are_errors() {
    let p = pipeline(1, 0);
    let s = knobs();
    let (a, b) = (image(&p, 1), image(&p, 2));
    let bad = diffstyle::diffusion::method::Settings { gamma: 2.0, ..s.clone() };
    let e = p.transfer(&Source::Image(a.clone()), &Source::Image(b.clone()), &bad, None).unwrap_err();
    assert!(format!("{e:#}").contains("--gamma"), "{e:#}");
    assert!(p.image_from_model_space(vec![0.0; 5]).is_err());
    assert!(p.image_from_bytes(b"not an image", "upload").is_err());
    // An inversion of other steps than the settings'.
    let inv = p.invert(&a, 4).unwrap();
    let e = p.transfer(&Source::Image(b), &Source::Inversion(inv), &s, None).unwrap_err();
    assert!(format!("{e:#}").contains("inv_steps 5"), "{e:#}");
    // No cache: nothing kept, no id found.
    assert!(p.cached(&p.inversion_id(&a, 4)).is_none());
    let mask = diffstyle::pipeline::Mask(Arc::from(vec![1.0f32; 3]));
    let e = p.transfer(&Source::Image(a.clone()), &Source::Image(a), &s, Some(&mask)).unwrap_err();
    assert!(format!("{e:#}").contains("mask"), "{e:#}");
}

/// A transfer of cached inversions (no inversion steps in the request).
fn transfer_of(
    c: &Arc<diffstyle::diffusion::method::Inversion>,
    st: &Arc<diffstyle::diffusion::method::Inversion>,
    s: &diffstyle::diffusion::method::Settings,
) -> Request {
    Request::Transfer {
        pair: Pair { content: Source::Inversion(c.clone()), style: Source::Inversion(st.clone()) },
        settings: s.clone(),
        mask: None,
    }
}

#[test]
fn submitted_requests_with_their_own_knobs_give_their_lone_results() {
    let p = pipeline(3, 64);
    let base = knobs();
    let settings = [
        base.clone(),
        diffstyle::diffusion::method::Settings { gamma: 0.3, gen_steps: 11, omega: 0.5, ..base.clone() },
        diffstyle::diffusion::method::Settings { t_edit: 300, seed: 9, ..base.clone() },
        diffstyle::diffusion::method::Settings { gen_steps: 4, ..base.clone() },
    ];
    let (a, b, c) = (image(&p, 11), image(&p, 12), image(&p, 13));
    // Submitted at once from four threads, with images to invert (shared ones among
    // them): 4 requests, 3 lanes, inversions and generations of different lengths.
    let sides = [(&a, &b), (&b, &c), (&c, &a), (&a, &a)];
    // (the image, the progress seen) per request
    type Seen = (Vec<f32>, Vec<(usize, usize)>);
    let together: Vec<Seen> = std::thread::scope(|sc| {
        let hs: Vec<_> = sides
            .iter()
            .zip(&settings)
            .map(|((c, st), s)| {
                let p = &p;
                sc.spawn(move || {
                    let pair = Pair { content: Source::Image((*c).clone()), style: Source::Image((*st).clone()) };
                    let t = p.submit(Request::Transfer { pair, settings: s.clone(), mask: None }).unwrap();
                    let mut seen = vec![];
                    let out = t.wait(&mut |d, n| seen.push((d, n))).unwrap().into_output().unwrap();
                    (out.x, seen)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Each image inverted once, whoever asked first.
    assert_eq!(p.cache_stats().entries, 3);
    // The reference: each alone on the batch engine (`Engine`, not the stepper).
    let r = pipeline_with(Scheduling::Batch, 1, 0);
    for (k, ((c, st), s)) in sides.iter().zip(&settings).enumerate() {
        let alone = r.transfer(&Source::Image((*c).clone()), &Source::Image((*st).clone()), s, None).unwrap();
        assert!(together[k].0 == alone.x, "request {k} differs from its lone run");
        // Progress only grows and ends at the total: its generation's steps and
        // those of its inversions (one when both sides are the same image).
        let seen = &together[k].1;
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "request {k}: progress went back: {seen:?}");
        let inversions = if c.digest == st.digest { 1 } else { 2 };
        let total = s.gen_steps + inversions * (s.inv_steps - 1);
        assert!(seen.iter().all(|&(_, n)| n == total), "request {k}: totals {seen:?}, want {total}");
        assert_eq!(seen.last(), Some(&(total, total)), "request {k}: progress did not end at its total");
    }
    assert_ne!(together[0].0, together[3].0);
    assert!(p.step_batches().keys().any(|&n| n > 1), "the requests never shared a step");
    assert!(p.step_batches().keys().all(|&n| n <= 3), "more jobs in a step than lanes");
}

#[test]
fn a_cancelled_request_frees_its_lane_within_one_step() {
    // One lane: the second request can only run once the first has left.
    let p = pipeline(1, 0);
    let s = knobs();
    let inv = p.invert(&image(&p, 21), s.inv_steps).unwrap();
    let other = p.invert(&image(&p, 22), s.inv_steps).unwrap();
    let before: u64 = p.step_batches().values().sum();
    let long = diffstyle::diffusion::method::Settings { gen_steps: 400, ..s.clone() };
    let first = p.submit(transfer_of(&inv, &other, &long)).unwrap();
    while first.progress().0 < 3 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let second = p.submit(transfer_of(&other, &inv, &s)).unwrap();
    first.cancel();
    // Read after the cancel: at most the step running then can still finish.
    let at_cancel = first.progress().0;
    let Err(e) = first.wait(&mut |_, _| {}) else { panic!("the cancelled request was answered") };
    assert!(e.downcast_ref::<Cancelled>().is_some(), "{e:#}");
    let got = second.wait(&mut |_, _| {}).unwrap().into_output().unwrap();
    let steps: u64 = p.step_batches().values().sum::<u64>() - before;
    assert!(at_cancel < 400, "the first request was not cancelled mid-run");
    assert!(
        steps <= (at_cancel + 1 + s.gen_steps) as u64,
        "{steps} steps ran: the cancelled request ran past one step after its cancel ({at_cancel})"
    );
    assert_eq!(p.cancelled(), 1);
    // The request after it is unchanged by the cancelled one (against the batch engine).
    let r = pipeline_with(Scheduling::Batch, 1, 0);
    let alone = r.transfer(&Source::Inversion(other), &Source::Inversion(inv), &s, None).unwrap();
    assert!(got.x == alone.x);
    // A ticket dropped unanswered cancels too.
    let dropped = p.submit(transfer_of(&alone_inv(&p), &alone_inv(&p), &long)).unwrap();
    drop(dropped);
    let t0 = std::time::Instant::now();
    while p.cancelled() < 2 && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(p.cancelled(), 2, "a dropped ticket did not cancel its request");
}

fn alone_inv(p: &Pipeline) -> Arc<diffstyle::diffusion::method::Inversion> {
    p.invert(&image(p, 23), knobs().inv_steps).unwrap()
}

/// Steps a 400-step request takes while a 40-step one joins it and runs to its end, with
/// long requests advancing on every `long_every`-th step.
fn long_steps_beside_a_short_one(long_every: usize) -> usize {
    let p = pipeline_opts(PipelineOptions { max_batch: 2, long_every: Some(long_every), ..Default::default() });
    let s = knobs();
    let (a, b) = (p.invert(&image(&p, 31), s.inv_steps).unwrap(), p.invert(&image(&p, 32), s.inv_steps).unwrap());
    let long = p.submit(transfer_of(&a, &b, &diffstyle::diffusion::method::Settings { gen_steps: 400, ..s.clone() }));
    let long = long.unwrap();
    while long.progress().0 < 3 {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let short = diffstyle::diffusion::method::Settings { gen_steps: 40, ..s.clone() };
    let before = long.progress().0;
    let out = p.submit(transfer_of(&b, &a, &short)).unwrap().wait(&mut |_, _| {}).unwrap().into_output().unwrap();
    let during = long.progress().0 - before;
    // Unchanged by sharing its steps with a held job.
    let r = pipeline_with(Scheduling::Batch, 1, 0);
    assert!(out.x == r.transfer(&Source::Inversion(b), &Source::Inversion(a), &short, None).unwrap().x);
    during
}

#[test]
fn a_long_request_yields_to_a_short_one_where_steps_cost_their_jobs() {
    // Every 4th step while the short one runs (and a few before it joined) ...
    let yielding = long_steps_beside_a_short_one(4);
    assert!(yielding <= 40 / 4 + 4, "the long request took {yielding} of the short one's 40 steps");
    // ... against every step without yielding.
    let sharing = long_steps_beside_a_short_one(1);
    assert!(sharing >= 40, "the long request took only {sharing} of the short one's 40 steps");
}
