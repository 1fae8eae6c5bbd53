//! Helpers shared by the end-to-end training tests.

use std::path::{Path, PathBuf};

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// A small DreamBooth folder `<dir>/data/<repeats>_chessboard` with the first `images` images
/// (and their captions) of the sample dataset's 8_chessboard folder; returns `<dir>/data`.
pub fn chessboard_dataset(dir: &Path, repeats: u32, images: usize) -> PathBuf {
    let src = repo("examples/dataset/img/8_chessboard");
    let dst = dir.join("data").join(format!("{repeats}_chessboard"));
    std::fs::create_dir_all(&dst).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for jpg in names.iter().filter(|p| p.extension().is_some_and(|e| e == "jpg")).take(images) {
        std::fs::copy(jpg, dst.join(jpg.file_name().unwrap())).unwrap();
        let txt = jpg.with_extension("txt");
        if txt.exists() {
            std::fs::copy(&txt, dst.join(txt.file_name().unwrap())).unwrap();
        }
    }
    dir.join("data")
}
