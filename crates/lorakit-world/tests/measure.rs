//! The measure reads back what was drawn: every shape in every colour on every background, at
//! both sizes, also blurred and noisy as a tiny model's drawings are, and reads nothing into
//! empty or random images.

use lorakit_world::{read_pixels, render, Scene, Shape, BACKGROUNDS, COLOURS, IMAGE_SIZE};

fn scenes() -> Vec<Scene> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        for (i, (_, colour)) in COLOURS.iter().enumerate() {
            let (_, background) = BACKGROUNDS[i % BACKGROUNDS.len()];
            for (half, cx) in [(0.18, 0.27), (0.18, 0.73), (0.3, 0.5), (0.3, 0.34)] {
                out.push(Scene { shape, colour: *colour, background, centre: (cx, 0.5), half });
            }
        }
    }
    out
}

fn colour_name(rgb: [u8; 3]) -> &'static str {
    COLOURS.iter().find(|(_, v)| *v == rgb).unwrap().0
}

/// A 3×3 box blur and seeded noise of ±`amplitude`.
fn degrade(pixels: &[u8], size: usize, amplitude: i32, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = vec![0u8; pixels.len()];
    for y in 0..size {
        for x in 0..size {
            for c in 0..3 {
                let (mut sum, mut n) = (0i32, 0i32);
                for dy in -1i32..=1 {
                    for dx in -1i32..=1 {
                        let (xx, yy) = (x as i32 + dx, y as i32 + dy);
                        if xx >= 0 && yy >= 0 && (xx as usize) < size && (yy as usize) < size {
                            sum += pixels[(yy as usize * size + xx as usize) * 3 + c] as i32;
                            n += 1;
                        }
                    }
                }
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let noise = ((state >> 33) % (2 * amplitude as u64 + 1)) as i32 - amplitude;
                out[(y * size + x) * 3 + c] = (sum / n + noise).clamp(0, 255) as u8;
            }
        }
    }
    out
}

#[test]
fn clean_renders_read_back_exactly() {
    for scene in scenes() {
        let pixels = render(&scene, IMAGE_SIZE);
        let r = read_pixels(IMAGE_SIZE, IMAGE_SIZE, &pixels).unwrap();
        assert_eq!(r.shape, Some(scene.shape), "{scene:?}: {r:?}");
        assert!(r.fit > 0.8, "{scene:?}: {r:?}");
        assert_eq!(r.colour, Some(colour_name(scene.colour)), "{scene:?}: {r:?}");
        let bg = BACKGROUNDS.iter().find(|(_, v)| *v == scene.background).unwrap().0;
        assert_eq!(r.background, bg);
        assert!((r.centre.0 - scene.centre.0).abs() < 0.03, "{scene:?}: {r:?}");
    }
}

#[test]
fn blurred_noisy_renders_still_read_back() {
    let mut wrong = Vec::new();
    let all = scenes();
    for (k, scene) in all.iter().enumerate() {
        let pixels = degrade(&render(scene, IMAGE_SIZE), IMAGE_SIZE, 25, k as u64);
        let r = read_pixels(IMAGE_SIZE, IMAGE_SIZE, &pixels).unwrap();
        if r.shape != Some(scene.shape) || r.colour != Some(colour_name(scene.colour)) {
            wrong.push(format!("{scene:?} read as {r:?}"));
        }
    }
    assert!(wrong.is_empty(), "{} of {} misread:\n{}", wrong.len(), all.len(), wrong.join("\n"));
}

#[test]
fn empty_and_random_images_show_no_shape() {
    let blank = vec![128u8; IMAGE_SIZE * IMAGE_SIZE * 3];
    let r = read_pixels(IMAGE_SIZE, IMAGE_SIZE, &blank).unwrap();
    assert_eq!((r.shape, r.best), (None, None), "{r:?}");
    let mut state = 7u64;
    let noise: Vec<u8> = (0..IMAGE_SIZE * IMAGE_SIZE * 3)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect();
    let r = read_pixels(IMAGE_SIZE, IMAGE_SIZE, &noise).unwrap();
    assert_eq!(r.shape, None, "random pixels: {r:?}");
}

#[test]
fn two_shapes_are_told_apart_from_each_other() {
    // Every pair of outlines differs enough that one never fits the other's render at MIN_FIT
    // better than itself: the measure can tell a star from a diamond or a circle from a heart.
    for a in Shape::ALL {
        let scene =
            Scene { shape: a, colour: COLOURS[0].1, background: BACKGROUNDS[0].1, centre: (0.5, 0.5), half: 0.3 };
        let r = read_pixels(IMAGE_SIZE, IMAGE_SIZE, &render(&scene, IMAGE_SIZE)).unwrap();
        assert_eq!(r.best, Some(a));
    }
}

#[test]
fn bad_buffers_are_refused_with_the_reason() {
    assert!(read_pixels(4, 4, &[0; 48]).unwrap_err().contains("too small"));
    assert!(read_pixels(16, 16, &[0; 10]).unwrap_err().contains("10 bytes"));
}

#[test]
fn the_quickstart_dataset_reads_as_its_captions_say() {
    // examples/shapes was drawn by tools/world/world.py: this checks that the Python drawing and
    // the outlines here are the same world.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/shapes/img/10_lkstar");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("png") {
            continue;
        }
        let caption = std::fs::read_to_string(path.with_extension("txt")).unwrap();
        // `red lkstar, large, left, white background`
        let words: Vec<&str> = caption.trim().split([',', ' ']).filter(|w| !w.is_empty()).collect();
        let r = lorakit_world::read_image(&path).unwrap();
        assert_eq!(r.shape, Some(Shape::Star), "{}: {r:?}", path.display());
        assert_eq!(r.colour, Some(words[0]), "{}: {r:?}", path.display());
        assert_eq!(r.background, words[4], "{}: {r:?}", path.display());
        let expected_x = match words[3] {
            "left" => 0.4,
            "center" => 0.5,
            _ => 0.6,
        };
        assert!((r.centre.0 - expected_x).abs() <= 0.15, "{}: {r:?}", path.display());
        read += 1;
    }
    assert_eq!(read, 18, "examples/shapes/img/10_lkstar should hold 18 images");
}
