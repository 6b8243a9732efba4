//! Training-side tests that need no GPU: the paired-image loader on the real facades files
//! and on broken files written to a temporary folder.

use std::path::{Path, PathBuf};

mod support;

use support::{facades_train, report_words};

/// Returns the permission bits of `path` and of a file that `File::create` makes beside
/// it, which has the mode the process umask gives ordinary files (0644 under umask 022).
#[cfg(unix)]
fn mode_and_usual_mode(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let reference = path.with_extension("mode-reference");
    std::fs::File::create(&reference).unwrap();
    let usual = mode(&reference);
    std::fs::remove_file(&reference).unwrap();
    (mode(path), usual)
}

mod data {
    use super::*;
    use image::{Rgb, RgbImage};
    use netc::ir::{DataSpec, Half};
    use netc::train::data::{locate, DataCursor, DataError, ImageDataset, Mode};

    fn pix2pix_spec() -> DataSpec {
        DataSpec {
            input: Half::Right,
            target: Half::Left,
            resize: Some(286),
            crop: Some(256),
            flip: true,
            batch: 1,
            labeled: None,
        }
    }

    fn plain_spec(batch: usize) -> DataSpec {
        DataSpec { resize: None, crop: None, flip: false, batch, ..pix2pix_spec() }
    }

    /// Writes a `2 * side` x `side` PNG pair whose halves come from `left` and `right`.
    fn write_pair(
        path: &Path,
        side: u32,
        left: impl Fn(u32, u32) -> [u8; 3],
        right: impl Fn(u32, u32) -> [u8; 3],
    ) {
        let img = RgbImage::from_fn(2 * side, side, |x, y| {
            if x < side {
                Rgb(left(x, y))
            } else {
                Rgb(right(x - side, y))
            }
        });
        img.save(path).expect("temporary folder is writable");
    }

    /// Returns a pixel of a pattern that differs at every position, so a wrong crop or flip shows.
    fn ramp(x: u32, y: u32) -> [u8; 3] {
        [(x * 7 % 256) as u8, (y * 13 % 256) as u8, ((x + 3 * y) % 256) as u8]
    }

    #[test]
    fn loads_every_facades_pair() {
        let start = std::time::Instant::now();
        let set = ImageDataset::load(&facades_train(), &pix2pix_spec(), Mode::Train, 3).unwrap();
        eprintln!("decoded and resized 400 pairs in {:?}", start.elapsed());
        assert_eq!(set.len(), 400);
        assert_eq!(set.batches_per_epoch(), 400);
        assert_eq!(set.sample_size(), 256);

        let batch = set.batch(7, DataCursor { epoch: 0, batch: 0 });
        assert_eq!(batch.shape, [1, 3, 256, 256]);
        assert_eq!(batch.input.len(), 3 * 256 * 256);
        assert!(batch.input.iter().chain(&batch.target).all(|v| (-1.0..=1.0).contains(v)));
        let spread =
            batch.target.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(spread.0 < -0.5, "photo values span {spread:?}");
        assert!(spread.1 > 0.5, "photo values span {spread:?}");
    }

    #[test]
    fn pix2pix_batches_fit_its_graph() {
        let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
        for (size, resize) in [(256, 286), (128, 158)] {
            let set = vec![format!("size={size}")];
            let module = netc::frontend::compile_file(&model, &set).unwrap();
            let train = module.train.as_ref().unwrap();
            assert_eq!(train.data.resize, Some(resize));
            let set = ImageDataset::load(&facades_train(), &train.data, Mode::Train, 3).unwrap();
            let batch = set.batch(0, DataCursor::default());
            for name in ["input", "target"] {
                let node = train
                    .graph
                    .inner
                    .node_weights()
                    .find(|n| matches!(&n.op, netc::ir::Op::Input { name: n } if n == name))
                    .unwrap();
                assert_eq!(node.shape.dims(), batch.shape, "{name} at size {size}");
            }
        }
    }

    #[test]
    fn binds_right_half_as_input() {
        // Without resize, crop or flip, the values are the decoded pixels themselves.
        let dir = facades_train();
        let set = ImageDataset::load(&dir, &plain_spec(1), Mode::Eval, 3).unwrap();
        let batch = set.fixed_samples(1);
        let file = &set.files()[batch.indices[0]];
        let img = image::open(file).unwrap().to_rgb8();
        let plane = 256 * 256;
        for (x, y) in [(0u32, 0u32), (17, 200), (255, 255)] {
            let at = (y * 256 + x) as usize;
            for c in 0..3 {
                let right = img.get_pixel(256 + x, y).0[c] as f32 / 127.5 - 1.0;
                let left = img.get_pixel(x, y).0[c] as f32 / 127.5 - 1.0;
                assert_eq!(
                    batch.input[c * plane + at],
                    right,
                    "input pixel ({x}, {y}) channel {c}"
                );
                assert_eq!(
                    batch.target[c * plane + at],
                    left,
                    "target pixel ({x}, {y}) channel {c}"
                );
            }
        }

        let swapped = DataSpec { input: Half::Left, target: Half::Right, ..plain_spec(1) };
        let other = ImageDataset::load(&dir, &swapped, Mode::Eval, 3).unwrap().fixed_samples(1);
        assert_eq!(other.input, batch.target);
        assert_eq!(other.target, batch.input);
    }

