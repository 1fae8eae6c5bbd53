//! sd-scripts' sample prompt files (spec §10): .txt / .toml / .json, defaults, flooring,
//! clamping, errors and sample file names.

use lorakit_train::sample_prompts::{
    parse_prompt_file, parse_prompt_text, sample_file_name, SampleDefaults, SamplePromptError, SampleTag,
};
use std::path::PathBuf;

fn sd() -> SampleDefaults {
    SampleDefaults::default()
}

fn write(dir: &tempfile::TempDir, name: &str, content: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn defaults_are_sd_defaults() {
    let d = sd();
    assert_eq!((d.width, d.height, d.steps, d.cfg_scale, d.sampler.as_str()), (512, 512, 30, 7.5, "ddim"));
}

#[test]
fn txt_prompts_options_and_comments() {
    let text = "# a comment\n\
                \n\
                masterpiece, 1girl, solo --n lowres, bad anatomy --w 768 --h 1024 --d 42 --s 20 --l 6.5 --ss euler_a\n\
                   \t  \n\
                a cat sitting on a mat\n\
                A DOG --W 640 --H 576 --D 7 --S 25 --L 5 --SS k_euler --N blurry\n";
    let (prompts, warnings) = parse_prompt_text(text, &sd()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(prompts.len(), 3);

    let p = &prompts[0];
    assert_eq!(p.prompt, "masterpiece, 1girl, solo");
    assert_eq!(p.negative.as_deref(), Some("lowres, bad anatomy"));
    assert_eq!((p.width, p.height, p.seed, p.steps, p.cfg_scale), (768, 1024, Some(42), 20, 6.5));
    assert_eq!(p.sampler.as_deref(), Some("euler_a"));
    assert_eq!(p.index, 0);

    // Defaults for everything unset.
    let p = &prompts[1];
    assert_eq!(p.prompt, "a cat sitting on a mat");
    assert_eq!((p.width, p.height, p.seed, p.steps, p.cfg_scale), (512, 512, None, 30, 7.5));
    assert_eq!((p.negative.as_deref(), p.sampler.as_deref()), (None, None));
    assert_eq!(p.sampler_or(&sd()), "ddim");
    assert_eq!(p.index, 1);

    // Option letters are case-insensitive; the negative prompt ends at the next option or the line.
    let p = &prompts[2];
    assert_eq!(p.prompt, "A DOG");
    assert_eq!((p.width, p.height, p.seed, p.steps, p.cfg_scale), (640, 576, Some(7), 25, 5.0));
    assert_eq!(p.sampler_or(&sd()), "k_euler");
    assert_eq!(p.negative.as_deref(), Some("blurry"));
    assert_eq!(p.index, 2);
}

#[test]
fn txt_custom_defaults_apply() {
    let d =
        SampleDefaults { width: 1024, height: 768, steps: 20, cfg_scale: 4.0, guidance: None, sampler: "euler".into() };
    let (prompts, _) = parse_prompt_text("x\ny --w 512", &d).unwrap();
    assert_eq!((prompts[0].width, prompts[0].height, prompts[0].steps, prompts[0].cfg_scale), (1024, 768, 20, 4.0));
    assert_eq!(prompts[0].sampler_or(&d), "euler");
    assert_eq!((prompts[1].width, prompts[1].height), (512, 768));
}

#[test]
fn sizes_are_floored_to_8_with_minimum_64_and_steps_clamped() {
    let (prompts, warnings) =
        parse_prompt_text("a --w 517 --h 1023\nb --w 10 --h 0\nc --s 0\nd --s 5000\ne --w 64 --s 1000", &sd()).unwrap();
    assert_eq!((prompts[0].width, prompts[0].height), (512, 1016));
    assert_eq!((prompts[1].width, prompts[1].height), (64, 64));
    assert_eq!(prompts[2].steps, 1);
    assert_eq!(prompts[3].steps, 1000);
    assert_eq!((prompts[4].width, prompts[4].steps), (64, 1000));
    // One warning per changed value, none for the last line.
    assert_eq!(warnings.len(), 6, "{warnings:?}");
    assert!(warnings[0].starts_with("line 1: width 517 becomes 512"), "{}", warnings[0]);
    assert!(warnings.iter().any(|w| w.starts_with("line 4: 5000 steps clamped to 1000")), "{warnings:?}");
}

#[test]
fn txt_unused_and_unknown_options_warn() {
    let text = "flux thing --g 3.5 --cn ctrl.png --ctr 0.25 --rcfg 1 --fs 3.0 --foo bar --w 768";
    let (prompts, warnings) = parse_prompt_text(text, &sd()).unwrap();
    assert_eq!(prompts[0].prompt, "flux thing");
    assert_eq!(prompts[0].width, 768);
    assert_eq!(warnings.len(), 6, "{warnings:?}");
    assert!(warnings[0].contains("--g") && warnings[0].contains("not used for SD"), "{}", warnings[0]);
    assert!(warnings[1].contains("--cn"));
    assert!(warnings[5].contains("unknown option `--foo bar`"), "{}", warnings[5]);
}

#[test]
fn txt_comment_only_in_first_column_like_sd_scripts() {
    let (prompts, warnings) = parse_prompt_text("#skip\n  # kept as a prompt\n#--w 5\nreal", &sd()).unwrap();
    assert_eq!(prompts.len(), 2);
    assert_eq!(prompts[0].prompt, "# kept as a prompt");
    assert_eq!(prompts[1].index, 1);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].starts_with("line 2:"), "{}", warnings[0]);
}

