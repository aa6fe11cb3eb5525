//! Atomic save and load of the snapshot file in the state dir.

use std::fs;
use std::path::Path;

use dnsfront_snapshot::Error;
use dnsfront_snapshot::store::{self, FILE_NAME};

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn load_of_a_missing_file_is_none() {
    let temp = tempfile::tempdir().expect("temp dir");
    assert_eq!(store::load(temp.path()).expect("loads"), None);
    assert_eq!(
        store::load(&temp.path().join("absent")).expect("loads"),
        None
    );
}

#[test]
fn save_creates_the_dir_and_load_reads_it_back() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path().join("state/dnsfront");
    store::save(&dir, b"first").expect("saves");
    assert_eq!(
        store::load(&dir).expect("loads").as_deref(),
        Some(&b"first"[..])
    );
    assert_eq!(store::path(&dir), dir.join(FILE_NAME));
    assert_eq!(entries(&dir), vec![FILE_NAME.to_owned()]);
}

#[test]
fn save_overwrites_and_leaves_no_temp_files() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    for round in 0..5_u8 {
        let content = vec![round; 1000 + usize::from(round)];
        store::save(dir, &content).expect("saves");
        assert_eq!(store::load(dir).expect("loads"), Some(content));
    }
    assert_eq!(entries(dir), vec![FILE_NAME.to_owned()]);
}

#[test]
fn failed_save_keeps_nothing_behind() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // A non-empty directory where the file should go: the rename fails.
    fs::create_dir(dir.join(FILE_NAME)).expect("blocker");
    fs::write(dir.join(FILE_NAME).join("x"), b"x").expect("blocker content");
    let result = store::save(dir, b"new");
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
    assert_eq!(
        entries(dir),
        vec![FILE_NAME.to_owned()],
        "temp file removed"
    );
    // And loading that path is an error, not a silent None.
    assert!(matches!(store::load(dir), Err(Error::Io { .. })));
}

#[test]
fn save_into_a_file_path_is_an_io_error() {
    let temp = tempfile::tempdir().expect("temp dir");
    let not_a_dir = temp.path().join("plain-file");
    fs::write(&not_a_dir, b"x").expect("file");
    let error = store::save(&not_a_dir, b"data").expect_err("not a dir");
    assert!(error.to_string().contains("plain-file"), "{error}");
}