    #[test]
    fn augmentation_identical_for_both_halves() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..6 {
            write_pair(&dir.path().join(format!("{i}.png")), 40, ramp, ramp);
        }
        let spec = DataSpec { resize: Some(40), crop: Some(31), batch: 2, ..pix2pix_spec() };
        let set = ImageDataset::load(dir.path(), &spec, Mode::Train, 3).unwrap();
        let mut flipped = 0;
        let mut origins = std::collections::HashSet::new();
        for epoch in 0..4 {
            for b in 0..set.batches_per_epoch() {
                let batch = set.batch(3, DataCursor { epoch, batch: b });
                assert_eq!(batch.shape, [2, 3, 31, 31]);
                assert_eq!(batch.input, batch.target, "epoch {epoch} batch {b}");
                // Channel 0 is 7x mod 256, so the first row shows the crop origin and the flip.
                let row: Vec<f32> = batch.input[..31].to_vec();
                if row[0] > row[30] {
                    flipped += 1;
                }
                origins.insert(batch.input[0].to_bits());
            }
        }
        assert!(flipped > 0, "{flipped} of 12 batches start flipped");
        assert!(flipped < 12, "{flipped} of 12 batches start flipped");
        assert!(origins.len() > 3, "only {} distinct crop origins", origins.len());
    }

    #[test]
    fn crop_and_flip_match_reference() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(&dir.path().join("a.png"), 20, ramp, |x, y| ramp(y, x));
        let spec = DataSpec { resize: None, crop: Some(13), batch: 1, ..pix2pix_spec() };
        let set = ImageDataset::load(dir.path(), &spec, Mode::Train, 3).unwrap();
        let plane = 13 * 13;
        for epoch in 0..8 {
            let batch = set.batch(11, DataCursor { epoch, batch: 0 });
            // The input is the right half, ramp(y, x); find the window it came from.
            let first = batch.input[0];
            let found =
                (0..=7).flat_map(|y0| (0..=7).map(move |x0| (x0, y0))).find_map(|(x0, y0)| {
                    [false, true].into_iter().find_map(|flip| {
                        let matches = (0..13).all(|y| {
                            (0..13).all(|x| {
                                let sx = if flip { x0 + 12 - x } else { x0 + x };
                                let expected = ramp(y0 + y, sx);
                                (0..3).all(|c| {
                                    let got = batch.input[c * plane + (y * 13 + x) as usize];
                                    got == expected[c] as f32 / 127.5 - 1.0
                                })
                            })
                        });
                        matches.then_some((x0, y0, flip))
                    })
                });
            let (x0, y0, flip) = found.unwrap_or_else(|| {
                panic!("epoch {epoch}: input {first} is no window of the right half")
            });
            // The target must be the same window of the left half, ramp(x, y).
            for y in 0..13u32 {
                for x in 0..13u32 {
                    let sx = if flip { x0 + 12 - x } else { x0 + x };
                    let expected = ramp(sx, y0 + y);
                    let got = batch.target[(y * 13 + x) as usize];
                    assert_eq!(got, expected[0] as f32 / 127.5 - 1.0, "epoch {epoch} ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn order_reproducible_from_seed() {
        let set = ImageDataset::load(&facades_train(), &plain_spec(4), Mode::Train, 3).unwrap();
        let order = set.order(5, 2);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..400).collect::<Vec<_>>());
        assert_eq!(order, set.order(5, 2));
        assert_ne!(order, set.order(5, 3));
        assert_ne!(order, set.order(6, 2));

        assert_eq!(set.batches_per_epoch(), 100);
        let cursor = set.cursor_at(250);
        assert_eq!(cursor, DataCursor { epoch: 2, batch: 50 });
        let batch = set.batch(5, cursor);
        assert_eq!(batch.indices, order[200..204].to_vec());
        let again = set.batch(5, cursor);
        assert_eq!(batch.input, again.input);
        assert_eq!(batch.target, again.target);
    }

    #[test]
    fn drops_last_partial_batch() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..7 {
            write_pair(&dir.path().join(format!("{i}.png")), 8, ramp, ramp);
        }
        let set = ImageDataset::load(dir.path(), &plain_spec(3), Mode::Train, 3).unwrap();
        assert_eq!(set.batches_per_epoch(), 2);
        assert_eq!(set.cursor_at(2), DataCursor { epoch: 1, batch: 0 });
    }

    #[test]
    fn luma_channel_when_network_takes_one() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(&dir.path().join("g.png"), 8, |_, _| [255, 255, 255], |_, _| [0, 0, 0]);
        let set = ImageDataset::load(dir.path(), &plain_spec(1), Mode::Eval, 1).unwrap();
        let batch = set.fixed_samples(4);
        assert_eq!(batch.shape, [1, 1, 8, 8]);
        assert!(batch.input.iter().all(|&v| v == -1.0));
        assert!(batch.target.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn broken_files_named_in_error() {
        let dir = tempfile::tempdir().unwrap();
        let good = facades_train().join("1.jpg");
        std::fs::copy(&good, dir.path().join("good.jpg")).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(dir.path().join("truncated.jpg"), &bytes[..bytes.len() / 3]).unwrap();
        std::fs::write(dir.path().join("notes.jpg"), b"this is not an image").unwrap();
        RgbImage::new(300, 256).save(dir.path().join("wide.png")).unwrap();
        std::fs::write(dir.path().join("README.txt"), b"skipped: not an image extension").unwrap();

        let err = ImageDataset::load(dir.path(), &pix2pix_spec(), Mode::Train, 3).unwrap_err();
        let DataError::BadFiles { files, total, .. } = &err else {
            panic!("unexpected error {err:?}")
        };
        assert_eq!(*total, 4);
        let names: Vec<String> = files
            .iter()
            .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["notes.jpg", "truncated.jpg", "wide.png"]);
        let message = err.to_string();
        assert!(message.contains("truncated.jpg: not a readable image"), "{message}");
        assert!(message.contains("wide.png: is 300x256"), "{message}");
        assert!(message.contains("notes.jpg"), "{message}");
    }

    #[test]
    fn mismatched_sizes_rejected_without_resize() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(&dir.path().join("a.png"), 16, ramp, ramp);
        write_pair(&dir.path().join("b.png"), 12, ramp, ramp);
        let err = ImageDataset::load(dir.path(), &plain_spec(1), Mode::Train, 3).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("b.png: halves are 12x12"), "{message}");

        let resized = DataSpec { resize: Some(10), ..plain_spec(1) };
        let set = ImageDataset::load(dir.path(), &resized, Mode::Train, 3).unwrap();
        assert_eq!(set.sample_size(), 10);
    }

    #[test]
    fn too_few_pairs_for_batch() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(&dir.path().join("a.png"), 8, ramp, ramp);
        let err = ImageDataset::load(dir.path(), &plain_spec(2), Mode::Train, 3).unwrap_err();
        assert!(matches!(err, DataError::TooFewPairs { count: 1, batch: 2, .. }), "{err:?}");
    }

    #[test]
    fn empty_folder_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let err = ImageDataset::load(dir.path(), &plain_spec(1), Mode::Train, 3).unwrap_err();
        assert!(matches!(err, DataError::Empty { .. }), "{err:?}");
    }

    fn labeled_spec(classes: usize, channels: usize, batch: usize) -> DataSpec {
        let labeled = Some(netc::ir::LabeledData { classes, channels });
        DataSpec { resize: Some(8), crop: None, flip: true, batch, labeled, ..pix2pix_spec() }
    }

    /// Writes `root/NAME/K.png` images of assorted sizes, each a solid colour per class.
    fn labeled_folder(classes: &[(&str, [u8; 3])], per_class: u32) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (name, colour) in classes {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..per_class {
                let img = RgbImage::from_pixel(9 + 3 * k, 7 + k, Rgb(*colour));
                img.save(dir.join(format!("{k}.png"))).unwrap();
            }
        }
        root
    }

    #[test]
    fn labeled_classes_follow_folder_order() {
        let colours = [("zebra", [255, 255, 255]), ("ant", [0, 0, 0]), ("cat", [255, 0, 0])];
        let root = labeled_folder(&colours, 3);
        let set = ImageDataset::load(root.path(), &labeled_spec(3, 3, 4), Mode::Train, 3).unwrap();
        assert_eq!(set.classes(), ["ant", "cat", "zebra"]);
        assert_eq!(set.len(), 9);
        assert_eq!(set.target_shape(), [4]);
        assert_eq!(set.batches_per_epoch(), 2);

        let batch = set.batch(1, DataCursor { epoch: 0, batch: 1 });
        assert_eq!(batch.shape, [4, 3, 8, 8]);
        assert_eq!(batch.target.len(), 4);
        for (slot, &index) in batch.indices.iter().enumerate() {
            let class = batch.target[slot] as usize;
            let folder = set.files()[index].parent().unwrap().file_name().unwrap();
            assert_eq!(folder.to_str().unwrap(), set.classes()[class], "slot {slot}");
            let red = batch.input[slot * 192];
            let expected = if class == 0 { -1.0 } else { 1.0 };
            assert_eq!(red, expected, "slot {slot} class {class}");
        }
    }

    #[test]
    fn labeled_errors_name_folder_and_file() {
        let root = labeled_folder(&[("a", [0, 0, 0]), ("b", [9, 9, 9])], 2);
        let err =
            ImageDataset::load(root.path(), &labeled_spec(3, 3, 1), Mode::Train, 3).unwrap_err();
        assert!(matches!(err, DataError::ClassCount { found: 2, classes: 3, .. }), "{err:?}");

        std::fs::write(root.path().join("b/broken.jpg"), b"no").unwrap();
        let err =
            ImageDataset::load(root.path(), &labeled_spec(2, 3, 1), Mode::Train, 3).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("broken.jpg: not a readable image"), "{message}");

        let err =
            ImageDataset::load(root.path(), &labeled_spec(2, 1, 1), Mode::Train, 3).unwrap_err();
        assert!(matches!(err, DataError::InvalidSpec { .. }), "{err:?}");
    }

    #[test]
    fn labeled_grayscale_has_one_channel() {
        let root = labeled_folder(&[("a", [0, 0, 0]), ("b", [255, 255, 255])], 1);
        let set = ImageDataset::load(root.path(), &labeled_spec(2, 1, 2), Mode::Eval, 1).unwrap();
        let batch = set.fixed_samples(2);
        assert_eq!(batch.shape, [2, 1, 8, 8]);
        assert_eq!(batch.target, [0.0, 1.0]);
        assert!(batch.input[..64].iter().all(|&v| v == -1.0));
        assert!(batch.input[64..].iter().all(|&v| v == 1.0));
    }

    #[test]
    fn locate_prefers_flag_then_env() {
        let flag = tempfile::tempdir().unwrap();
        let env = tempfile::tempdir().unwrap();
        for root in [flag.path(), env.path()] {
            std::fs::create_dir_all(root.join("facades/train")).unwrap();
        }
        std::fs::create_dir_all(env.path().join("facades/val")).unwrap();

        let dirs = locate("facades", Some(flag.path()), Some(env.path().into())).unwrap();
        assert_eq!(dirs.train, flag.path().join("facades/train"));
        assert!(dirs.val.is_none());

        let dirs = locate("facades", None, Some(env.path().into())).unwrap();
        assert_eq!(dirs.train, env.path().join("facades/train"));
        assert_eq!(dirs.val, Some(env.path().join("facades/val")));
        assert!(dirs.test.is_none());
    }

    #[test]
    fn missing_data_says_how_to_fetch() {
        let root = tempfile::tempdir().unwrap();
        let err = locate("facades", Some(root.path()), None).unwrap_err();
        let message = err.to_string();
        let looked = root.path().join("facades/train");
        assert!(message.contains(&looked.display().to_string()), "{message}");
        let DataError::NotFound { hint, .. } = &err else { panic!("unexpected error {err:?}") };
        assert!(hint.contains("netc data fetch facades --data"), "{hint}");

        let err = locate("maps2", None, Some(root.path().into())).unwrap_err();
        let DataError::NotFound { hint, .. } = &err else { panic!("unexpected error {err:?}") };
        assert!(!hint.contains("netc data fetch"), "{hint}");
        assert!(hint.contains("$NETC_DATA"), "{hint}");
    }
}

