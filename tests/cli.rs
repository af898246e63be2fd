//! End-to-end tests of the `diffstyle` binary: every bad input of DEVELOPERS.md
//! ("Bad input") fails with exit code 1, an `error:` line naming the file and the
//! problem, no panic and no output file; the happy paths write what they promise; and
//! `transfer --dump-tensor` matches the PyTorch goldens of `tests/fixtures/method`.
//!
//! Every run uses the tiny 32x32 fixture model and, except in the parity tests, very
//! few steps, so the whole file runs in seconds.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use tempfile::TempDir;

// ---------------------------------------------------------------------------------
// Helpers

/// Few steps: enough to exercise every code path, cheap enough for CI.
const FAST: [(&str, &str); 3] = [("--inv-steps", "5"), ("--gen-steps", "8"), ("--replace-steps", "8")];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("method/model")
}

fn content_png() -> PathBuf {
    fixtures().join("method/defaults/content.png")
}

fn style_png() -> PathBuf {
    fixtures().join("method/defaults/style.png")
}

fn ddpm_file() -> PathBuf {
    fixtures().join("unet/ddpm_format/model.safetensors")
}

/// Runs the binary. One CPU thread per run: the tests themselves run in parallel.
fn diffstyle<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffstyle"))
        .arg("--threads")
        .arg("1")
        .args(args)
        .output()
        .expect("cannot start the diffstyle binary")
}

fn os<S: AsRef<OsStr>>(parts: &[S]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

/// `transfer` of one pair with the FAST knobs, except those named in `knobs`, which
/// are passed instead.
fn transfer_args(model: &Path, content: &Path, style: &Path, out: &Path, knobs: &[&str]) -> Vec<OsString> {
    let mut a = os(&[OsStr::new("transfer"), OsStr::new("--model"), model.as_os_str()]);
    a.extend(os(&[OsStr::new("--content"), content.as_os_str(), OsStr::new("--style"), style.as_os_str()]));
    a.extend(os(&[OsStr::new("--out"), out.as_os_str()]));
    for (k, v) in FAST {
        if !knobs.contains(&k) {
            a.extend(os(&[k, v]));
        }
    }
    a.extend(os(knobs));
    a
}

/// A temporary folder: inputs are made at its root, outputs go to `out/`, which must
/// stay empty when a run fails.
struct Sandbox {
    dir: TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir(dir.path().join("out")).expect("out dir");
        Self { dir }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn out_dir(&self) -> PathBuf {
        self.path("out")
    }
    fn out(&self) -> PathBuf {
        self.out_dir().join("result.png")
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, bytes).expect("write input");
        p
    }
    /// Files in `out/`, sorted.
    fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.out_dir())
            .expect("read out dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
    /// A transfer of the default pair into `out/result.png` with FAST knobs + `knobs`.
    fn transfer(&self, model: &Path, content: &Path, style: &Path, knobs: &[&str]) -> Output {
        diffstyle(&transfer_args(model, content, style, &self.out(), knobs))
    }
}

/// The run failed cleanly: exit code exactly 1 (101 would be a panic, no code a
/// signal), an `error:` line containing every needle, no panic message.
#[track_caller]
fn assert_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "the binary panicked:\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status {:?} (101 = panic, none = signal); stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("error:"), "no `error:` on stderr:\n{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr does not mention {n:?}:\n{stderr}");
    }
}

/// Nothing was written to `out/`: no output file, no leftover temporary file.
#[track_caller]
fn assert_nothing_written(sb: &Sandbox) {
    assert!(!sb.out().exists(), "the output file exists after a failure");
    let left = sb.outputs();
    assert!(left.is_empty(), "files left in the output folder after a failure: {left:?}");
}

/// A failing `transfer` of the default pair, checked end to end.
#[track_caller]
fn transfer_fails(sb: &Sandbox, model: &Path, content: &Path, style: &Path, knobs: &[&str], needles: &[&str]) {
    let out = sb.transfer(model, content, style, knobs);
    assert_error(&out, needles);
    assert_nothing_written(sb);
}

#[track_caller]
fn assert_success(out: &Output) {
    assert!(out.status.success(), "diffstyle failed with {:?}:\n{}", out.status, String::from_utf8_lossy(&out.stderr));
}

fn png_size(path: &Path) -> (u32, u32) {
    let img = image::open(path).unwrap_or_else(|e| panic!("{}: not a decodable image: {e}", path.display()));
    (img.width(), img.height())
}

/// The `x0` tensor of a `--dump-tensor` file, checked to be f32 `[1, 3, 32, 32]`.
fn dumped_x0(path: &Path) -> Vec<f32> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("dump is safetensors");
    let t = st.tensor("x0").expect("dump has x0");
    assert_eq!(t.dtype(), Dtype::F32);
    assert_eq!(t.shape(), [1, 3, 32, 32]);
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// One stored tensor: name, dtype, shape, raw little-endian bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

fn fixture_tensors() -> Vec<Stored> {
    let bytes = fs::read(model_dir().join("diffusion_pytorch_model.safetensors")).expect("fixture weights");
    let st = SafeTensors::deserialize(&bytes).expect("fixture is safetensors");
    let mut v: Vec<Stored> =
        st.tensors().into_iter().map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A copy of the fixture model folder at `sb/name`, with its weights rewritten by
/// `edit` and its config.json by `edit_config`.
fn model_copy(
    sb: &Sandbox,
    name: &str,
    edit: impl FnOnce(&mut Vec<Stored>),
    edit_config: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let dir = sb.path(name);
    fs::create_dir(&dir).expect("model dir");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(model_dir().join("config.json")).unwrap()).unwrap();
    edit_config(&mut cfg);
    fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    fs::copy(model_dir().join("scheduler_config.json"), dir.join("scheduler_config.json")).unwrap();
    let mut tensors = fixture_tensors();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).expect("consistent tensor")))
        .collect();
    safetensors::tensor::serialize_to_file(views, &None, &dir.join("diffusion_pytorch_model.safetensors"))
        .expect("write weights");
    dir
}

/// A copy of the fixture model with its weights rewritten by `edit`.
fn model_with(sb: &Sandbox, edit: impl FnOnce(&mut Vec<Stored>)) -> PathBuf {
    model_copy(sb, "model", edit, |_| {})
}

/// A copy of the fixture model folder whose weights file is replaced by `bytes`.
fn model_with_weight_bytes(sb: &Sandbox, bytes: &[u8]) -> PathBuf {
    let dir = model_with(sb, |_| {});
    fs::write(dir.join("diffusion_pytorch_model.safetensors"), bytes).unwrap();
    dir
}

fn tensor_mut<'a>(tensors: &'a mut [Stored], name: &str) -> &'a mut Stored {
    tensors.iter_mut().find(|t| t.0 == name).unwrap_or_else(|| panic!("fixture has no {name}"))
}

// ---------------------------------------------------------------------------------
// Bad input 1: images

#[test]
fn image_missing() {
    let sb = Sandbox::new();
    let missing = sb.path("no_such_content.png");
    transfer_fails(&sb, &model_dir(), &missing, &style_png(), &[], &["no_such_content.png", "file not found"]);
}