#[test]
fn txt_line_endings_bom_and_prompt_text_not_parsed_as_option() {
    let (prompts, _) = parse_prompt_text("\u{feff}d 5 cats --s 12\r\nw 3 dogs\rlast", &sd()).unwrap();
    assert_eq!(prompts.len(), 3);
    // sd-scripts would read "d 5" as seed 5 and "w 3" as width 3; lorakit keeps them as text.
    assert_eq!((prompts[0].prompt.as_str(), prompts[0].seed, prompts[0].steps), ("d 5 cats", None, 12));
    assert_eq!((prompts[1].prompt.as_str(), prompts[1].width), ("w 3 dogs", 512));
    assert_eq!(prompts[2].prompt, "last");
    // "--" without a leading space is part of the prompt.
    let (prompts, _) = parse_prompt_text("a--w 5 b", &sd()).unwrap();
    assert_eq!((prompts[0].prompt.as_str(), prompts[0].width), ("a--w 5 b", 512));
}

#[test]
fn txt_unparsable_values_are_errors_with_line_and_option() {
    for (text, line, needle) in [
        ("ok\n\nbad --w abc", "line 3", "`--w abc`"),
        ("bad --h 12.5", "line 1", "`--h 12.5`"),
        ("x\nbad --d -1", "line 2", "`--d -1`"),
        ("bad --s", "line 1", "`--s`"),
        ("bad --l seven", "line 1", "`--l seven`"),
        ("bad --n", "line 1", "needs a value"),
        ("bad --g high", "line 1", "`--g high`"),
    ] {
        let err = parse_prompt_text(text, &sd()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with(line), "{text:?}: {msg}");
        assert!(msg.contains(needle), "{text:?}: {msg}");
        assert!(matches!(err, SamplePromptError::Invalid { file: None, .. }));
    }
}

#[test]
fn txt_file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "prompts.txt", "good\nbad --w abc\n");
    let msg = parse_prompt_file(&path, &sd()).unwrap_err().to_string();
    assert!(msg.contains("prompts.txt: line 2: `--w abc`"), "{msg}");
    assert!(msg.contains("whole number"), "{msg}");
    // Warnings name the file too.
    let path = write(&dir, "warn.txt", "x --g 2\n");
    let (_, warnings) = parse_prompt_file(&path, &sd()).unwrap();
    assert!(warnings[0].contains("warn.txt: line 1:"), "{}", warnings[0]);
}

#[test]
fn toml_defaults_and_subsets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "prompts.TOML",
        r#"
[prompt]
width = 768
height = 768
sample_steps = 28
scale = 5
negative_prompt = "lowres"

[[prompt.subset]]
prompt = "a cat"
seed = 1

[[prompt.subset]]
prompt = "a dog"
width = 1000
negative_prompt = "blurry"
sample_sampler = "dpmsolver++"
sample_steps = 2000

[[prompt.subset]]
prompt = "flux"
guidance_scale = 3.5
"#,
    );
    let (prompts, warnings) = parse_prompt_file(&path, &sd()).unwrap();
    assert_eq!(prompts.len(), 3);
    let p = &prompts[0];
    assert_eq!((p.prompt.as_str(), p.negative.as_deref()), ("a cat", Some("lowres")));
    assert_eq!((p.width, p.height, p.steps, p.cfg_scale, p.seed, p.index), (768, 768, 28, 5.0, Some(1), 0));
    let p = &prompts[1];
    assert_eq!((p.width, p.negative.as_deref(), p.sampler.as_deref()), (1000, Some("blurry"), Some("dpmsolver++")));
    assert_eq!((p.steps, p.index), (1000, 1));
    assert_eq!(prompts[2].seed, None);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("[[prompt.subset]] 2: 2000 steps clamped"), "{}", warnings[0]);
    assert!(warnings[1].contains("[[prompt.subset]] 3: `guidance_scale`"), "{}", warnings[1]);
}

#[test]
fn toml_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (content, needle) in [
        ("prompt = \"x\"", "expected a `[prompt]` table"),
        ("[prompt]\nwidth = 512\n", "expected a `[prompt]` table"),
        ("[prompt\n", "not valid TOML"),
        (
            "[prompt]\n[[prompt.subset]]\nprompt = \"a\"\n[[prompt.subset]]\nwidth = \"wide\"\n",
            "[[prompt.subset]] 2: `width` must be a whole number",
        ),
        (
            "[prompt]\nseed = -3\n[[prompt.subset]]\nprompt = \"a\"\n",
            "[[prompt.subset]] 1: `seed` must be a whole number",
        ),
        ("[prompt]\n[[prompt.subset]]\nprompt = 5\n", "`prompt` must be a string"),
    ] {
        let path = write(&dir, "p.toml", content);
        let msg = parse_prompt_file(&path, &sd()).unwrap_err().to_string();
        assert!(msg.contains("p.toml: "), "{msg}");
        assert!(msg.contains(needle), "{content:?}: {msg}");
    }
}