mod checkpoint {
    use netc::ir::Shape;
    use netc::train::checkpoint::{
        check_tensors, load, resolve, save, Checkpoint, CheckpointError, DataRecord, ModelRecord,
        Record, Tensor, CHECKPOINTS_DIR, LATEST_FILE, RECORD_FILE, WEIGHTS_FILE,
    };
    use netc::train::data::DataCursor;
    use std::collections::BTreeMap;
    use std::path::Path;

    const SOURCE: &str = "param ngf = 64\nnet generator(x: [1, 3, 256, 256]) { }\n";

    fn tensor(name: &str, dims: &[usize], offset: f32) -> Tensor {
        let shape = Shape::new(dims);
        let data = (0..shape.numel()).map(|i| (i as f32 * 0.37 + offset).sin() * 1e-3).collect();
        Tensor { name: name.to_string(), shape, data }
    }

    fn sample(step: u64) -> Checkpoint {
        let mut awkward = tensor("generator.e1.conv.weight", &[7, 3, 4, 4], step as f32);
        // Values that a text or rounding round trip would damage.
        awkward.data[..5].copy_from_slice(&[
            -0.0,
            f32::MIN_POSITIVE / 3.0,
            f32::MAX,
            1.0 / 3.0,
            -7e-39,
        ]);
        let record = Record {
            format: 1,
            netc_version: env!("CARGO_PKG_VERSION").to_string(),
            step,
            epoch: 2,
            learning_rates: BTreeMap::from([
                ("discriminator".into(), 2e-4),
                ("generator".into(), 1.5e-4),
            ]),
            seed: 42,
            rng: serde_json::json!({ "dropout": [1, 2, 3] }),
            data: DataRecord {
                dataset: "facades".into(),
                pairs: 5,
                cursor: DataCursor { epoch: 2, batch: 3 },
                order: vec![3, 0, 4, 1, 2],
            },
            model: ModelRecord::new("pix2pix", SOURCE, &["ngf=16".to_string()]),
        };
        Checkpoint {
            record,
            weights: vec![
                awkward,
                tensor("generator.e1.bn.running_mean", &[7], 0.5),
                tensor("discriminator.scalar", &[], 1.0),
            ],
            moments: vec![tensor("generator.e1.conv.weight.adam_m", &[7, 3, 4, 4], 2.0)],
        }
    }