#[test]
fn image_missing_style() {
    let sb = Sandbox::new();
    let missing = sb.path("no_such_style.png");
    transfer_fails(&sb, &model_dir(), &content_png(), &missing, &[], &["no_such_style.png", "file not found"]);
}

#[test]
fn image_not_an_image() {
    let sb = Sandbox::new();
    let text = sb.write("notes.png", b"these are notes, not pixels\n");
    transfer_fails(&sb, &model_dir(), &text, &style_png(), &[], &["notes.png", "not an image"]);
}

#[test]
fn image_truncated() {
    let sb = Sandbox::new();
    let png = fs::read(content_png()).unwrap();
    let half = sb.write("half.png", &png[..png.len() / 2]);
    transfer_fails(&sb, &model_dir(), &half, &style_png(), &[], &["half.png", "truncated"]);
}

#[test]
fn image_zero_bytes() {
    let sb = Sandbox::new();
    let empty = sb.write("empty.png", b"");
    transfer_fails(&sb, &model_dir(), &content_png(), &empty, &[], &["empty.png", "empty (0 bytes)"]);
}

#[test]
fn invert_image_missing() {
    let sb = Sandbox::new();
    let cache = sb.out_dir().join("c.safetensors");
    let missing = sb.path("gone.png");
    let out = diffstyle(&os(&[
        OsStr::new("invert"),
        OsStr::new("--model"),
        model_dir().as_os_str(),
        OsStr::new("--image"),
        missing.as_os_str(),
        OsStr::new("--out"),
        cache.as_os_str(),
        OsStr::new("--inv-steps"),
        OsStr::new("5"),
    ]));
    assert_error(&out, &["gone.png", "file not found"]);
    assert_nothing_written(&sb);
}

// ---------------------------------------------------------------------------------
// Bad input 2: masks

#[test]
fn mask_missing() {
    let sb = Sandbox::new();
    let mask = sb.path("no_mask.png");
    let knobs = ["--mask", mask.to_str().unwrap()];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &knobs, &["no_mask.png", "file not found"]);
}

#[test]
fn mask_not_an_image() {
    let sb = Sandbox::new();
    let mask = sb.write("mask.png", b"{\"white\": \"content\"}");
    let knobs = ["--mask", mask.to_str().unwrap()];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &knobs, &["mask.png", "not an image"]);
}

// ---------------------------------------------------------------------------------
// Bad input 3: weights files

#[test]
fn weights_missing() {
    let sb = Sandbox::new();
    let dir = model_with(&sb, |_| {});
    fs::remove_file(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &["no diffusion_pytorch_model.safetensors"]);
}

#[test]
fn model_path_missing() {
    let sb = Sandbox::new();
    let nowhere = sb.path("nowhere.safetensors");
    let knobs = ["--arch", "ddpm-256"];
    transfer_fails(&sb, &nowhere, &content_png(), &style_png(), &knobs, &["nowhere.safetensors", "does not exist"]);
}

