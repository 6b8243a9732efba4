//! Helpers shared by several test binaries. Each binary that declares `mod support;`
//! compiles its own copy and uses only some of the helpers.
#![allow(dead_code)]

use netc::ir::{DataSpec, Half};
use std::path::PathBuf;

/// Returns the folder of the 400 facades training pairs (512x256 JPEGs, photo left, label
/// map right): `$NETC_FACADES_TRAIN`, else `../shared/data/facades/train` beside the
/// repository.
pub fn facades_train() -> PathBuf {
    let dir = match std::env::var_os("NETC_FACADES_TRAIN") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/facades/train"),
    };
    assert!(
        dir.is_dir(),
        "the facades training pairs are not at {}; set NETC_FACADES_TRAIN to their folder",
        dir.display()
    );
    dir
}

/// Returns the words of a rendered miette report, separated by single spaces. miette wraps
/// long lines and draws a `│` margin, so messages are compared word by word.
pub fn report_words(text: &[u8]) -> String {
    String::from_utf8_lossy(text).replace('│', " ").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Returns the data binding of side-by-side pairs, input on the right and target on the
/// left, one pair a step with no resize, crop or flip.
pub fn paired_data() -> DataSpec {
    DataSpec {
        input: Half::Right,
        target: Half::Left,
        resize: None,
        crop: None,
        flip: false,
        batch: 1,
        labeled: None,
    }
}