    fn sorted(mut tensors: Vec<Tensor>) -> Vec<Tensor> {
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let run = tempfile::tempdir().unwrap();
        let original = sample(400);
        let dir = save(run.path(), &original, 2).unwrap();
        assert_eq!(dir, run.path().join("checkpoints/step-00000400"));

        let loaded = load(run.path()).unwrap();
        assert_eq!(loaded.record, original.record);
        assert_eq!(loaded.weights.len(), 3);
        for (got, want) in loaded.weights.iter().zip(sorted(original.weights.clone())) {
            assert_eq!(got.name, want.name);
            assert_eq!(got.shape, want.shape);
            let got_bits: Vec<u32> = got.data.iter().map(|v| v.to_bits()).collect();
            let want_bits: Vec<u32> = want.data.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got_bits, want_bits, "tensor {}", got.name);
        }
        assert_eq!(loaded.moments, original.moments);
        assert_eq!(loaded.record.model.sha256.len(), 64);
    }

    #[test]
    fn weights_readable_by_safetensors() {
        let run = tempfile::tempdir().unwrap();
        let dir = save(run.path(), &sample(1), 2).unwrap();
        let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let view = file.tensor("generator.e1.bn.running_mean").unwrap();
        assert_eq!(view.dtype(), safetensors::Dtype::F32);
        assert_eq!(view.shape(), &[7]);
        let first = f32::from_le_bytes(view.data()[..4].try_into().unwrap());
        assert_eq!(first, 0.5f32.sin() * 1e-3);

        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(RECORD_FILE)).unwrap()).unwrap();
        assert_eq!(record["step"], 1);
        assert_eq!(record["model"]["source"], SOURCE);
        assert_eq!(record["model"]["overrides"][0], "ngf=16");
        assert_eq!(record["data"]["cursor"]["batch"], 3);
    }

    #[test]
    fn latest_moves_and_old_pruned() {
        let run = tempfile::tempdir().unwrap();
        for step in [100, 200, 300] {
            save(run.path(), &sample(step), 2).unwrap();
        }
        let parent = run.path().join(CHECKPOINTS_DIR);
        let latest = std::fs::read_to_string(parent.join(LATEST_FILE)).unwrap();
        assert_eq!(latest, "step-00000300");
        assert!(!parent.join("step-00000100").exists());
        assert!(parent.join("step-00000200").exists());
        assert_eq!(load(run.path()).unwrap().record.step, 300);
        assert_eq!(load(&parent.join("step-00000200")).unwrap().record.step, 200);

        // Saving the same step again replaces that checkpoint.
        let mut again = sample(300);
        again.record.epoch = 9;
        save(run.path(), &again, 2).unwrap();
        assert_eq!(load(run.path()).unwrap().record.epoch, 9);
        let names: Vec<String> = std::fs::read_dir(&parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "leftover temporary entries {names:?}");
    }

    #[test]
    fn interrupted_save_keeps_previous() {
        let run = tempfile::tempdir().unwrap();
        save(run.path(), &sample(100), 2).unwrap();
        let parent = run.path().join(CHECKPOINTS_DIR);

        // What a crash in the middle of a save leaves: a half-written staging folder, and a
        // renamed folder that `latest` does not point to yet.
        let staging = parent.join(".tmp-checkpoint-crash");
        std::fs::create_dir(&staging).unwrap();
        std::fs::write(staging.join(WEIGHTS_FILE), b"partial").unwrap();
        let unfinished = parent.join("step-00000200");
        std::fs::create_dir(&unfinished).unwrap();

        let loaded = load(run.path()).unwrap();
        assert_eq!(loaded.record.step, 100);
    }

    #[test]
    fn missing_checkpoint_names_folder() {
        let run = tempfile::tempdir().unwrap();
        let err = resolve(run.path()).unwrap_err();
        assert!(matches!(err, CheckpointError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(&run.path().display().to_string()), "{err}");
    }

    #[test]
    fn damaged_files_named_in_error() {
        let run = tempfile::tempdir().unwrap();
        let dir = save(run.path(), &sample(5), 2).unwrap();
        let weights = dir.join(WEIGHTS_FILE);
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() - 9]).unwrap();
        let err = load(run.path()).unwrap_err();
        assert!(
            matches!(&err, CheckpointError::Invalid { path, .. } if path == &weights),
            "{err:?}"
        );

        std::fs::remove_file(&weights).unwrap();
        let err = load(run.path()).unwrap_err();
        assert!(matches!(&err, CheckpointError::Read { path, .. } if path == &weights), "{err:?}");
        assert!(err.to_string().contains(WEIGHTS_FILE), "{err}");
    }

    #[test]
    fn edited_record_rejected() {
        let run = tempfile::tempdir().unwrap();
        let dir = save(run.path(), &sample(5), 2).unwrap();
        let path = dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&path).unwrap();

        let edited = text.replace("param ngf = 64", "param ngf = 32");
        std::fs::write(&path, &edited).unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");

        let newer = text.replace("\"format\": 1", "\"format\": 7");
        std::fs::write(&path, &newer).unwrap();
        let err = load(&dir).unwrap_err();
        assert!(matches!(err, CheckpointError::Version { found: 7, .. }), "{err:?}");

        std::fs::write(&path, "{ not json").unwrap();
        let err = load(&dir).unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn edited_data_order_rejected() {
        let run = tempfile::tempdir().unwrap();
        let dir = save(run.path(), &sample(5), 2).unwrap();
        let path = dir.join(RECORD_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The sample's order is [3, 0, 4, 1, 2] over 5 pairs.
        let cases: [(serde_json::Value, &str); 3] = [
            (serde_json::json!([3, 0, 9, 1, 2]), "position 2 is 9, but the indices of 5 pairs"),
            (serde_json::json!([3, 0, 4, 0, 2]), "position 3 lists pair 0 a second time"),
            (serde_json::json!([3, 0, 4, 1]), "it lists 4 indices, but `data.pairs` is 5"),
        ];
        for (order, expected) in cases {
            let mut edited = record.clone();
            edited["data"]["order"] = order.clone();
            std::fs::write(&path, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
            let err = load(&dir).unwrap_err();
            let CheckpointError::EditedField { path: file, field, reason } = &err else {
                panic!("{order}: expected EditedField, got {err:?}");
            };
            assert_eq!(file, &path, "{order}");
            assert_eq!(*field, "data.order", "{order}");
            assert!(reason.starts_with(expected), "{order}: {reason}");
            assert!(err.to_string().contains("checkpoint.json"), "{err}");
        }
    }

    #[test]
    fn tensor_mismatches_listed_together() {
        let checkpoint = sample(1);
        let file = Path::new("run/checkpoints/step-00000001/weights.safetensors");
        let expected = vec![
            ("generator.e1.conv.weight".to_string(), Shape::new([8, 3, 4, 4])),
            ("generator.e1.bn.running_mean".to_string(), Shape::new([7])),
            ("generator.e2.conv.weight".to_string(), Shape::new([8, 8, 4, 4])),
        ];
        let err = check_tensors(file, &checkpoint.weights, &expected).unwrap_err();
        let CheckpointError::Mismatch { path, problems } = &err else { panic!("{err:?}") };
        assert_eq!(path, file);
        assert_eq!(problems.len(), 3, "{problems:?}");
        let message = err.to_string();
        assert!(
            message.contains(
                "`generator.e1.conv.weight` has shape [7, 3, 4, 4], the model expects [8, 3, 4, 4]"
            ),
            "{message}"
        );
        assert!(message.contains("missing tensor `generator.e2.conv.weight`"), "{message}");
        assert!(message.contains("unknown tensor `discriminator.scalar` []"), "{message}");
        assert!(message.contains("weights.safetensors"), "{message}");

        let exact: Vec<(String, Shape)> =
            checkpoint.weights.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        check_tensors(file, &checkpoint.weights, &exact).unwrap();
    }
}

mod report {
    use netc::train::report::{
        grid, read_losses, write_grid, write_index, write_plot, LossLog, LossRow, PageInfo, Panel,
        ReportError, INDEX_FILE, LOSSES_FILE, PLOT_FILE,
    };

    fn columns() -> Vec<String> {
        ["d_real", "d_fake", "g_gan", "g_l1"].map(String::from).to_vec()
    }

    fn row(step: u64) -> LossRow {
        let s = step as f32;
        LossRow {
            step,
            epoch: (step / 400) as usize + 1,
            lr: 2e-4,
            losses: vec![0.7 - s * 1e-4, 0.69, 1.0 / (1.0 + s), 40.0 * (-s / 300.0).exp() + 10.0],
            seconds_per_step: 0.25,
        }
    }

    #[test]
    fn losses_csv_header_and_rows() {
        let run = tempfile::tempdir().unwrap();
        let mut log = LossLog::create(run.path(), &columns()).unwrap();
        log.append(&row(1)).unwrap();
        log.append(&row(2)).unwrap();
        let text = std::fs::read_to_string(run.path().join(LOSSES_FILE)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "step,epoch,lr,d_real,d_fake,g_gan,g_l1,seconds_per_step");
        assert_eq!(lines[1], "1,1,0.0002,0.6999,0.69,0.5,49.86689,0.250000");
        assert_eq!(lines.len(), 3);

        let (names, rows) = read_losses(&run.path().join(LOSSES_FILE)).unwrap();
        assert_eq!(names, columns());
        assert_eq!(rows, vec![row(1), row(2)]);
    }

    #[test]
    fn resume_drops_rows_after_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        let mut log = LossLog::create(run.path(), &columns()).unwrap();
        for step in 1..=5 {
            log.append(&row(step)).unwrap();
        }
        drop(log);
        // A crash can leave a cut last row.
        let path = run.path().join(LOSSES_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("6,1,0.0002,0.69");
        std::fs::write(&path, text).unwrap();

        let mut log = LossLog::resume(run.path(), &columns(), 3).unwrap();
        log.append(&row(4)).unwrap();
        let (_, rows) = read_losses(&path).unwrap();
        let steps: Vec<u64> = rows.iter().map(|r| r.step).collect();
        assert_eq!(steps, [1, 2, 3, 4]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5);
    }

    #[test]
    fn resume_rejects_other_columns() {
        let run = tempfile::tempdir().unwrap();
        LossLog::create(run.path(), &columns()).unwrap();
        let other = vec!["loss".to_string()];
        let err = LossLog::resume(run.path(), &other, 3).err().unwrap();
        assert!(matches!(err, ReportError::Columns { .. }), "{err:?}");
        assert!(err.to_string().contains("step,epoch,lr,loss,seconds_per_step"), "{err}");
    }

    #[test]
    fn plot_draws_every_term() {
        let run = tempfile::tempdir().unwrap();
        let mut log = LossLog::create(run.path(), &columns()).unwrap();
        for step in 1..=900 {
            let mut r = row(step);
            if step == 450 {
                r.losses[0] = f32::NAN;
            }
            log.append(&r).unwrap();
        }
        let path = write_plot(run.path()).unwrap();
        assert_eq!(path, run.path().join(PLOT_FILE));
        if let Some(keep) = std::env::var_os("NETC_TEST_KEEP") {
            std::fs::copy(&path, std::path::Path::new(&keep).join("plot.png")).unwrap();
        }
        let image = image::open(&path).unwrap().to_rgb8();
        assert_eq!(image.width(), 960);
        assert!(image.height() > 4 * 150);

        // Each panel draws its average in its own strong colour.
        for colour in [[31, 119, 180], [214, 39, 40], [44, 160, 44], [148, 103, 189]] {
            let count = image.pixels().filter(|p| p.0 == colour).count();
            assert!(count > 500, "colour {colour:?} drawn on {count} pixels");
        }
    }

    #[test]
    fn grid_places_panels_in_columns() {
        let black = vec![-1.0f32; 3 * 5 * 7];
        let white = vec![1.0f32; 3 * 5 * 7];
        let grey = vec![0.0f32; 5 * 7];
        fn panel(data: &[f32], channels: usize) -> Panel<'_> {
            Panel { channels, height: 5, width: 7, data }
        }
        let rows = vec![
            vec![panel(&black, 3), panel(&white, 3), panel(&grey, 1)],
            vec![panel(&white, 3), panel(&black, 3), panel(&white, 3)],
        ];
        let image = grid(&["input", "output", "target"], &rows);
        // Gaps of 4 pixels; the header is 18 pixels tall.
        assert_eq!(image.width(), 4 + 3 * (7 + 4));
        assert_eq!(image.height(), 18 + 2 * (5 + 4));
        assert_eq!(image.get_pixel(4, 18).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(4 + 11, 18).0, [255, 255, 255]);
        assert_eq!(image.get_pixel(4 + 22 + 6, 18 + 4).0, [128, 128, 128]);
        assert_eq!(image.get_pixel(4 + 11, 18 + 9).0, [0, 0, 0]);
        assert_eq!(image.get_pixel(4 + 11 + 6, 18 + 9 + 4).0, [0, 0, 0]);
    }

    #[test]
    fn index_links_plot_and_grids() {
        let run = tempfile::tempdir().unwrap();
        let mut log = LossLog::create(run.path(), &columns()).unwrap();
        log.append(&row(1)).unwrap();
        write_plot(run.path()).unwrap();
        let data = vec![0.5f32; 3 * 4 * 4];
        let panel = Panel { channels: 3, height: 4, width: 4, data: &data };
        for step in [200, 400] {
            write_grid(run.path(), step, &[vec![panel; 3]]).unwrap();
        }
        let overrides = vec!["ngf=16".to_string(), "name=<b>".to_string()];
        let info = PageInfo {
            model: "pix2pix",
            dataset: "facades",
            step: 400,
            total_steps: 1000,
            epoch: 0,
            overrides: &overrides,
            seed: 3,
            checkpoint: Some("checkpoints/step-00000400".into()),
        };
        let path = write_index(run.path(), &info).unwrap();
        assert_eq!(path, run.path().join(INDEX_FILE));
        let html = std::fs::read_to_string(&path).unwrap();
        assert!(html.contains("<img src=\"losses.png\""), "{html}");
        let newer = html.find("images/step-00000400.png").expect("grid of step 400 listed");
        let older = html.find("images/step-00000200.png").expect("grid of step 200 listed");
        assert!(newer < older, "grids are not newest first");
        assert!(html.contains("name=&lt;b&gt;"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<td>400 of 1000</td>"), "{html}");
        assert!(html.contains("<th>g_l1</th>"), "{html}");
    }
}

mod fetch {
    use super::facades_train;
    use indicatif::ProgressBar;
    use netc::train::fetch::{fetch, FetchError, Fetched};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::path::Path;

    /// What the loopback server sends for each request.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        body: Vec<u8>,
        /// `Content-Length` to declare, when it differs from the body's length.
        declared: Option<usize>,
    }

    /// Serves `reply` to `requests` connections on 127.0.0.1 and returns the address of
    /// `/name.tar.gz` there. Nothing leaves the machine.
    fn serve(reply: Reply, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                let length = reply.declared.unwrap_or(reply.body.len());
                let head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: application/gzip\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
                    reply.status
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&reply.body);
            }
        });
        format!("http://127.0.0.1:{port}/facades.tar.gz")
    }

    fn ok(body: Vec<u8>) -> Reply {
        Reply { status: 200, body, declared: None }
    }

    /// Builds a pix2pix-style `facades.tar.gz`: three real training pairs, one val pair and
    /// a README, under `facades/`.
    fn facades_archive() -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let train = facades_train();
        for (i, name) in ["1.jpg", "2.jpg", "3.jpg"].iter().enumerate() {
            tar.append_path_with_name(train.join(name), format!("facades/train/{}.jpg", i + 1))
                .unwrap();
        }
        tar.append_path_with_name(train.join("4.jpg"), "facades/val/1.jpg").unwrap();
        let text = b"facades, as published with pix2pix\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "facades/README", &text[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    }

    /// Builds an archive with one entry whose raw name is `name`, bypassing the tar crate's
    /// own path checks.
    fn archive_with_raw_name(name: &str) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let body = b"escaped";
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, &body[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    }

    fn only_entry(root: &Path) -> Vec<String> {
        std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    #[test]
    fn fetch_unpacks_served_archive() {
        let archive = facades_archive();
        let url = serve(ok(archive.clone()), 1);
        let root = tempfile::tempdir().unwrap();
        let progress = ProgressBar::hidden();
        let fetched = fetch("facades", Some(&url), root.path(), &progress).unwrap();

        let dir = root.path().join("facades");
        assert_eq!(
            fetched,
            Fetched::Unpacked { dir: dir.clone(), files: 5, bytes: archive.len() as u64 }
        );
        assert_eq!(progress.position(), archive.len() as u64);
        for name in ["1.jpg", "2.jpg", "3.jpg"] {
            let got = std::fs::read(dir.join("train").join(name)).unwrap();
            let want = std::fs::read(facades_train().join(name)).unwrap();
            assert_eq!(got, want, "train/{name}");
        }
        assert!(dir.join("val/1.jpg").is_file());
        // The staging folder and the archive are gone.
        assert_eq!(only_entry(root.path()), ["facades"]);

        // The unpacked folder is what the loader finds.
        let dirs = netc::train::data::locate("facades", Some(root.path()), None).unwrap();
        assert_eq!(dirs.val, Some(dir.join("val")));

        let again =
            fetch("facades", Some("http://127.0.0.1:9/unused"), root.path(), &progress).unwrap();
        assert_eq!(again, Fetched::AlreadyPresent { dir });
    }

    #[test]
    fn fetch_rejects_escaping_paths() {
        for name in ["../escape.txt", "facades/../../escape.txt", "/tmp/netc-escape.txt"] {
            let url = serve(ok(archive_with_raw_name(name)), 1);
            let outer = tempfile::tempdir().unwrap();
            let root = outer.path().join("data");
            let err = fetch("facades", Some(&url), &root, &ProgressBar::hidden()).unwrap_err();
            assert!(
                matches!(&err, FetchError::UnsafePath { entry, .. } if entry == name),
                "{name}: {err:?}"
            );
            assert!(!outer.path().join("escape.txt").exists(), "{name}");
            assert!(!Path::new("/tmp/netc-escape.txt").exists(), "{name}");
            assert!(only_entry(&root).is_empty(), "{name}: staging left behind");
        }
    }

    #[test]
    fn fetch_reports_http_errors() {
        let url = serve(Reply { status: 404, body: b"not here".to_vec(), declared: None }, 1);
        let root = tempfile::tempdir().unwrap();
        let err = fetch("facades", Some(&url), root.path(), &ProgressBar::hidden()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&url), "{message}");
        assert!(message.contains("404"), "{message}");
        assert!(only_entry(root.path()).is_empty());
    }

    #[test]
    fn fetch_detects_cut_download() {
        let archive = facades_archive();
        let reply = Reply { status: 200, declared: Some(archive.len() + 1000), body: archive };
        let url = serve(reply, 1);
        let root = tempfile::tempdir().unwrap();
        let err = fetch("facades", Some(&url), root.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, FetchError::Download { .. }), "{err:?}");
        assert!(only_entry(root.path()).is_empty());
    }

    #[test]
    fn fetch_rejects_non_archive() {
        let url = serve(ok(b"<html>moved</html>".to_vec()), 1);
        let root = tempfile::tempdir().unwrap();
        let err = fetch("facades", Some(&url), root.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, FetchError::Archive { .. }), "{err:?}");
        assert!(!root.path().join("facades").exists());
    }

    #[test]
    fn fetch_requires_train_folder() {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append_path_with_name(facades_train().join("1.jpg"), "photos/1.jpg").unwrap();
        let url = serve(ok(tar.into_inner().unwrap().finish().unwrap()), 1);
        let root = tempfile::tempdir().unwrap();
        let err = fetch("facades", Some(&url), root.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, FetchError::Layout { .. }), "{err:?}");
        assert!(only_entry(root.path()).is_empty());
    }

    #[test]
    fn unknown_data_set_rejected() {
        let root = tempfile::tempdir().unwrap();
        let err = fetch("imagenet", None, root.path(), &ProgressBar::hidden()).unwrap_err();
        assert!(matches!(err, FetchError::Unknown { .. }), "{err:?}");
    }

    #[test]
    fn cli_fetch_prints_summary() {
        let url = serve(ok(facades_archive()), 1);
        let root = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
            .args(["data", "fetch", "facades", "--url", &url, "--data"])
            .arg(root.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "stdout {stdout}\nstderr {stderr}");
        assert!(stdout.contains("unpacked 5 files"), "{stdout}");
        assert!(root.path().join("facades/train/3.jpg").is_file());

        let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
            .args(["data", "fetch", "nope", "--data"])
            .arg(root.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("unknown data set `nope`"), "{stderr}");
    }
}

