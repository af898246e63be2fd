//! The step scheduler (`diffusion::steps`, issue 25): jobs with different knobs, masks and
//! lengths that join and leave a running set give, each, exactly the bits `Engine` gives
//! for that job alone; a job cancelled midway leaves the others unchanged.

mod common;

use common::fixtures;
use diffstyle::backend::cpu::CpuBackend;
use diffstyle::diffusion::steps::{Stepper, Task};
use diffstyle::dtype::Precision;
use diffstyle::model::unet::UNet;
use diffstyle::model::weights::load_model;

#[test]
fn mixed_jobs_equal_each_alone() {
    common::steps_equal_alone(&CpuBackend::new(0));
}

#[test]
fn bad_jobs_are_refused_and_a_full_stepper_says_so() {
    let model = load_model(&fixtures().join("model"), None, None).unwrap();
    let be = CpuBackend::new(0);
    let unet = UNet::new(&be, &model, Precision::F32).unwrap();
    let mut st = Stepper::new(&be, &unet, &model.schedule, 1).unwrap();
    let e = st.admit(Task::Invert { x0: vec![0.0; 5].into(), steps: 4 }).unwrap_err();
    assert!(e.to_string().contains("the model needs"), "{e}");
    let n = 3 * model.arch.sample_size * model.arch.sample_size;
    let first = st.admit(Task::Invert { x0: vec![0.1; n].into(), steps: 4 }).unwrap().expect("a free lane");
    assert!(st.admit(Task::Invert { x0: vec![0.1; n].into(), steps: 4 }).unwrap().is_none(), "one lane only");
    // An id kept after its job ended does not name the next job in that lane.
    assert!(st.cancel(first));
    let second = st.admit(Task::Invert { x0: vec![0.1; n].into(), steps: 4 }).unwrap().expect("a free lane");
    assert!(!st.cancel(first) && st.progress(first).is_none(), "a stale id reached the new job");
    assert_eq!(st.progress(second), Some((0, 3)));
}
