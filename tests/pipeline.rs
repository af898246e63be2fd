//! The library API (`diffstyle::pipeline`): a batch gives each pair's lone result, the
//! cache inverts a shared image once, inversions round-trip through cache files, and
//! bad calls are errors.

mod common;

use std::sync::Arc;

use diffstyle::diffusion::method::Preset;
use diffstyle::pipeline::{DeviceChoice, Knobs, ModelSource, Pair, Pipeline, PipelineOptions, Source};

fn pipeline(max_batch: usize, cache_mib: usize) -> Pipeline {
    let opts = PipelineOptions {
        device: DeviceChoice::Cpu,
        threads: 1,
        max_batch,
        small_batches: true,
        cache_mib,
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
    let p = pipeline(4, 64);
    assert_eq!(p.info().batches, vec![1, 2, 4]);
    let s = knobs();
    let style = image(&p, 1);
    let contents: Vec<_> = (2..5).map(|k| image(&p, k)).collect();
    let alone: Vec<Vec<f32>> = contents
        .iter()
        .map(|c| p.transfer(&Source::Image(c.clone()), &Source::Image(style.clone()), &s, None).unwrap().x)
        .collect();
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