/// The run driver, on a small deterministic CPU engine: a per-channel affine map
/// `output = a * input + b` trained with SGD and momentum on the L1 loss. Its gradients
/// get a random scale from a ChaCha8 stream whose position the checkpoint must carry, so
/// the generator-state plumbing is exercised too.
mod run {
    use super::*;
    use image::{Rgb, RgbImage};
    use netc::ir::{DataSpec, Graph, Half, Module, Op, Schedule, Shape, TrainSpec};
    use netc::train::checkpoint::{self, Tensor};
    use netc::train::data::Batch;
    use netc::train::report::{read_losses, INDEX_FILE, LOSSES_FILE, PLOT_FILE};
    use netc::train::run::{train, Engine, RunError, RunOptions};
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use std::collections::BTreeMap;

    const SIDE: usize = 12;

    struct Affine {
        a: Vec<f32>,
        b: Vec<f32>,
        va: Vec<f32>,
        vb: Vec<f32>,
        rng: rand_chacha::ChaCha8Rng,
        steps_run: usize,
        fail_at: Option<u64>,
    }

    impl Affine {
        fn new(seed: u64) -> Self {
            Affine {
                a: vec![0.1; 3],
                b: vec![0.0; 3],
                va: vec![0.0; 3],
                vb: vec![0.0; 3],
                rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
                steps_run: 0,
                fail_at: None,
            }
        }