#[test]
fn json_strings_and_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "prompts.json",
        r#"[
  "a cat --w 640 --d 3",
  {"prompt": "a dog", "negative_prompt": "ugly", "width": 832.0, "height": 1216, "seed": 9,
   "sample_steps": 12, "scale": 4.5, "sample_sampler": "k_euler_a", "enum": 7, "seed2": 1},
  {"prompt": "defaults", "seed": null},
  {"negative_prompt": "only a negative"}
]"#,
    );
    let (prompts, warnings) = parse_prompt_file(&path, &sd()).unwrap();
    assert_eq!(prompts.len(), 4);
    assert_eq!((prompts[0].prompt.as_str(), prompts[0].width, prompts[0].seed), ("a cat", 640, Some(3)));
    let p = &prompts[1];
    assert_eq!((p.prompt.as_str(), p.negative.as_deref()), ("a dog", Some("ugly")));
    assert_eq!((p.width, p.height, p.seed, p.steps, p.cfg_scale), (832, 1216, Some(9), 12, 4.5));
    assert_eq!((p.sampler.as_deref(), p.index), (Some("k_euler_a"), 1));
    assert_eq!((prompts[2].seed, prompts[2].width), (None, 512));
    assert_eq!(prompts[3].prompt, "");
    assert_eq!(prompts[3].index, 3);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("entry 2: unknown key `seed2`"), "{}", warnings[0]);
}

#[test]
fn json_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (content, needle) in [
        ("{\"prompt\": \"x\"}", "expected a list of prompts"),
        ("[1]", "entry 1: must be a prompt string or a table"),
        ("[\"ok\", \"bad --s many\"]", "entry 2: `--s many`"),
        ("[{\"width\": 512.5}]", "entry 1: `width` must be a whole number"),
        ("[{\"scale\": \"high\"}]", "entry 1: `scale` must be a number"),
        ("[", "not valid JSON"),
    ] {
        let path = write(&dir, "p.json", content);
        let msg = parse_prompt_file(&path, &sd()).unwrap_err().to_string();
        assert!(msg.contains("p.json: "), "{msg}");
        assert!(msg.contains(needle), "{content:?}: {msg}");
    }
}

#[test]
fn unknown_sampler_warns() {
    let (prompts, warnings) = parse_prompt_text("x --ss Euler", &sd()).unwrap();
    assert_eq!(prompts[0].sampler.as_deref(), Some("Euler"));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("unknown sampler `Euler`") && warnings[0].contains("ddim"), "{}", warnings[0]);
}

#[test]
fn file_level_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = write(&dir, "prompts.yaml", "x");
    assert!(matches!(parse_prompt_file(&yaml, &sd()), Err(SamplePromptError::UnknownFormat { .. })));
    let missing = dir.path().join("missing.txt");
    let err = parse_prompt_file(&missing, &sd()).unwrap_err();
    assert!(matches!(err, SamplePromptError::Read { .. }));
    assert!(err.to_string().contains("missing.txt"), "{err}");
    let binary = dir.path().join("bin.txt");
    std::fs::write(&binary, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let msg = parse_prompt_file(&binary, &sd()).unwrap_err().to_string();
    assert!(msg.contains("bin.txt: file: the file is not UTF-8 text"), "{msg}");
    // A UTF-8 BOM and CRLF are fine.
    let bom = write(&dir, "bom.txt", "\u{feff}# comment\r\nhello --w 640\r\n");
    let (prompts, warnings) = parse_prompt_file(&bom, &sd()).unwrap();
    assert_eq!((prompts.len(), prompts[0].prompt.as_str(), prompts[0].width), (1, "hello", 640));
    assert!(warnings.is_empty());
    // An empty file has no prompts.
    let empty = write(&dir, "empty.txt", "");
    assert!(parse_prompt_file(&empty, &sd()).unwrap().0.is_empty());
}

#[test]
fn sample_file_names() {
    assert_eq!(
        sample_file_name(Some("my_lora"), SampleTag::Epoch(3), 0, "20240102030405", Some(42)),
        "my_lora_e000003_00_20240102030405_42.png"
    );
    assert_eq!(
        sample_file_name(Some("my_lora"), SampleTag::Step(1500), 7, "20240102030405", None),
        "my_lora_001500_07_20240102030405.png"
    );
    assert_eq!(sample_file_name(None, SampleTag::Step(0), 12, "20991231235959", None), "000000_12_20991231235959.png");
    assert_eq!(
        sample_file_name(None, SampleTag::Epoch(1234567), 100, "20240102030405", Some(0)),
        "e1234567_100_20240102030405_0.png"
    );
    // Python: `args.output_name + "_"` even when the name is empty.
    assert_eq!(sample_file_name(Some(""), SampleTag::Epoch(1), 1, "t", None), "_e000001_01_t.png");
}