#[test]
fn weights_bad_header() {
    let sb = Sandbox::new();
    let header = b"{not json at all}";
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 64]);
    let dir = model_with_weight_bytes(&sb, &bytes);
    let needles = ["diffusion_pytorch_model.safetensors", "bad safetensors header", "not JSON"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn weights_not_safetensors() {
    let sb = Sandbox::new();
    // A PNG where the weights should be: its first 8 bytes read as an absurd length.
    let dir = model_with_weight_bytes(&sb, &fs::read(content_png()).unwrap());
    let needles = ["diffusion_pytorch_model.safetensors", "not a safetensors file"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn weights_truncated() {
    let sb = Sandbox::new();
    let full = fs::read(model_dir().join("diffusion_pytorch_model.safetensors")).unwrap();
    let dir = model_with_weight_bytes(&sb, &full[..full.len() * 3 / 5]);
    let needles = ["diffusion_pytorch_model.safetensors", "truncated safetensors file"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

// ---------------------------------------------------------------------------------
// Bad input 4: tensors

#[test]
fn weights_missing_tensor() {
    let sb = Sandbox::new();
    let dir = model_with(&sb, |t| t.retain(|t| t.0 != "mid_block.attentions.0.to_q.weight"));
    let needles = ["diffusion_pytorch_model.safetensors", "1 missing tensor(s): mid_block.attentions.0.to_q.weight"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn weights_unexpected_tensor() {
    let sb = Sandbox::new();
    let dir = model_with(&sb, |t| {
        t.push(("extra_head.weight".into(), Dtype::F32, vec![2], 1f32.to_le_bytes().repeat(2)));
    });
    let needles = ["diffusion_pytorch_model.safetensors", "1 unexpected tensor(s): extra_head.weight"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn weights_wrong_shape() {
    let sb = Sandbox::new();
    // Same data, other shape: only the shape check can catch it.
    let dir = model_with(&sb, |t| tensor_mut(t, "conv_in.bias").2 = vec![2, 16]);
    let needles = ["diffusion_pytorch_model.safetensors", "wrong shape", "conv_in.bias: expected [32], got [2, 16]"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn weights_nan() {
    let sb = Sandbox::new();
    let dir = model_with(&sb, |t| tensor_mut(t, "conv_out.weight").3[4..8].copy_from_slice(&f32::NAN.to_le_bytes()));
    let needles = ["diffusion_pytorch_model.safetensors", "non-finite values", "conv_out.weight"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

// ---------------------------------------------------------------------------------
// Bad input 5: architecture

#[test]
fn config_unsupported_field() {
    let sb = Sandbox::new();
    let dir = model_copy(&sb, "model", |_| {}, |c| c["resnet_time_scale_shift"] = "scale_shift".into());
    let needles = ["config.json", "unsupported resnet_time_scale_shift", "scale_shift"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

#[test]
fn arch_unknown() {
    let sb = Sandbox::new();
    let needles = ["model.safetensors", "unknown architecture preset", "ddpm-512", "known: ddpm-256"];
    transfer_fails(&sb, &ddpm_file(), &content_png(), &style_png(), &["--arch", "ddpm-512"], &needles);
}

#[test]
fn info_arch_unknown() {
    let out = diffstyle(&["info", "--arch", "ddpm-512"]);
    assert_error(&out, &["unknown architecture preset", "ddpm-512"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn single_safetensors_without_config() {
    let sb = Sandbox::new();
    let needles = ["model.safetensors", "single weights file", "--config", "--arch"];
    transfer_fails(&sb, &ddpm_file(), &content_png(), &style_png(), &[], &needles);
}

// ---------------------------------------------------------------------------------
// Bad input 6: knobs out of range

#[test]
fn gamma_above_one() {
    let sb = Sandbox::new();
    let needles = ["--gamma must be in [0, 1]", "1.5"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--gamma", "1.5"], &needles);
}

#[test]
fn gamma_negative() {
    let sb = Sandbox::new();
    let needles = ["--gamma must be in [0, 1]", "-0.1"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--gamma", "-0.1"], &needles);
}

#[test]
fn inv_steps_one() {
    let sb = Sandbox::new();
    let needles = ["--inv-steps must be at least 2", "got 1"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--inv-steps", "1"], &needles);
}

#[test]
fn gen_steps_one() {
    let sb = Sandbox::new();
    let needles = ["--gen-steps must be at least 2", "got 1"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--gen-steps", "1"], &needles);
}

#[test]
fn t_edit_1000() {
    let sb = Sandbox::new();
    let needles = ["--t-edit must be in [0, 999]", "got 1000"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--t-edit", "1000"], &needles);
}

#[test]
fn t_boost_negative() {
    let sb = Sandbox::new();
    let needles = ["--t-boost must be in [0, 999]", "got -1"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &["--t-boost", "-1"], &needles);
}

#[test]
fn invert_steps_one() {
    let sb = Sandbox::new();
    let cache = sb.out_dir().join("c.safetensors");
    let mut args = os(&[OsStr::new("invert"), OsStr::new("--model"), model_dir().as_os_str()]);
    args.extend(os(&[OsStr::new("--image"), content_png().as_os_str(), OsStr::new("--out"), cache.as_os_str()]));
    args.extend(os(&["--inv-steps", "1"]));
    assert_error(&diffstyle(&args), &["--inv-steps must be at least 2"]);
    assert_nothing_written(&sb);
}

// ---------------------------------------------------------------------------------
// Bad input 7: inversion caches

fn invert(model: &Path, image: &Path, out: &Path, inv_steps: &str) -> Output {
    let mut args = os(&[OsStr::new("invert"), OsStr::new("--model"), model.as_os_str()]);
    args.extend(os(&[OsStr::new("--image"), image.as_os_str(), OsStr::new("--out"), out.as_os_str()]));
    args.extend(os(&["--inv-steps", inv_steps]));
    diffstyle(&args)
}

#[test]
fn cache_from_another_model() {
    let sb = Sandbox::new();
    // The same architecture with one weight nudged: only the hash can tell.
    let other = model_with(&sb, |t| {
        let b = &mut tensor_mut(t, "conv_out.bias").3;
        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + 0.01;
        b[..4].copy_from_slice(&v.to_le_bytes());
    });
    let cache = sb.path("content_other.safetensors");
    assert_success(&invert(&other, &content_png(), &cache, "5"));
    let needles = ["content_other.safetensors", "made with another model", "invert the image again"];
    transfer_fails(&sb, &model_dir(), &cache, &style_png(), &[], &needles);
}

#[test]
fn cache_with_other_inv_steps() {
    let sb = Sandbox::new();
    let cache = sb.path("style_6.safetensors");
    assert_success(&invert(&model_dir(), &style_png(), &cache, "6"));
    let needles = ["style_6.safetensors", "made with --inv-steps 6, the run uses 5"];
    transfer_fails(&sb, &model_dir(), &content_png(), &cache, &[], &needles);
}

// ---------------------------------------------------------------------------------
// Bad input 8: out of memory

/// The fixture's weights under a config whose resolution makes the activation arena
/// larger than any address space (~1.8 PiB): the weights still match, so only the
/// allocation can fail.
fn huge_model(sb: &Sandbox) -> PathBuf {
    model_copy(sb, "huge", |_| {}, |c| c["sample_size"] = (1u64 << 20).into())
}

#[test]
fn out_of_memory() {
    let sb = Sandbox::new();
    let dir = huge_model(&sb);
    let needles = ["huge", "activation arena", "out of memory"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

/// The same on the GPU backend's device (the emulator's allocator): an error naming the
/// model, no abort.
#[test]
fn out_of_memory_on_the_device() {
    let sb = Sandbox::new();
    let dir = huge_model(&sb);
    let mut args = os(&["--device", "emu"]);
    args.extend(transfer_args(&dir, &content_png(), &style_png(), &sb.out(), &[]));
    assert_error(&diffstyle(&args), &["huge", "activation arena", "out of memory"]);
    assert_nothing_written(&sb);
}

#[test]
fn out_of_memory_invert_and_sample() {
    let sb = Sandbox::new();
    let dir = huge_model(&sb);
    let out = invert(&dir, &content_png(), &sb.out_dir().join("c.safetensors"), "5");
    assert_error(&out, &["huge", "activation arena", "out of memory"]);
    let grid = sb.out_dir().join("grid.png");
    let out = diffstyle(&os(&[
        OsStr::new("sample"),
        OsStr::new("--model"),
        dir.as_os_str(),
        OsStr::new("--steps"),
        OsStr::new("5"),
        OsStr::new("--out"),
        grid.as_os_str(),
    ]));
    assert_error(&out, &["huge", "activation arena", "out of memory"]);
    assert_nothing_written(&sb);
}

#[test]
fn info_on_absurd_architectures() {
    let sb = Sandbox::new();
    // `info` only plans: it reports the arena an architecture would need ...
    let out = diffstyle(&[OsStr::new("info"), OsStr::new("--model"), huge_model(&sb).as_os_str()]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("GFLOP per forward") && stdout.contains("activation arena"), "{stdout}");
    // ... and refuses one whose sizes do not even fit in the address arithmetic.
    let dir = model_copy(&sb, "beyond", |_| {}, |c| c["sample_size"] = (1u64 << 40).into());
    let out = diffstyle(&[OsStr::new("info"), OsStr::new("--model"), dir.as_os_str()]);
    assert_error(&out, &["too large to address"]);
    let needles = ["beyond", "too large to address"];
    transfer_fails(&sb, &dir, &content_png(), &style_png(), &[], &needles);
}

// ---------------------------------------------------------------------------------
// Bad input 9: no GPU, no driver or no kernels in the build

#[test]
fn device_cuda_without_a_gpu() {
    if let Ok(dev) = diffstyle::backend::gpu::cuda::CudaDevice::new(0) {
        use diffstyle::backend::gpu::device::Device;
        eprintln!("skipped: a usable GPU is present ({}), so --device cuda does not fail here", dev.describe());
        return;
    }
    let sb = Sandbox::new();
    let mut args = os(&["--device", "cuda"]);
    args.extend(transfer_args(&model_dir(), &content_png(), &style_png(), &sb.out(), &[]));
    let run = diffstyle(&args);
    assert_error(&run, &["--device cuda"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        ["no GPU kernels", "no NVIDIA driver", "no GPU", "compute capability"].iter().any(|n| stderr.contains(n)),
        "the error does not say why there is no GPU:\n{stderr}"
    );
    assert_nothing_written(&sb);
}

// ---------------------------------------------------------------------------------
// Bad input 10: output folder

#[test]
fn output_folder_missing() {
    let sb = Sandbox::new();
    let out = sb.path("no_such_folder").join("result.png");
    let run = diffstyle(&transfer_args(&model_dir(), &content_png(), &style_png(), &out, &[]));
    assert_error(&run, &["no_such_folder", "does not exist"]);
    assert!(!sb.path("no_such_folder").exists(), "the missing folder was created");
    assert_nothing_written(&sb);
}

#[test]
fn dump_folder_missing() {
    let sb = Sandbox::new();
    let dump = sb.path("no_dump_folder").join("x0.safetensors");
    let knobs = ["--dump-tensor", dump.to_str().unwrap()];
    let needles = ["no_dump_folder", "does not exist"];
    transfer_fails(&sb, &model_dir(), &content_png(), &style_png(), &knobs, &needles);
}

#[test]
fn invert_output_folder_missing() {
    let sb = Sandbox::new();
    let out = invert(&model_dir(), &content_png(), &sb.path("no_cache_folder").join("c.safetensors"), "5");
    assert_error(&out, &["no_cache_folder", "does not exist"]);
    assert!(!sb.path("no_cache_folder").exists());
}

// ---------------------------------------------------------------------------------
// Happy paths

#[test]
fn transfer_single_pair() {
    let sb = Sandbox::new();
    let out = sb.transfer(&model_dir(), &content_png(), &style_png(), &[]);
    assert_success(&out);
    assert_eq!(png_size(&sb.out()), (32, 32));
    assert_eq!(sb.outputs(), ["result.png"]);
}

#[test]
fn transfer_two_by_two_into_folder() {
    let sb = Sandbox::new();
    // Inputs of other sizes and formats: they are centre-cropped and resized to 32x32.
    let c1 = sb.path("face.png");
    let c2 = sb.path("cat.jpg");
    let s1 = sb.path("ink.png");
    let s2 = sb.path("oil.png");
    fs::copy(content_png(), &c1).unwrap();
    fs::copy(fixtures().join("images/rgb_40x30.jpg"), &c2).unwrap();
    fs::copy(style_png(), &s1).unwrap();
    fs::copy(fixtures().join("images/rgb_37x23.png"), &s2).unwrap();
    let folder = sb.out_dir().join("results");
    let mut args = os(&[OsStr::new("transfer"), OsStr::new("--model"), model_dir().as_os_str()]);
    args.extend(os(&[OsStr::new("--content"), c1.as_os_str(), c2.as_os_str()]));
    args.extend(os(&[OsStr::new("--style"), s1.as_os_str(), s2.as_os_str()]));
    args.extend(os(&[OsStr::new("--out"), folder.as_os_str()]));
    for (k, v) in FAST {
        args.extend(os(&[k, v]));
    }
    assert_success(&diffstyle(&args));
    let mut files: Vec<String> =
        fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let pairs = [
        "content_cat_style_ink.png",
        "content_cat_style_oil.png",
        "content_face_style_ink.png",
        "content_face_style_oil.png",
    ];
    let mut want: Vec<&str> = pairs.to_vec();
    want.push("grid.png");
    want.sort();
    assert_eq!(files, want);
    for p in pairs {
        assert_eq!(png_size(&folder.join(p)), (32, 32), "{p}");
    }
    // The authors' grid: (1 + contents) rows x (1 + styles) columns of 32 px cells,
    // padding 1 around and between them.
    assert_eq!(png_size(&folder.join("grid.png")), (100, 100));
    assert_eq!(sb.outputs(), ["results"]);
}

#[test]
fn invert_cache_replaces_the_image() {
    let sb = Sandbox::new();
    let cache = sb.path("content.safetensors");
    let inv = invert(&model_dir(), &content_png(), &cache, "5");
    assert_success(&inv);
    assert!(cache.is_file());

    let from_image = sb.out_dir().join("from_image.safetensors");
    let knobs = ["--dump-tensor", from_image.to_str().unwrap()];
    assert_success(&sb.transfer(&model_dir(), &content_png(), &style_png(), &knobs));
    let png_image = fs::read(sb.out()).unwrap();

    let from_cache = sb.out_dir().join("from_cache.safetensors");
    let knobs = ["--dump-tensor", from_cache.to_str().unwrap()];
    assert_success(&sb.transfer(&model_dir(), &cache, &style_png(), &knobs));
    let png_cache = fs::read(sb.out()).unwrap();

    let (a, b) = (dumped_x0(&from_image), dumped_x0(&from_cache));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "the cache gives another result");
    assert_eq!(png_image, png_cache);
    assert_eq!(sb.outputs(), ["from_cache.safetensors", "from_image.safetensors", "result.png"]);
}

#[test]
fn sample_writes_a_grid() {
    let sb = Sandbox::new();
    let grid = sb.out_dir().join("samples.png");
    let out = diffstyle(&os(&[
        OsStr::new("sample"),
        OsStr::new("--model"),
        model_dir().as_os_str(),
        OsStr::new("-n"),
        OsStr::new("3"),
        OsStr::new("--steps"),
        OsStr::new("5"),
        OsStr::new("--out"),
        grid.as_os_str(),
    ]));
    assert_success(&out);
    // 3 images, ceil(sqrt(3)) = 2 per row: 2 x 2 cells of 32 px, padding 1.
    assert_eq!(png_size(&grid), (67, 67));
    assert_eq!(sb.outputs(), ["samples.png"]);
}

#[test]
fn info_on_the_model() {
    let out = diffstyle(&[OsStr::new("info"), OsStr::new("--model"), model_dir().as_os_str()]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let params: usize = fixture_tensors().iter().map(|t| t.2.iter().product::<usize>()).sum();
    assert!(stdout.contains(&format!("parameters: {params} ")), "{stdout}");
    assert!(stdout.contains("GFLOP per forward"), "{stdout}");
    assert!(stdout.contains("sample size 32x32"), "{stdout}");
}

#[test]
fn info_on_ddpm_256() {
    let out = diffstyle(&["info", "--arch", "ddpm-256"]);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("parameters: 113673219 "), "{stdout}");
    assert!(stdout.contains("GFLOP per forward"), "{stdout}");
    assert!(stdout.contains("sample size 256x256"), "{stdout}");
}

/// Every option of `diffstyle SUB --help` listed in `flags` appears, and every option
/// line of the help is followed by a description.
#[track_caller]
fn check_help(sub: &str, flags: &[&str]) {
    let out = diffstyle(&[sub, "--help"]);
    assert_success(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = help.lines().collect();
    // Option lines ("  -q, --quiet", "      --model <MODEL>"); possible values are
    // indented further.
    let is_option = |l: &str| l.trim_start().starts_with('-') && l.len() - l.trim_start().len() <= 6;
    for f in flags.iter().chain(&["--device", "--precision", "--quiet", "--verbose", "--threads"]) {
        let shown = lines.iter().filter(|l| is_option(l)).any(|l| l.split([' ', ',']).any(|w| w == *f));
        assert!(shown, "`{sub} --help` does not list {f}:\n{help}");
    }
    // The description follows on the same line (short help) or the next (long help);
    // a bare "[default: ...]" is not one.
    let described = |text: &str| {
        let mut depth = 0;
        text.chars().any(|c| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            depth == 0 && c.is_alphanumeric()
        })
    };
    for (i, l) in lines.iter().enumerate() {
        if is_option(l) {
            let same_line = l.trim().split_once("  ").is_some_and(|(_, d)| described(d));
            let next = lines.get(i + 1).copied().unwrap_or("");
            let next_line = !is_option(next) && described(next);
            assert!(same_line || next_line, "`{sub} --help`: {l} has no description:\n{help}");
        }
    }
}

#[test]
fn help_of_every_subcommand() {
    let model = ["--model", "--config", "--arch"];
    let knobs = [
        "--preset",
        "--gamma",
        "--t-edit",
        "--inv-steps",
        "--gen-steps",
        "--replace-steps",
        "--t-boost",
        "--dt-lambda",
        "--dt-end",
        "--omega",
        "--seed",
    ];
    let io = ["--content", "--style", "--out", "--mask", "--dump-tensor"];
    check_help("transfer", &[&model[..], &io[..], &knobs[..]].concat());
    check_help("invert", &[&model[..], &["--image", "--out", "--inv-steps"][..]].concat());
    check_help("sample", &[&model[..], &["-n", "--steps", "--seed", "--out"][..]].concat());
    check_help("info", &[&model[..], &["--plan"][..]].concat());
}

#[test]
fn quiet_prints_nothing_on_success() {
    let sb = Sandbox::new();
    let mut args = os(&["--quiet"]);
    args.extend(transfer_args(&model_dir(), &content_png(), &style_png(), &sb.out(), &[]));
    let out = diffstyle(&args);
    assert_success(&out);
    assert!(out.stderr.is_empty(), "stderr with --quiet: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty(), "stdout with --quiet: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(sb.outputs(), ["result.png"]);
}

#[test]
fn explicit_knobs_override_the_preset() {
    let sb = Sandbox::new();
    let dump = |name: &str, knobs: &[&str]| -> Vec<f32> {
        let path = sb.out_dir().join(name);
        let mut k = vec!["--dump-tensor", path.to_str().unwrap()];
        k.extend_from_slice(knobs);
        assert_success(&sb.transfer(&model_dir(), &content_png(), &style_png(), &k));
        dumped_x0(&path)
    };
    // `fast` with two knobs overridden ...
    let preset = dump("preset.safetensors", &["--preset", "fast", "--gamma", "0.7", "--t-boost", "300"]);
    // ... is the run that names every knob with those values.
    let explicit = dump(
        "explicit.safetensors",
        &[
            "--preset",
            "in-domain",
            "--gamma",
            "0.7",
            "--t-edit",
            "400",
            "--t-boost",
            "300",
            "--dt-lambda",
            "1",
            "--dt-end",
            "950",
            "--omega",
            "0",
            "--seed",
            "1234",
        ],
    );
    // And the overrides do change the result.
    let plain = dump("plain.safetensors", &["--preset", "fast"]);
    assert!(preset.iter().zip(&explicit).all(|(a, b)| a.to_bits() == b.to_bits()), "explicit knobs did not win");
    assert!(preset != plain, "--gamma / --t-boost had no effect");
}

// ---------------------------------------------------------------------------------
// Parity of the CLI with the PyTorch goldens

/// `transfer --dump-tensor` with every knob of `method/<case>/settings.json` passed
/// explicitly; the dumped latent against the golden `x0`.
fn cli_parity(case: &str) {
    let dir = fixtures().join("method").join(case);
    let settings: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("settings.json")).unwrap()).unwrap();
    let sb = Sandbox::new();
    let dump = sb.out_dir().join("x0.safetensors");
    let mut args = os(&[OsStr::new("transfer"), OsStr::new("--model"), model_dir().as_os_str()]);
    args.extend(os(&[OsStr::new("--content"), dir.join("content.png").as_os_str()]));
    args.extend(os(&[OsStr::new("--style"), dir.join("style.png").as_os_str()]));
    args.extend(os(&[OsStr::new("--out"), sb.out().as_os_str(), OsStr::new("--dump-tensor"), dump.as_os_str()]));
    let knobs = [
        ("gamma", "--gamma"),
        ("t_edit", "--t-edit"),
        ("inv_steps", "--inv-steps"),
        ("gen_steps", "--gen-steps"),
        ("replace_steps", "--replace-steps"),
        ("t_boost", "--t-boost"),
        ("dt_lambda", "--dt-lambda"),
        ("dt_end", "--dt-end"),
        ("omega", "--omega"),
        ("seed", "--seed"),
    ];
    for (key, flag) in knobs {
        let v = &settings[key];
        assert!(v.is_number(), "{case}: settings.json has no number {key}");
        args.extend(os(&[flag.to_string(), v.to_string()]));
    }
    if let Some(mask) = settings["mask"].as_str() {
        args.extend(os(&[OsStr::new("--mask"), dir.join(mask).as_os_str()]));
    }
    assert_success(&diffstyle(&args));

    let x = dumped_x0(&dump);
    let bytes = fs::read(dir.join("expected.safetensors")).unwrap();
    let gold = SafeTensors::deserialize(&bytes).unwrap();
    let t = gold.tensor("x0").expect("golden x0");
    let want: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let psnr = diffstyle::tensor::psnr_model_space(&x, &want);
    eprintln!("{case}: CLI vs PyTorch reference {psnr:.1} dB");
    assert!(psnr >= 40.0, "{case}: the CLI's result is {psnr:.1} dB from the golden (< 40 dB)");
    assert_eq!(png_size(&sb.out()), (32, 32));
}

#[test]
fn parity_replace_lt_gen() {
    cli_parity("replace_lt_gen");
}

#[test]
fn parity_mask() {
    cli_parity("mask");
}

// ---------------------------------------------------------------------------------
// The GPU kernels through the emulator, from the command line

/// `--device emu` (the GPU kernels in the host emulator) gives what `--device cpu`
/// gives, in f32 and, within the reduced-precision bound, with bf16 weights.
#[test]
fn device_emu_matches_cpu() {
    let sb = Sandbox::new();
    let run = |device: &str, precision: &str, name: &str| {
        let dump = sb.path(name);
        let mut args = os(&["--device", device, "--precision", precision]);
        let knobs = ["--dump-tensor", dump.to_str().unwrap(), "--inv-steps", "4", "--gen-steps", "6"];
        args.extend(transfer_args(&model_dir(), &content_png(), &style_png(), &sb.out(), &knobs));
        let out = diffstyle(&args);
        assert!(out.status.success(), "{device}: {}", String::from_utf8_lossy(&out.stderr));
        dumped_x0(&dump)
    };
    let cpu = run("cpu", "f32", "cpu.safetensors");
    let emu = run("emu", "f32", "emu.safetensors");
    let emu_bf16 = run("emu", "bf16", "emu_bf16.safetensors");
    let (p32, p16) =
        (diffstyle::tensor::psnr_model_space(&emu, &cpu), diffstyle::tensor::psnr_model_space(&emu_bf16, &cpu));
    eprintln!("emu vs cpu: f32 {p32:.1} dB, bf16 weights {p16:.1} dB");
    assert!(p32 >= 40.0, "emu f32 vs cpu: {p32:.1} dB");
    assert!(p16 >= 30.0, "emu bf16 vs cpu f32: {p16:.1} dB");
}

#[test]
fn info_on_adm_presets() {
    for (arch, params) in [
        ("adm-afhq-256", "93563910"),
        ("adm-ffhq-p2-256", "93563910"),
        ("adm-metfaces-p2-256", "93563910"),
        ("adm-imagenet-256-uncond", "552814086"),
    ] {
        let out = diffstyle(&["--device", "cpu", "info", "--arch", arch]);
        assert_success(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("ADM U-Net"), "{stdout}");
        assert!(stdout.contains(&format!("parameters: {params} ")), "{stdout}");
        assert!(stdout.contains("GFLOP per forward"), "{stdout}");
        assert!(stdout.contains("eps = first 3 of 6 outputs"), "{stdout}");
    }
}

/// `random-model` for an ADM (its flags as `--config`) loads back.
#[test]
fn random_model_adm_loads() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet/adm_film_updown/model.json");
    let stdout = random_model_info(&config, "0");
    assert!(stdout.contains("parameters: 828358 "), "{stdout}");
}

/// `random-model --config config` then `info` on the file it wrote; returns info's stdout.
fn random_model_info(config: &Path, seed: &str) -> String {
    let sb = Sandbox::new();
    let file = sb.out_dir().join("random.safetensors");
    let made = diffstyle(&os(&[
        OsStr::new("random-model"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("--seed"),
        OsStr::new(seed),
        OsStr::new("--out"),
        file.as_os_str(),
    ]));
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let info = diffstyle(&os(&[
        OsStr::new("--device"),
        OsStr::new("cpu"),
        OsStr::new("info"),
        OsStr::new("--model"),
        file.as_os_str(),
        OsStr::new("--config"),
        config.as_os_str(),
    ]));
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    String::from_utf8_lossy(&info.stdout).into_owned()
}

/// `random-model` writes a checkpoint that loads with the same architecture.
#[test]
fn random_model_loads() {
    let stdout = random_model_info(&model_dir().join("config.json"), "3");
    assert!(stdout.contains("parameters: 927139"), "{stdout}");
}

// ---------------------------------------------------------------------------------
// bench

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}: not whole f32 values", path.display());
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// The U-Net output of the fixture model on `x` at t = 500, computed in-process on the CPU.
fn cpu_eps(x: &[f32]) -> Vec<f32> {
    use diffstyle::backend::{cpu::CpuBackend, Backend};
    use diffstyle::dtype::Precision;

    use diffstyle::model::unet::UNet;
    let be = CpuBackend::new(1);
    let model = diffstyle::model::weights::load_model(&model_dir(), None, None).expect("fixture model");
    let unet = UNet::new(&be, &model, Precision::F32).expect("unet");
    let ws = unet.workspace(&be, 1, 1).expect("workspace");
    be.upload(unet.x(&ws), x).expect("upload");
    unet.forward(&be, &ws, &[diffstyle::bench::T]).expect("forward");
    be.download(unet.eps(&ws, 1)).expect("download")
}

fn bench_args(device: &str, dir: &Path, rest: &[&str]) -> Vec<OsString> {
    let mut a = os(&["--device", device, "--quiet", "bench", "--model"]);
    a.push(model_dir().into_os_string());
    a.extend(os(&[OsStr::new("--out-dir"), dir.as_os_str()]));
    a.extend(os(&[OsStr::new("--content"), content_png().as_os_str(), OsStr::new("--style"), style_png().as_os_str()]));
    a.extend(os(rest));
    a
}

/// `bench` writes timings for every batch and exactly the data the baselines are
/// checked against: its eps is the U-Net's on its x, its pair image is what `transfer`
/// writes for the same preset, its inputs are the preprocessed images.
#[test]
fn bench_writes_what_the_baselines_read() {
    let sb = Sandbox::new();
    let dir = sb.path("bench");
    let args = ["--precisions", "f32", "--batches", "1,2", "--pairs", "fast", "--min-runs", "2", "--min-secs", "0"];
    let more = ["--warmup", "1", "--throughput", "2", "--throughput-preset", "fast"];
    let out = diffstyle(&bench_args("cpu", &dir, &[&args[..], &more].concat()));
    assert_success(&out);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("ours.json")).expect("ours.json")).expect("ours.json parses");
    for kind in ["forward", "encoder", "decoder"] {
        let rows = json[kind].as_array().unwrap_or_else(|| panic!("{kind} missing"));
        let batches: Vec<u64> = rows.iter().map(|r| r["batch"].as_u64().expect("batch")).collect();
        assert_eq!(batches, [1, 2], "{kind}");
        for r in rows {
            let ms = r["ms"].as_f64().expect("ms");
            assert!(ms.is_finite() && ms > 0.0, "{kind}: ms {ms}");
            assert!(r["runs"].as_u64().expect("runs") >= 2, "{kind}: runs");
            assert!(r["ms_min"].as_f64().unwrap() <= ms && ms <= r["ms_max"].as_f64().unwrap(), "{kind}: median");
        }
    }
    let tp = &json["throughput"][0];
    assert_eq!((tp["batch"].as_u64(), tp["preset"].as_str()), (Some(2), Some("fast")), "throughput: {tp}");
    let (secs, rate) = (tp["s"].as_f64().expect("s"), tp["pairs_per_s"].as_f64().expect("pairs/s"));
    assert!(secs > 0.0 && (rate * secs - 2.0).abs() < 1e-9, "throughput {rate} pairs/s over {secs} s");
    let gflop = json["model"]["gflop_forward"].as_f64().expect("gflop");
    assert!((gflop - 0.445).abs() < 0.01, "tiny model GFLOP {gflop}");

    let x = read_f32(&dir.join("x_b1.f32"));
    assert_eq!(x.len(), 3 * 32 * 32);
    let eps = read_f32(&dir.join("eps_f32_b1.f32"));
    let want = cpu_eps(&x);
    let err = diffstyle::tensor::rel_l2(&eps, &want);
    assert!(err < 1e-6, "bench eps vs in-process forward: rel {err:e}");

    let pair = &json["pair"][0];
    assert_eq!(pair["preset"], "fast");
    assert_eq!(pair["deterministic"], true);
    let ours = image::open(dir.join(pair["image"].as_str().expect("image"))).expect("pair png").to_rgb8();
    let fast = ["--preset", "fast", "--inv-steps", "50", "--gen-steps", "50", "--replace-steps", "50"];
    let t = diffstyle(&transfer_args(&model_dir(), &content_png(), &style_png(), &sb.out(), &fast));
    assert_success(&t);
    let direct = image::open(sb.out()).expect("transfer png").to_rgb8();
    assert!(ours == direct, "bench's pair image differs from transfer --preset fast");

    let content = read_f32(&dir.join("content_x0.f32"));
    let loaded = diffstyle::io::image::load_image(&content_png(), 32).expect("content").data;
    assert_eq!(content, loaded, "content_x0.f32 is not the preprocessed content");
}

/// The GPU path of `bench` (step graphs, device timing) through the emulator.
#[test]
fn bench_on_the_emulated_device() {
    let sb = Sandbox::new();
    let dir = sb.path("bench");
    let rest = ["--precisions", "f32", "--batches", "1", "--no-pairs", "--min-runs", "1", "--min-secs", "0"];
    let out = diffstyle(&bench_args("emu", &dir, &[&rest[..], &["--warmup", "0", "--profile"]].concat()));
    assert_success(&out);
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("ours.json")).expect("ours.json")).expect("ours.json parses");
    assert!(json["backend"].as_str().expect("backend").starts_with("emu"), "{}", json["backend"]);
    let peak = json["peak_mem_bytes"]["f32"].as_u64().expect("peak memory on a device");
    let weights = json["model"]["weights_bytes"]["f32"].as_u64().expect("weights bytes");
    let params = json["model"]["params"].as_u64().expect("params");
    assert!(weights >= 4 * params && peak > weights, "{params} params: weights {weights} B, peak {peak} B");
    let eps = read_f32(&dir.join("eps_f32_b1.f32"));
    let err = diffstyle::tensor::rel_l2(&eps, &cpu_eps(&read_f32(&dir.join("x_b1.f32"))));
    assert!(err < 1e-4, "emulated bench eps vs the CPU: rel {err:e}");
    // The profile accounts for every FLOP of the forward, op by op.
    let prof = &json["profile"][0];
    let rows = prof["by_kind"].as_array().expect("profile rows");
    let gflop: f64 = rows.iter().map(|r| r["gflop"].as_f64().unwrap()).sum();
    let want = json["model"]["gflop_forward"].as_f64().unwrap();
    assert!((gflop - want).abs() < 1e-3 * want, "profiled {gflop} GFLOP, the forward has {want}");
    assert!(rows.iter().any(|r| r["op"] == "conv3x3" && r["ms"].as_f64().unwrap() > 0.0), "no conv3x3 row");
}

/// `--batch` packs pairs and inversions side by side without changing any result.
#[test]
fn transfer_batch_gives_the_same_images() {
    let sb = Sandbox::new();
    let run = |batch: &str, dir: &str| {
        let out = sb.path(dir);
        let mut a = os(&["--device", "cpu", "--quiet", "transfer", "--batch", batch, "--model"]);
        a.push(model_dir().into_os_string());
        a.extend(os(&[OsStr::new("--content"), content_png().as_os_str(), style_png().as_os_str()]));
        a.extend(os(&[OsStr::new("--style"), style_png().as_os_str(), content_png().as_os_str()]));
        a.extend(os(&[OsStr::new("--out"), out.as_os_str()]));
        for (k, v) in FAST {
            a.extend(os(&[k, v]));
        }
        a.extend(os(&["--t-boost", "600"]));
        assert_success(&diffstyle(&a));
        out
    };
    let one = run("1", "b1");
    let three = run("3", "b3");
    let mut names: Vec<String> =
        fs::read_dir(&one).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names.len(), 5, "4 pairs and a grid: {names:?}");
    for n in &names {
        let (a, b) = (image::open(one.join(n)).unwrap().to_rgb8(), image::open(three.join(n)).unwrap().to_rgb8());
        assert!(a == b, "{n}: --batch 3 differs from --batch 1");
    }
}

/// `evaluate` scores every pair of a transfer folder and names what is missing.
#[test]
fn evaluate_scores_a_transfer_folder() {
    let sb = Sandbox::new();
    let out = sb.path("pairs");
    let mut a = os(&["--device", "cpu", "--quiet", "transfer", "--model"]);
    a.push(model_dir().into_os_string());
    a.extend(os(&[OsStr::new("--content"), content_png().as_os_str(), style_png().as_os_str()]));
    a.extend(os(&[OsStr::new("--style"), style_png().as_os_str()]));
    a.extend(os(&[OsStr::new("--out"), out.as_os_str()]));
    for (k, v) in FAST {
        a.extend(os(&[k, v]));
    }
    assert_success(&diffstyle(&a));
    let json = sb.path("eval.json");
    let eval = |content: &[&Path], results: &Path| {
        let mut e = os(&["evaluate", "--content"]);
        e.extend(content.iter().map(|p| p.as_os_str().to_os_string()));
        e.extend(os(&[OsStr::new("--style"), style_png().as_os_str()]));
        e.extend(os(&[OsStr::new("--results"), results.as_os_str(), OsStr::new("--out"), json.as_os_str()]));
        diffstyle(&e)
    };
    let ok = eval(&[&content_png(), &style_png()], &out);
    assert_success(&ok);
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["summary"]["pairs"], 2);
    let pairs = v["pairs"].as_array().unwrap();
    // The style with itself as content: colours and edges equally far from both.
    let same = pairs.iter().find(|p| p["content"] == p["style"]).expect("style x style pair");
    assert_eq!(same["colour_to_style"], same["colour_to_content"]);
    for p in pairs {
        for k in ["colour_to_style", "colour_to_content", "edges_to_content", "edges_to_style"] {
            let d = p[k].as_f64().unwrap();
            assert!((0.0..=2.0).contains(&d), "{k} = {d}");
        }
    }
    let other = sb.write("other.png", &fs::read(content_png()).unwrap());
    assert_error(&eval(&[&other], &out), &["content_other_style_style.png", "missing"]);
    assert_error(&eval(&[&content_png()], &sb.path("nope")), &["nope", "not a folder"]);
}

/// `transfer` of the default pair with exactly `extra` as arguments after the images.
fn transfer_raw(model: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut a = os(&["--device", "cpu", "--quiet", "transfer", "--model"]);
    a.push(model.as_os_str().to_os_string());
    a.extend(os(&[OsStr::new("--content"), content_png().as_os_str(), OsStr::new("--style"), style_png().as_os_str()]));
    a.extend(os(&[OsStr::new("--out"), out.as_os_str()]));
    a.extend(os(extra));
    diffstyle(&a)
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// A sweep shares the inversions, and each of its runs gives the same image as a lone
/// transfer with that value; it writes the labelled grid and the figures per value.
#[test]
fn sweep_runs_equal_lone_transfers() {
    let sb = Sandbox::new();
    let fast: Vec<&str> = FAST.iter().flat_map(|(k, v)| [*k, *v]).collect();
    let dir = sb.path("sweep");
    let mut args = fast.clone();
    args.extend(["--sweep", "gamma=0.2,0.7", "--sweep", "t-edit=300,600"]);
    let out = transfer_raw(&model_dir(), &dir, &args);
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for run in ["gamma=0.2,t_edit=300", "gamma=0.2,t_edit=600", "gamma=0.7,t_edit=300", "gamma=0.7,t_edit=600"] {
        assert!(stdout.contains(run), "no line for {run}:\n{stdout}");
    }
    let v: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("sweep.json")).unwrap()).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!((runs.len(), v["sweep"].as_str()), (4, Some("gamma,t_edit")));
    let gamma = runs[2]["settings"]["gamma"].as_f64().map(|g| g as f32);
    assert_eq!((gamma, runs[2]["settings"]["t_edit"].as_i64()), (Some(0.7), Some(300)));
    assert_eq!(runs[0]["summary"]["pairs"], 1);
    // Header + one row of content, style and 4 results, each cell enlarged to 64 px.
    let (w, h) = png_size(&dir.join("sweep.png"));
    assert_eq!(w, 6 * 65 + 1);
    assert!(h > 66 && h < 2 * 66, "height {h}");
    let lone = sb.path("lone.png");
    let mut one = fast.clone();
    one.extend(["--gamma", "0.7", "--t-edit", "600"]);
    assert_success(&transfer_raw(&model_dir(), &lone, &one));
    let swept = dir.join("gamma=0.7,t_edit=600/content_content_style_style.png");
    assert!(rgb(&lone) == rgb(&swept), "the sweep's run differs from a lone transfer");
    let other = dir.join("gamma=0.2,t_edit=600/content_content_style_style.png");
    assert!(rgb(&lone) != rgb(&other), "gamma changes nothing: the check could not fail");
}

#[test]
fn sweep_errors_name_the_knob_and_write_nothing() {
    let sb = Sandbox::new();
    let fast: Vec<&str> = FAST.iter().flat_map(|(k, v)| [*k, *v]).collect();
    for (sweep, needles) in [
        ("inv_steps=5,6", &["inv_steps", "inversions"][..]),
        ("preset=fast", &["preset"][..]),
        ("colour=1,2", &["colour", "not a knob"][..]),
        ("gamma=0.2,abc", &["gamma", "abc"][..]),
        ("gamma=0.2,1.5", &["gamma=1.5", "gamma"][..]),
        ("gamma", &["KNOB=V1,V2"][..]),
        ("gamma=0.2,", &["empty value"][..]),
    ] {
        let mut args = fast.clone();
        args.extend(["--sweep", sweep]);
        assert_error(&transfer_raw(&model_dir(), &sb.out_dir().join("s"), &args), needles);
        assert_nothing_written(&sb);
    }
}

/// A model folder's diffstyle_knobs.json is the base when no preset is named, and is
/// shown by `info`; a named preset ignores it; a bad file is an error naming it.
#[test]
fn recommended_knobs_are_used_without_a_preset() {
    let sb = Sandbox::new();
    let m = model_with(&sb, |_| {});
    fs::write(
        m.join("diffstyle_knobs.json"),
        r#"{"_measured": "test", "preset": "fast", "gamma": 0.7, "inv_steps": 5, "gen_steps": 8, "replace_steps": 8}"#,
    )
    .unwrap();
    let fast: Vec<&str> = FAST.iter().flat_map(|(k, v)| [*k, *v]).collect();
    let rec = sb.path("rec.png");
    assert_success(&transfer_raw(&m, &rec, &[]));
    let explicit = sb.path("explicit.png");
    let mut args = fast.clone();
    args.extend(["--gamma", "0.7"]);
    assert_success(&transfer_raw(&model_dir(), &explicit, &args));
    assert!(rgb(&rec) == rgb(&explicit), "the recommended knobs were not used");
    // A named preset is a whole starting point: gamma goes back to the preset's 0.3.
    let named = sb.path("named.png");
    let mut args = fast.clone();
    args.extend(["--preset", "fast"]);
    assert_success(&transfer_raw(&m, &named, &args));
    let plain = sb.path("plain.png");
    assert_success(&transfer_raw(&model_dir(), &plain, &fast));
    assert!(rgb(&named) == rgb(&plain) && rgb(&named) != rgb(&rec), "--preset did not override the recommendation");
    let info = diffstyle(&os(&[OsStr::new("info"), OsStr::new("--model"), m.as_os_str()]));
    assert_success(&info);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("recommended knobs") && text.contains("gamma 0.7"), "{text}");
    for bad in [r#"{"gamma": "lots"}"#, r#"{"gen_steps": 5000}"#] {
        fs::write(m.join("diffstyle_knobs.json"), bad).unwrap();
        let knob = if bad.contains("gamma") { "gamma" } else { "gen_steps" };
        assert_error(&transfer_raw(&m, &sb.out(), &[]), &["diffstyle_knobs.json", knob]);
        assert_nothing_written(&sb);
    }
}

/// `evaluate --truth`: scores against known answers, and names a bad truth file's line.
#[test]
fn evaluate_against_known_answers() {
    let sb = Sandbox::new();
    let fast: Vec<&str> = FAST.iter().flat_map(|(k, v)| [*k, *v]).collect();
    let dir = sb.path("pairs");
    let mut a = os(&["--device", "cpu", "--quiet", "transfer", "--model"]);
    a.push(model_dir().into_os_string());
    a.extend(os(&[OsStr::new("--content"), content_png().as_os_str(), style_png().as_os_str()]));
    a.extend(os(&[OsStr::new("--style"), style_png().as_os_str(), OsStr::new("--out"), dir.as_os_str()]));
    a.extend(os(&fast));
    assert_success(&diffstyle(&a));
    let (c, s) = (content_png(), style_png());
    let eval = |truth: &Path| {
        let mut e = os(&[OsStr::new("evaluate"), OsStr::new("--content"), c.as_os_str(), s.as_os_str()]);
        e.extend(os(&[OsStr::new("--style"), s.as_os_str(), OsStr::new("--results"), dir.as_os_str()]));
        e.extend(os(&[OsStr::new("--truth"), truth.as_os_str(), OsStr::new("--out"), sb.path("e.json").as_os_str()]));
        diffstyle(&e)
    };
    // The truth of the (style, style) pair is the style itself: the content is then the
    // truth too, so the output cannot be closer (no gain); (content, style) -> style.
    let lines = format!(
        "# c\ts\tt\n{}\t{}\t{}\n{}\t{}\t{}\n",
        c.display(),
        s.display(),
        s.display(),
        s.display(),
        s.display(),
        s.display()
    );
    let t = sb.write("truth.tsv", lines.as_bytes());
    let out = eval(&t);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("against the truth (2 pairs"));
    let v: serde_json::Value = serde_json::from_slice(&fs::read(sb.path("e.json")).unwrap()).unwrap();
    let same = v["truth"].as_array().unwrap().iter().find(|p| p["content"] == "style").unwrap().clone();
    assert_eq!((same["psnr_content"].as_f64(), same["colour_content"].as_f64()), (Some(100.0), Some(0.0)));
    assert_eq!(v["truth_summary"]["pairs"], 2);
    for (text, needles) in [
        (format!("{}\t{}\n", c.display(), s.display()), vec!["truth.tsv:1", "2 fields"]),
        (format!("{}\t{}\tnope.png\n", c.display(), s.display()), vec!["truth.tsv:1", "nope.png", "does not exist"]),
        (format!("x.png\t{}\t{}\n", s.display(), s.display()), vec!["truth.tsv:1", "x.png", "--content"]),
        ("# nothing\n".to_string(), vec!["truth.tsv", "no pairs"]),
    ] {
        let bad = sb.write("truth.tsv", text.as_bytes());
        assert_error(&eval(&bad), &needles);
    }
}