        fn forward(&self, input: &[f32], plane: usize) -> Vec<f32> {
            input
                .iter()
                .enumerate()
                .map(|(i, &x)| self.a[i / plane % 3] * x + self.b[i / plane % 3])
                .collect()
        }
    }

    fn named(name: &str, data: &[f32]) -> Tensor {
        Tensor { name: name.into(), shape: Shape::new([data.len()]), data: data.to_vec() }
    }

    impl Engine for Affine {
        fn loss_names(&self) -> Vec<String> {
            vec!["l1".into(), "noise".into()]
        }

        fn learning_rates(&self, epoch: usize) -> BTreeMap<String, f32> {
            BTreeMap::from([("generator".into(), 0.05 / (1.0 + epoch as f32))])
        }

        fn step(&mut self, step: u64, epoch: usize, batch: &Batch) -> Result<Vec<f32>, String> {
            self.steps_run += 1;
            let plane = batch.shape[2] * batch.shape[3];
            let output = self.forward(&batch.input, plane);
            let n = output.len() as f32;
            let mut loss = 0.0;
            let (mut ga, mut gb) = (vec![0.0f32; 3], vec![0.0f32; 3]);
            for (i, (&o, &t)) in output.iter().zip(&batch.target).enumerate() {
                let c = i / plane % 3;
                loss += (o - t).abs() / n;
                let sign = (o - t).signum() / n;
                ga[c] += sign * batch.input[i];
                gb[c] += sign;
            }
            let noise = 0.5 + (self.rng.next_u32() % 1000) as f32 / 1000.0;
            let lr = self.learning_rates(epoch)["generator"];
            for c in 0..3 {
                self.va[c] = 0.9 * self.va[c] + ga[c] * noise;
                self.vb[c] = 0.9 * self.vb[c] + gb[c] * noise;
                self.a[c] -= lr * self.va[c];
                self.b[c] -= lr * self.vb[c];
            }
            let loss = if self.fail_at == Some(step) { f32::NAN } else { loss };
            Ok(vec![loss, noise])
        }

        fn generate(&mut self, batch: &Batch) -> Result<(usize, Vec<f32>), String> {
            Ok((3, self.forward(&batch.input, batch.shape[2] * batch.shape[3])))
        }

        fn tensors(&mut self) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
            let weights = vec![named("generator.a", &self.a), named("generator.b", &self.b)];
            let moments = vec![
                named("generator.a.momentum_buffer", &self.va),
                named("generator.b.momentum_buffer", &self.vb),
            ];
            Ok((weights, moments))
        }

        fn tensor_shapes(&self) -> (Vec<(String, Shape)>, Vec<(String, Shape)>) {
            let shape = || Shape::new([3]);
            let weights = vec![("generator.a".into(), shape()), ("generator.b".into(), shape())];
            let moments = vec![
                ("generator.a.momentum_buffer".into(), shape()),
                ("generator.b.momentum_buffer".into(), shape()),
            ];
            (weights, moments)
        }

        fn restore(&mut self, weights: &[Tensor], moments: &[Tensor]) -> Result<(), String> {
            let find = |list: &[Tensor], name: &str| {
                list.iter().find(|t| t.name == name).map(|t| t.data.clone())
            };
            self.a = find(weights, "generator.a").ok_or("no a")?;
            self.b = find(weights, "generator.b").ok_or("no b")?;
            self.va = find(moments, "generator.a.momentum_buffer").ok_or("no va")?;
            self.vb = find(moments, "generator.b.momentum_buffer").ok_or("no vb")?;
            Ok(())
        }

        fn rng_state(&self) -> serde_json::Value {
            serde_json::json!({ "word_pos": self.rng.get_word_pos().to_string() })
        }

