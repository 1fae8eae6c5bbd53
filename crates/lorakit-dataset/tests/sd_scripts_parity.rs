//! Every image of the sample dataset must get exactly the size, bucket, repeats
//! and caption sd-scripts gave it (fixtures produced by sd-scripts itself).

use lorakit_dataset::config::{plan_from_dirs, OptionLayer, ResolutionValue};
use lorakit_dataset::doctor::{check, CheckOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn compare(fixture: &str, layer: OptionLayer) {
    let dataset = root().join("examples/dataset");
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/sd-scripts").join(fixture)).unwrap())
            .unwrap();
    let plan = plan_from_dirs(&dataset.join("img"), Some(&dataset.join("reg")), &layer).unwrap();
    // Paths relative to examples/dataset, as in the fixture.
    let report = check(&plan, std::slice::from_ref(&dataset), &CheckOptions::default());
    assert!(report.usable);
    let ds = &report.datasets[0];
    let want_images = want["images"].as_array().unwrap();
    assert_eq!(ds.images.len(), want_images.len(), "image count");
    for w in want_images {
        let path = w["path"].as_str().unwrap();
        let got = ds.images.iter().find(|i| i.path == path).unwrap_or_else(|| panic!("{path} not found"));
        let pair = |v: &Value| [v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32];
        assert_eq!(got.size, Some(pair(&w["size"])), "{path}: size");
        assert_eq!(got.bucket, Some(pair(&w["bucket"])), "{path}: bucket");
        assert_eq!(u64::from(got.repeats), w["repeats"].as_u64().unwrap(), "{path}: repeats");
        assert_eq!(got.is_reg, w["is_reg"].as_bool().unwrap(), "{path}: is_reg");
        assert_eq!(got.caption, w["caption"].as_str().unwrap(), "{path}: caption");
    }
    let wd = &want["datasets"][0];
    assert_eq!(ds.num_train_images, wd["num_train_images"].as_u64().unwrap());
    assert_eq!(ds.num_reg_images, wd["num_reg_images"].as_u64().unwrap());
    assert_eq!(ds.batches_per_epoch, wd["len_batches"].as_u64().unwrap());
    let want_buckets: Vec<[u32; 2]> = wd["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| [b[0].as_u64().unwrap() as u32, b[1].as_u64().unwrap() as u32])
        .collect();
    let got_buckets: Vec<[u32; 2]> = ds.buckets.iter().map(|b| b.resolution).collect();
    assert_eq!(got_buckets, want_buckets);
}

#[test]
fn buckets_512_match_sd_scripts() {
    compare(
        "sd-scripts-buckets-512.json",
        OptionLayer {
            resolution: Some(ResolutionValue::Square(512)),
            min_bucket_reso: Some(256),
            max_bucket_reso: Some(1024),
            bucket_reso_steps: Some(64),
            batch_size: Some(2),
            ..Default::default()
        },
    );
}

#[test]
fn buckets_768_no_upscale_match_sd_scripts() {
    compare(
        "sd-scripts-buckets-768-no-upscale.json",
        OptionLayer {
            resolution: Some(ResolutionValue::Square(768)),
            min_bucket_reso: Some(256),
            max_bucket_reso: Some(1024),
            bucket_reso_steps: Some(64),
            bucket_no_upscale: Some(true),
            batch_size: Some(2),
            ..Default::default()
        },
    );
}

#[test]
fn dataset_toml_gives_the_same_buckets_as_folders() {
    let dataset = root().join("examples/dataset");
    let from_toml =
        lorakit_dataset::config::plan_from_toml(&dataset.join("dataset.toml"), &OptionLayer::default()).unwrap();
    let from_dirs = plan_from_dirs(
        &dataset.join("img"),
        Some(&dataset.join("reg")),
        &OptionLayer { batch_size: Some(2), ..Default::default() },
    )
    .unwrap();
    let a = check(&from_toml, std::slice::from_ref(&dataset), &CheckOptions::default());
    let b = check(&from_dirs, std::slice::from_ref(&dataset), &CheckOptions::default());
    let key = |r: &lorakit_dataset::doctor::Report| {
        let mut v: Vec<_> = r.datasets[0]
            .images
            .iter()
            .map(|i| (i.path.clone(), i.bucket, i.repeats, i.caption.clone(), i.is_reg))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert_eq!(key(&a), key(&b));
    assert_eq!(a.datasets[0].batches_per_epoch, 82);
    assert_eq!(a.steps, b.steps);
}