        fn restore_rng(&mut self, state: &serde_json::Value) -> Result<(), String> {
            let pos = state["word_pos"].as_str().ok_or("missing word_pos")?;
            self.rng.set_word_pos(pos.parse().map_err(|e| format!("{e}"))?);
            Ok(())
        }
    }

    fn module(batch: usize) -> Module {
        let spec = DataSpec {
            input: Half::Right,
            target: Half::Left,
            resize: Some(SIDE + 3),
            crop: Some(SIDE),
            flip: true,
            batch,
            labeled: None,
        };
        let mut graph = Graph::new();
        for name in ["input", "target"] {
            graph.add_leaf(
                Op::Input { name: name.into() },
                Shape::new([batch, 3, SIDE, SIDE]),
                name,
                None,
            );
        }
        let train = TrainSpec {
            data: spec,
            graph,
            steps: vec![],
            schedule: Schedule::Constant,
            epochs: 2,
            generator: "generator".into(),
            span: None,
        };
        Module {
            name: "affine".into(),
            params: vec![],
            nets: vec![],
            train: Some(train),
            settings: vec![],
        }
    }

    /// Writes `count` pairs under `root/pairs/train/` (and 2 under `val/`) whose target is
    /// a per-channel affine map of the input.
    fn data_root(count: usize) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (split, n) in [("train", count), ("val", 2)] {
            let dir = root.path().join("pairs").join(split);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let side = 20u32;
                let img = RgbImage::from_fn(2 * side, side, |x, y| {
                    let (u, v) = (x % side, y);
                    let base = ((u * 11 + v * 5 + i as u32 * 17) % 200) as u8 + 20;
                    if x < side {
                        Rgb([base / 2 + 60, 255 - base, base / 3])
                    } else {
                        Rgb([base, base, base])
                    }
                });
                img.save(dir.join(format!("{split}-{i}.png"))).unwrap();
            }
        }
        root
    }

    fn options(data: &Path, out: &Path, steps: u64) -> RunOptions {
        RunOptions {
            source: "net affine".into(),
            overrides: vec!["ngf=4".into()],
            dataset: "pairs".into(),
            data: Some(data.to_path_buf()),
            steps: Some(steps),
            seed: 9,
            out: Some(out.to_path_buf()),
            quiet: true,
            images_every: 4,
            checkpoint_every: 3,
            ..RunOptions::default()
        }
    }

    fn weight_bits(run: &Path) -> Vec<(String, Vec<u32>)> {
        let saved = checkpoint::load(run).unwrap();
        saved
            .weights
            .iter()
            .chain(&saved.moments)
            .map(|t| (t.name.clone(), t.data.iter().map(|v| v.to_bits()).collect()))
            .collect()
    }

    /// The losses.csv rows without the timing column.
    fn loss_rows(run: &Path) -> Vec<(u64, usize, u32, Vec<u32>)> {
        let (_, rows) = read_losses(&run.join(LOSSES_FILE)).unwrap();
        rows.iter()
            .map(|r| {
                (r.step, r.epoch, r.lr.to_bits(), r.losses.iter().map(|v| v.to_bits()).collect())
            })
            .collect()
    }

    #[test]
    fn resume_matches_straight_run() {
        let data = data_root(7);
        let runs = tempfile::tempdir().unwrap();
        let straight = runs.path().join("straight");
        let split = runs.path().join("split");

        // 2 pairs per batch and 7 files give 3 batches an epoch, so 10 steps cross epochs.
        let summary =
            train(&module(2), &mut Affine::new(1), &options(data.path(), &straight, 10)).unwrap();
        assert_eq!(summary.steps, 10);
        train(&module(2), &mut Affine::new(1), &options(data.path(), &split, 5)).unwrap();

        // The resumed engine starts from fresh weights and state; the checkpoint restores them.
        let mut resumed = Affine::new(1);
        let resume = RunOptions {
            resume: Some(split.clone()),
            out: None,
            ..options(data.path(), &split, 10)
        };
        let summary = train(&module(2), &mut resumed, &resume).unwrap();
        assert_eq!(summary.first_step, 5);
        assert_eq!(summary.steps, 5);
        assert_eq!(resumed.steps_run, 5);
        assert_eq!(summary.run_dir, split);

        assert_eq!(weight_bits(&split), weight_bits(&straight));
        assert_eq!(loss_rows(&split), loss_rows(&straight));
        assert_eq!(loss_rows(&split).len(), 10);
        let record = checkpoint::load(&split).unwrap().record;
        assert_eq!(record.step, 10);
        assert_eq!(record.data.cursor, netc::train::data::DataCursor { epoch: 3, batch: 1 });
    }

    #[test]
    fn run_folder_has_every_output() {
        let data = data_root(5);
        let runs = tempfile::tempdir().unwrap();
        let run = runs.path().join("r");
        let mut engine = Affine::new(2);
        let summary = train(&module(1), &mut engine, &options(data.path(), &run, 9)).unwrap();
        assert_eq!(summary.checkpoint, run.join("checkpoints/step-00000009"));

        let csv = std::fs::read_to_string(run.join(LOSSES_FILE)).unwrap();
        assert!(csv.starts_with("step,epoch,lr,l1,noise,seconds_per_step\n"), "{csv}");
        assert_eq!(csv.lines().count(), 10);
        for name in [
            PLOT_FILE,
            INDEX_FILE,
            "images/step-00000004.png",
            "images/step-00000008.png",
            "images/step-00000009.png",
        ] {
            assert!(run.join(name).is_file(), "{name} missing");
        }
        let grid = image::open(run.join("images/step-00000009.png")).unwrap();
        assert_eq!(grid.height(), 18 + 2 * (SIDE as u32 + 4), "two val samples, one row each");
        let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
        assert_eq!(latest, "step-00000009");
        // Checkpoints at 3 and 6 came first; only the newest two are kept.
        assert!(!run.join("checkpoints/step-00000003").exists());
        assert!(run.join("checkpoints/step-00000006").exists());
        let html = std::fs::read_to_string(run.join(INDEX_FILE)).unwrap();
        assert!(html.contains("images/step-00000009.png"), "{html}");
        #[cfg(unix)]
        for name in [
            LOSSES_FILE,
            PLOT_FILE,
            INDEX_FILE,
            "images/step-00000009.png",
            "checkpoints/latest",
            "checkpoints/step-00000009/checkpoint.json",
            "checkpoints/step-00000009/weights.safetensors",
        ] {
            let (mode, usual) = super::mode_and_usual_mode(&run.join(name));
            assert_eq!(mode, usual, "{name} has mode {mode:o}, not {usual:o}");
        }

        let (_, rows) = read_losses(&run.join(LOSSES_FILE)).unwrap();
        // 5 pairs in batches of 1: steps 1..5 are epoch 1, as the progress bar counts.
        let epochs: Vec<usize> = rows.iter().map(|r| r.epoch).collect();
        assert_eq!(epochs, [1, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert!(csv.lines().nth(1).is_some_and(|l| l.starts_with("1,1,")), "{csv}");
        let first = rows.first().unwrap().losses[0];
        let last = rows.last().unwrap().losses[0];
        assert!(last < first, "L1 went from {first} to {last}");
    }

    #[test]
    fn existing_run_needs_resume() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let run = runs.path().join("r");
        train(&module(1), &mut Affine::new(0), &options(data.path(), &run, 2)).unwrap();
        let err =
            train(&module(1), &mut Affine::new(0), &options(data.path(), &run, 2)).unwrap_err();
        assert!(matches!(err, RunError::RunExists { .. }), "{err:?}");
    }

    #[test]
    fn resume_after_edit_transfers_weights() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let (run, straight) = (runs.path().join("r"), runs.path().join("straight"));
        train(&module(1), &mut Affine::new(0), &options(data.path(), &straight, 4)).unwrap();
        train(&module(1), &mut Affine::new(0), &options(data.path(), &run, 2)).unwrap();
        let changed = RunOptions {
            source: "net affine2".into(),
            resume: Some(run.clone()),
            ..options(data.path(), &run, 4)
        };
        // Every tensor keeps its name and shape, so all of them carry over with the
        // generator state, and the run continues as if nothing had changed.
        let summary = train(&module(1), &mut Affine::new(0), &changed).unwrap();
        assert_eq!(summary.first_step, 2);
        assert_eq!(weight_bits(&run), weight_bits(&straight));
        let record = checkpoint::load(&run).unwrap().record;
        assert_eq!(record.model.source, "net affine2");
    }

    #[test]
    fn resume_removes_interrupted_writes() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let run = runs.path().join("r");
        train(&module(1), &mut Affine::new(0), &options(data.path(), &run, 2)).unwrap();
        // What a process killed mid-write leaves: a temporary file and a checkpoint folder.
        std::fs::write(run.join(".tmp-AB12CD"), "partial").unwrap();
        let folder = run.join("checkpoints/.tmp-checkpoint-EF34GH");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("weights.safetensors"), "partial").unwrap();
        std::fs::write(run.join("keep.txt"), "the user's").unwrap();

        let resume = RunOptions { resume: Some(run.clone()), ..options(data.path(), &run, 3) };
        train(&module(1), &mut Affine::new(0), &resume).unwrap();
        assert!(!run.join(".tmp-AB12CD").exists());
        assert!(!folder.exists());
        assert!(run.join("keep.txt").exists(), "other files stay");
    }

    #[test]
    fn resume_rejects_edited_data_position() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let run = runs.path().join("r");
        train(&module(1), &mut Affine::new(0), &options(data.path(), &run, 2)).unwrap();
        let record_path = run.join("checkpoints/step-00000002").join(checkpoint::RECORD_FILE);
        let text = std::fs::read_to_string(&record_path).unwrap();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();

        // A swap keeps a permutation, so only the comparison with the seed's order finds it.
        let mut swapped = record.clone();
        let order = swapped["data"]["order"].as_array_mut().unwrap();
        order.swap(0, 1);
        let mut moved = record.clone();
        moved["data"]["cursor"]["batch"] = serde_json::json!(0);
        let edits = [
            (swapped, "invalid `data.order`"),
            (moved, "`data.cursor` is { epoch: 0, batch: 0 }, but with this run's batch size"),
        ];
        for (edited, expected) in edits {
            std::fs::write(&record_path, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
            let resume = RunOptions { resume: Some(run.clone()), ..options(data.path(), &run, 4) };
            let mut engine = Affine::new(0);
            let err = train(&module(1), &mut engine, &resume).unwrap_err();
            let message = err.to_string();
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("step-00000002/checkpoint.json"), "{message}");
            assert_eq!(engine.steps_run, 0, "{expected}: no step runs");
        }

        // The record as netc wrote it resumes.
        std::fs::write(&record_path, &text).unwrap();
        let resume = RunOptions { resume: Some(run.clone()), ..options(data.path(), &run, 4) };
        train(&module(1), &mut Affine::new(0), &resume).unwrap();
    }

    #[test]
    fn diverged_loss_stops_without_checkpoint() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let run = runs.path().join("r");
        let mut engine = Affine::new(0);
        engine.fail_at = Some(4);
        let err = train(&module(1), &mut engine, &options(data.path(), &run, 8)).unwrap_err();
        assert!(
            matches!(&err, RunError::NonFiniteLoss { step: 5, term, .. } if term == "l1"),
            "{err:?}"
        );
        let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
        assert_eq!(latest, "step-00000003");
    }

    #[test]
    fn bad_data_stops_before_first_step() {
        let data = data_root(3);
        std::fs::write(data.path().join("pairs/train/broken.png"), b"not a png").unwrap();
        let runs = tempfile::tempdir().unwrap();
        let mut engine = Affine::new(0);
        let err = train(&module(1), &mut engine, &options(data.path(), &runs.path().join("r"), 8))
            .unwrap_err();
        assert!(err.to_string().contains("broken.png"), "{err}");
        assert_eq!(engine.steps_run, 0);
        assert!(!runs.path().join("r").exists());
    }

    #[test]
    fn data_shape_must_match_input() {
        let data = data_root(3);
        let runs = tempfile::tempdir().unwrap();
        let mut wrong = module(1);
        let spec = &mut wrong.train.as_mut().unwrap().data;
        spec.crop = Some(SIDE - 1);
        let err =
            train(&wrong, &mut Affine::new(0), &options(data.path(), &runs.path().join("r"), 2))
                .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, RunError::ShapeMismatch { .. }), "{err:?}");
        assert!(message.contains("[1, 3, 11, 11]"), "{message}");
        assert!(message.contains("[1, 3, 12, 12]"), "{message}");
    }

    #[test]
    fn cli_rejects_file_as_run_folder() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("results.txt");
        std::fs::write(&file, "keep me").unwrap();
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/pix2pix.net");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_netc"))
            .arg("run")
            .arg(&model)
            .args(["--train", "facades", "--steps", "1", "--out"])
            .arg(&file)
            .env("NO_COLOR", "1")
            .output()
            .expect("netc runs");
        assert!(!output.status.success());
        let stderr = report_words(&output.stderr);
        assert!(stderr.contains("results.txt is a file, but netc run --train writes"), "{stderr}");
        assert!(stderr.contains("pass a folder to --out"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    #[test]
    fn missing_data_names_folder() {
        let root = tempfile::tempdir().unwrap();
        let runs = tempfile::tempdir().unwrap();
        let err = train(
            &module(1),
            &mut Affine::new(0),
            &options(root.path(), &runs.path().join("r"), 2),
        )
        .unwrap_err();
        assert!(err.to_string().contains("pairs/train"), "{err}");
    }
}
/// The whole run on the device (lavapipe here): a two-level pix2pix trained on six real
/// facades pairs, through the `Trainer`, checkpoints and the CLI.
mod device {
    use super::facades_train;
    use netc::runtime::Gpu;
    use netc::train::checkpoint;
    use netc::train::report::{read_losses, LOSSES_FILE};
    use netc::train::run::{train, RunOptions};
    use netc::train::Trainer;
    use std::path::Path;
    use std::process::Command;
    use std::sync::{Mutex, OnceLock};

    /// pix2pix at 16x16: a U-Net generator with one skip, batch norm and dropout, and a
    /// small PatchGAN. Two pairs a batch and a learning rate that decays after epoch 0.
    const TINY: &str = include_str!("net/tiny_pix2pix.net");

    fn gpu() -> &'static Mutex<Gpu> {
        static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();
        GPU.get_or_init(|| {
            Mutex::new(Gpu::open(None).expect("the device tests need a wgpu adapter (lavapipe)"))
        })
    }

    /// A data folder with `facades/train/` holding the first six real pairs.
    fn six_pairs() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let train = root.path().join("facades/train");
        std::fs::create_dir_all(&train).unwrap();
        for i in 1..=6 {
            std::fs::copy(facades_train().join(format!("{i}.jpg")), train.join(format!("{i}.jpg")))
                .unwrap();
        }
        root
    }

    fn options(data: &Path, out: &Path, steps: u64) -> RunOptions {
        RunOptions {
            source: TINY.to_string(),
            dataset: "facades".into(),
            data: Some(data.to_path_buf()),
            steps: Some(steps),
            seed: 4,
            out: Some(out.to_path_buf()),
            quiet: true,
            images_every: 0,
            checkpoint_every: 0,
            ..RunOptions::default()
        }
    }

    fn bits(run: &Path) -> Vec<(String, Vec<u32>)> {
        let saved = checkpoint::load(run).unwrap();
        let all = saved.weights.iter().chain(&saved.moments);
        all.map(|t| (t.name.clone(), t.data.iter().map(|v| v.to_bits()).collect())).collect()
    }

    fn loss_bits(run: &Path) -> Vec<Vec<u32>> {
        let (_, rows) = read_losses(&run.join(LOSSES_FILE)).unwrap();
        rows.iter().map(|r| r.losses.iter().map(|v| v.to_bits()).collect()).collect()
    }

    #[test]
    fn resume_is_bit_identical() {
        let module = netc::frontend::compile_source("tiny.net", TINY, &[]).unwrap();
        let gpu = gpu().lock().unwrap_or_else(|e| e.into_inner());
        let data = six_pairs();
        let runs = tempfile::tempdir().unwrap();
        let (straight, split) = (runs.path().join("straight"), runs.path().join("split"));

        // Six pairs in batches of two: steps 1-3 are epoch 0 and steps 4-6 epoch 1, at a
        // decayed learning rate.
        let mut engine = Trainer::new(&gpu, &module, 4).unwrap();
        train(&module, &mut engine, &options(data.path(), &straight, 6)).unwrap();
        let mut engine = Trainer::new(&gpu, &module, 4).unwrap();
        train(&module, &mut engine, &options(data.path(), &split, 3)).unwrap();

        // A fresh engine with another seed: everything must come from the checkpoint.
        let mut engine = Trainer::new(&gpu, &module, 99).unwrap();
        let resume = RunOptions {
            resume: Some(split.clone()),
            out: None,
            seed: 99,
            ..options(data.path(), &split, 6)
        };
        let summary = train(&module, &mut engine, &resume).unwrap();
        assert_eq!(summary.first_step, 3);
        assert_eq!(summary.steps, 3);

        let (a, b) = (bits(&straight), bits(&split));
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().any(|(n, _)| n == "generator.d2.norm.running_mean"),
            "{:?}",
            a.iter().map(|t| &t.0).collect::<Vec<_>>()
        );
        assert!(
            a.iter().any(|(n, _)| n.starts_with("optimizer.generator.")),
            "no optimizer state saved"
        );
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert_eq!(name, other);
            assert!(x == y, "{name} differs after resume");
        }
        assert_eq!(loss_bits(&straight), loss_bits(&split));

        let record = checkpoint::load(&split).unwrap().record;
        assert_eq!(record.step, 6);
        // The next step is the first of epoch 2, at a third of the base rate.
        assert_eq!(record.epoch, 2);
        assert_eq!(record.learning_rates["generator"], 2e-4 / 3.0);
        assert_eq!(record.rng["iteration"], 6);
    }

    #[test]
    fn cli_trains_then_resumes() {
        let data = six_pairs();
        let work = tempfile::tempdir().unwrap();
        std::fs::write(work.path().join("tiny.net"), TINY).unwrap();
        // Runs netc and returns (stdout, stderr). A run that hangs (as a log line written
        // under the progress bar's lock once did) fails after five minutes.
        let netc = |args: &[&str]| {
            let mut child = Command::new(env!("CARGO_BIN_EXE_netc"))
                .current_dir(work.path())
                .args(args)
                .env("NETC_DATA", data.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() {
                if started.elapsed() > std::time::Duration::from_secs(300) {
                    child.kill().unwrap();
                    panic!("netc {args:?} did not finish in 300 s");
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let output = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "netc {args:?} failed:\n{stdout}\n{stderr}");
            (stdout, stderr)
        };

        let (stdout, _) =
            netc(&["run", "tiny.net", "--train", "facades", "--steps", "2", "--quiet"]);
        assert!(stdout.contains("trained steps 1..2"), "{stdout}");
        let run = work.path().join("runs/tiny-facades");
        assert!(run.join("index.html").is_file());
        assert!(run.join("images/step-00000002.png").is_file());

        // Without --quiet the progress bar is registered and the logs are drawn above it.
        let (stdout, stderr) = netc(&[
            "run",
            "tiny.net",
            "--train",
            "facades",
            "--steps",
            "4",
            "--resume",
            "runs/tiny-facades",
        ]);
        assert!(stdout.contains("trained steps 3..4"), "{stdout}");
        assert!(stderr.contains("wrote checkpoint"), "{stderr}");
        let (columns, rows) = read_losses(&run.join(LOSSES_FILE)).unwrap();
        assert_eq!(columns, ["d_real", "d_fake", "g_gan", "g_l1"]);
        assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // Three batches an epoch: the resumed step 4 starts epoch 2, counted from 1.
        assert_eq!(rows.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 1, 1, 2]);
        let record = checkpoint::load(&run).unwrap().record;
        assert_eq!(record.model.source, TINY);
        assert_eq!(record.step, 4);
    }
}
