#!/usr/bin/env python3
"""Reference data for lorakit-models' CLIP tokenizer (crates/lorakit-models/src/clip_tokenizer.rs).

Writes two files:

* tests/fixtures/reference/clip_tokenizer/prompts.json: about 200 prompts (booru tags, weights,
  escaped brackets, sentences, numbers, punctuation runs, accents, CJK, emoji, odd whitespace,
  literal special tokens, text ftfy repairs, captions longer than 225 tokens) with the ids of
  HuggingFace transformers' slow `CLIPTokenizer`: once as sd-scripts' SD1 tokenizer
  (openai/clip-vit-large-patch14: pad = <|endoftext|>) and, where different, as the SD2 / SDXL
  tokenizer_2 configuration (pad token "!", which HF also splits the text on). It also holds
  padded outputs and sd-scripts' own 75-token chunking (`TokenizeStrategy._get_input_ids`, run
  with a tokenizer built here) for max_token_length None / 150 / 225, SD1 and SD2 style.
* crates/lorakit-models/assets/clip_text_tables.json: the data the Rust port needs to see text
  exactly as Python does. From ftfy (the version installed here; HF's CLIPTokenizer runs
  `ftfy.fix_text` on every text): the HTML entity table, the single-byte codecs ftfy tries when
  repairing mojibake, its width map, and its regexes translated to Rust `regex` syntax (Python's
  Unicode `\\s`/`\\w`/`\\d` expanded into explicit classes). From Python itself: the code points
  unassigned in its Unicode database (14.0 for Python 3.11; `str.lower` and NFC leave them
  alone, while Rust's newer tables would not) and the three character classes of CLIP's
  pre-tokenizer regex as the `regex` module matches them under IGNORECASE.

No hub access is needed: vocab.json / merges.txt are derived in a temporary directory from the
vocabulary the crate ships (assets/bpe_simple_vocab_16e6.txt.gz), exactly as CLIP builds them:
256 byte characters, the same with </w>, the 48,894 merges, <|startoftext|>, <|endoftext|>.

Run from the repository root:

    PYTHONPATH=/work/bench/sd-scripts /work/bench/venv/bin/python tools/reference/clip_tokenizer_fixture.py

Larger differential corpora (not committed; same format as prompts.json), for the ignored Rust
test `differential_big_fixture` (run it with CLIP_TOKENIZER_BIG_FIXTURE=PATH):

* `--big N PATH`: every HTML entity, numeric references, text put through each mojibake path
  ftfy repairs, and N random texts (mojibake-prone characters, random code points, tags);
* `--code-points PATH`: every Unicode code point, 16 at a time in four arrangements
  (278,016 texts, about 3 minutes).
"""

import argparse
import gzip
import json
import os
import random
import re
import sys
import tempfile
from re import _constants as C
from re import _parser as P

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import ftfy  # noqa: E402
import ftfy.badness  # noqa: E402
import ftfy.chardata  # noqa: E402
import regex  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402
from transformers.models.clip.tokenization_clip import bytes_to_unicode  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VOCAB_GZ = os.path.join(ROOT, "crates/lorakit-models/assets/bpe_simple_vocab_16e6.txt.gz")
TEXT_TABLES = os.path.join(ROOT, "crates/lorakit-models/assets/clip_text_tables.json")
OUT_DIR = os.path.join(ROOT, "tests/fixtures/reference/clip_tokenizer")

SD_SCRIPTS = os.environ.get("SD_SCRIPTS", "/work/bench/sd-scripts")
if SD_SCRIPTS not in sys.path:
    sys.path.insert(0, SD_SCRIPTS)


# --------------------------------------------------------------------------------------------
# HF tokenizer files from the shipped vocabulary


def build_hf_files(tmp):
    text = gzip.open(VOCAB_GZ).read().decode("utf-8")
    merges = text.split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split(" ")) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == 49408
    vocab_file = os.path.join(tmp, "vocab.json")
    merges_file = os.path.join(tmp, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def load_tokenizers(tmp):
    vocab_file, merges_file = build_hf_files(tmp)
    sd1 = CLIPTokenizer(vocab_file, merges_file)  # openai/clip-vit-large-patch14: pad = eos
    sd2 = CLIPTokenizer(vocab_file, merges_file, pad_token="!")  # SD2 tokenizer, SDXL tokenizer_2
    for t in (sd1, sd2):
        t.model_max_length = 77  # as in the hub's tokenizer_config.json
    assert sd1.fix_text is not None, "ftfy must be installed: HF uses it when present"
    assert sd1("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert sd2.pad_token_id == 0
    return sd1, sd2


# --------------------------------------------------------------------------------------------
# ftfy tables and regexes in Rust syntax


ALL_CHARS = "".join(chr(cp) for cp in range(0x110000) if not (0xD800 <= cp <= 0xDFFF))


def index_to_cp(i):
    return i if i < 0xD800 else i + 0x800


def class_ranges(compiled_run):
    """Code points matched by a compiled `CLASS+` pattern, as [first, last] ranges: one scan over
    every code point (surrogates left out) in order."""
    ranges = []
    for m in compiled_run.finditer(ALL_CHARS):
        a, b = index_to_cp(m.start()), index_to_cp(m.end() - 1)
        if a < 0xD800 < b:  # the run crosses the surrogate gap
            ranges += [[a, 0xD7FF], [0xE000, b]]
        else:
            ranges.append([a, b])
    return ranges


def python_class_ranges(pattern):
    """Code points (no surrogates) that Python's `re` matches with `pattern`, as ranges."""
    return [tuple(r) for r in class_ranges(re.compile("(?:" + pattern + ")+"))]


CATEGORY_RANGES = {}


def category_ranges(cat):
    name = {
        C.CATEGORY_SPACE: r"\s",
        C.CATEGORY_UNI_SPACE: r"\s",
        C.CATEGORY_WORD: r"\w",
        C.CATEGORY_UNI_WORD: r"\w",
        C.CATEGORY_DIGIT: r"\d",
        C.CATEGORY_UNI_DIGIT: r"\d",
    }.get(cat)
    if name is None:
        raise ValueError(f"unsupported category {cat}")
    if name not in CATEGORY_RANGES:
        CATEGORY_RANGES[name] = python_class_ranges(name)
    return CATEGORY_RANGES[name]


def rx_char(cp):
    return "\\x{%X}" % cp


def emit_class_items(items):
    out = []
    negate = False
    for op, av in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            out.append(rx_char(av))
        elif op is C.RANGE:
            out.append(rx_char(av[0]) + "-" + rx_char(av[1]))
        elif op is C.CATEGORY:
            for a, b in category_ranges(av):
                out.append(rx_char(a) if a == b else rx_char(a) + "-" + rx_char(b))
        else:
            raise ValueError(f"unsupported class item {op}")
    return "[" + ("^" if negate else "") + "".join(out) + "]"


def emit_seq(seq):
    return "".join(emit_item(op, av) for op, av in seq)


def emit_item(op, av):
    if op is C.LITERAL:
        return rx_char(av)
    if op is C.NOT_LITERAL:
        return "[^" + rx_char(av) + "]"
    if op is C.ANY:
        return "."  # neither side has DOTALL: anything but \n
    if op is C.IN:
        return emit_class_items(av)
    if op is C.CATEGORY:
        return emit_class_items([(C.CATEGORY, av)])
    if op is C.BRANCH:
        return "(?:" + "|".join(emit_seq(s) for s in av[1]) + ")"
    if op is C.SUBPATTERN:
        _group, add_flags, del_flags, p = av
        if add_flags or del_flags:
            raise ValueError("inline flags are not supported")
        return "(?:" + emit_seq(p) + ")"
    if op in (C.MAX_REPEAT, C.MIN_REPEAT):
        lo, hi, p = av
        body = "(?:" + emit_seq(p) + ")"
        if (lo, hi) == (0, C.MAXREPEAT):
            q = "*"
        elif (lo, hi) == (1, C.MAXREPEAT):
            q = "+"
        elif (lo, hi) == (0, 1):
            q = "?"
        elif hi is C.MAXREPEAT:
            q = "{%d,}" % lo
        else:
            q = "{%d,%d}" % (lo, hi)
        return body + q + ("?" if op is C.MIN_REPEAT else "")
    if op is C.AT:
        if av is C.AT_BEGINNING or av is C.AT_BEGINNING_STRING:
            return "\\A"  # no MULTILINE: start of the text
        raise ValueError(f"unsupported anchor {av}")
    raise ValueError(f"unsupported regex op {op}")


def to_rust_regex(compiled):
    """Translate a compiled Python `re` pattern to Rust `regex` syntax (subset used by ftfy)."""
    tree = P.parse(compiled.pattern, compiled.flags)
    return emit_seq(list(tree))


def to_rust_regex_with_lookbehind(compiled):
    """Same, for a pattern that starts with one negative lookbehind of one character class:
    returns (class, rest). The Rust side checks the class on the preceding character."""
    tree = list(P.parse(compiled.pattern, compiled.flags))
    op, av = tree[0]
    assert op is C.ASSERT_NOT and av[0] == -1, "expected a leading negative lookbehind"
    look = list(av[1])
    assert len(look) == 1 and look[0][0] is C.IN
    return emit_class_items(look[0][1]), emit_seq(tree[1:])


def ranges_of(pred):
    """Code points (no surrogates) where pred(char) holds, as [first, last] pairs."""
    ranges = []
    start = None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and not (0xD800 <= cp <= 0xDFFF) and pred(chr(cp))
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            ranges.append([start, cp - 1])
            start = None
    return ranges


def clip_pattern_classes():
    """The classes of CLIPTokenizer's pattern as the `regex` module matches single characters
    under IGNORECASE (the flag HF compiles it with), plus checks of what the Rust side assumes
    about the literal alternatives: Rust's (?i) folds them the same way."""
    flags = regex.IGNORECASE
    folds = {}
    for ch in sorted(set("startoftextendofs're've'm'll'd<|>")):
        folds[ch] = [index_to_cp(m.start()) for m in regex.finditer("(?i)" + regex.escape(ch), ALL_CHARS)]
    expected = {ch: sorted({ord(ch), ord(ch.upper()), ord(ch.lower())}) for ch in folds}
    expected["s"] = [ord("S"), ord("s"), 0x17F]  # LATIN SMALL LETTER LONG S, as in Rust's (?i)
    assert folds == expected, folds
    return (
        class_ranges(regex.compile(r"[\p{L}]+", flags)),
        class_ranges(regex.compile(r"[\p{N}]+", flags)),
        class_ranges(regex.compile(r"[^\s\p{L}\p{N}]+", flags)),
    )


def text_tables():
    import unicodedata

    from ftfy import fixes

    badness_rx = to_rust_regex(ftfy.badness.BADNESS_RE)
    look, detector_rx = to_rust_regex_with_lookbehind(ftfy.chardata.UTF8_DETECTOR_RE)
    # The `regex` module understands \U........: check the translation against Python's own regexes.
    rng = random.Random(7)
    alphabet = sorted(
        set("".join(ftfy.badness.MOJIBAKE_CATEGORIES.values()) + "".join(ftfy.chardata.UTF8_CLUES.values()))
        | set("aAzZ .,!?ÃÂ×²³ØÙà√≈‚Äâóв̀ЂГВРС°µβ€ΒΓΞΟā \t\n\u3000é_1")
    )
    alphabet = [c for c in alphabet if not (0xD800 <= ord(c) <= 0xDFFF)]

    def py(rx):  # the `regex` module spells \x{..} as \U........
        return regex.compile(re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: "\\U%08X" % int(m[1], 16), rx))

    b_py, b_rs = ftfy.badness.BADNESS_RE, py(badness_rx)
    d_py, d_rs = ftfy.chardata.UTF8_DETECTOR_RE, py("(?<!" + look + ")" + detector_rx)
    for _ in range(20000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        assert bool(b_py.search(s)) == bool(b_rs.search(s)), repr(s)
        assert [m.span() for m in d_py.finditer(s)] == [m.span() for m in d_rs.finditer(s)], repr(s)

    encodings = []
    for name in ftfy.chardata.CHARMAP_ENCODINGS:
        table = bytes(range(256)).decode(name)
        assert len(table) == 256 and len(set(table)) == 256
        encodings.append({"name": name, "decode": table})

    letter, number, other = clip_pattern_classes()
    return {
        "about": (
            f"Python {sys.version.split()[0]} (Unicode {unicodedata.unidata_version}), regex {regex.__version__} "
            f"and ftfy {ftfy.__version__} (Apache-2.0, Copyright 2023 Robyn Speer) data for lorakit's CLIP tokenizer; "
            "generated by tools/reference/clip_tokenizer_fixture.py, do not edit."
        ),
        "html_entities": dict(sorted(ftfy.chardata.HTML_ENTITIES.items())),
        "html_entity_regex": to_rust_regex(ftfy.chardata.HTML_ENTITY_RE),
        "ansi_regex": to_rust_regex(fixes.ANSI_RE),
        "width_map": {"%X" % k: v for k, v in sorted(ftfy.chardata.WIDTH_MAP.items())},
        "charmap_encodings": encodings,
        "badness_regex": badness_rx,
        "utf8_detector_regex": detector_rx,
        "utf8_detector_not_after": look,
        "python_unassigned": ranges_of(lambda c: unicodedata.category(c) == "Cn"),
        "clip_letter": letter,
        "clip_number": number,
        "clip_other": other,
    }


# --------------------------------------------------------------------------------------------
# Prompts

HAND_WRITTEN = [
    "a photo of a cat",
    "",
    " ",
    "A Photo Of A CAT",
    "1girl, solo, long_hair, looking_at_viewer, smile, blue_eyes, blonde_hair, dress",
    "1girl, 2boys, 3others, multiple_girls, 10s, 1990s_(style)",
    "masterpiece, best quality, (masterpiece:1.2), ((best quality)), [low quality], (worst quality:0.8)",
    "(cowboy shot:1.3), (from side:0.9), {dynamic angle}, [[sketch]]",
    "artist name \\(artist\\), character \\(series\\), kaname madoka \\(cosplay\\)",
    "hatsune_miku_\\(append\\), vocaloid, twintails, aqua_hair",
    "<lora:my_style:0.8>, sks person, portrait",
    "sks dog in a bucket, photo, 35mm, f/1.8, bokeh",
    "1024x768, 512x512, 8k, 4k uhd, 16:9 aspect ratio, 3:2",
    "score_9, score_8_up, score_7_up, source_anime, rating_safe",
    "A cinematic photograph of an astronaut riding a horse on the moon, dramatic lighting.",
    "The quick brown fox jumps over the lazy dog. The dog didn't care; it's lazy!",
    "I'm sure they'll say we'd've done it, you're right, isn't it?",
    "It's John's and Mary's; THEY'RE HERE, We'Ve Seen It, I'M, YOU'LL, HE'D",
    "rock'n'roll, o'clock, '80s style, ''quoted'', 'single'",
    "photo of a woman, wearing a red dress!!!, happy :) :D ;-) <3 >_< ^_^ o_O",
    "what?!?! no... wait---really?? ***stars*** ### hashtags ### $$$ 100% @user #tag",
    "~~~ ___ --- +++ === |||| //// \\\\\\\\ ..... ,,,,, ;;;;; :::::",
    "a <b>bold</b> move & more: x < y > z",
    "café, naïve, résumé, Ångström, façade, jalapeño, São Paulo, Zürich, crème brûlée",
    "ÉCOLE NORMALE SUPÉRIEURE, ÀÉÎÕÜ, Œuvre, Æsir, ß, straße, STRASSE",
    "Ελληνικά ΣΟΦΟΣ σοφος, русский текст, Україна, български",
    "日本語のテキスト, 東京タワー, ひらがな, カタカナ, 漢字",
    "中文提示词：一个穿着红色连衣裙的女孩，站在樱花树下",
    "한국어 프롬프트, 서울, 김치",
    "عربي, עברית, हिन्दी, ไทย, tiếng Việt",
    "emoji 😀😃😄 🐱‍👤 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 👍🏽 🇯🇵 ✨🔥",
    "tabs\tand\ttabs, new\nlines\n\nand  multiple   spaces    here",
    "   leading and trailing whitespace   \t\n",
    "line one\r\nline two\rline three\u2028line four\u2029line five",
    "non\u00a0breaking\u2003em\u3000ideographic\u202fnarrow spaces",
    "a cat<|endoftext|>a dog",
    "<|startoftext|>a photo<|endoftext|>",
    "<|endoftext|><|endoftext|><|endoftext|>",
    "!!<|endoftext|>!!",
    "<|ENDOFTEXT|> <|StartOfText|>",
    "<|endoftext|",
    "<|endof text|>",
    "x<|startoftext|>y<|endoftext|>z",
    "wow!great! hello ! world!",
    "!!!",
    "!",
    "a!b!c",
    "don\u2019t stop, \u201cquoted\u201d, \u2018single\u2019, \u201elow\u201c, it\u02bcs",
    "\ufb01ne \ufb02ower \ufb03x \ufb00 \u0132sselmeer \u01c4 \ufb06ar",
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48\u3000\uff34\uff45\uff58\uff54 \uff11\uff12\uff13 \uff01\uff1f",
    "\uff8a\uff9d\uff76\uff78 \uff76\uff80\uff76\uff85, halfwidth \uffe1 \uffe9",
    "caf\u00c3\u00a9 cr\u00c3\u00a8me br\u00c3\u00bbl\u00c3\u00a9e",
    "\u00e2\u20ac\u0153mojibake quotes\u00e2\u20ac\u009d and \u00e2\u20ac\u2122apostrophe",
    "voil\u00c3 le travail",
    "The Mona Lisa doesn\u00e2\u20ac\u2122t have eyebrows.",
    "\u00c3\u00a0 la carte, \u00c3\u00a9t\u00c3\u00a9",
    "Fran\u00c3\u00a7ois & Bj\u00c3\u00b6rk",
    "&amp; &lt;tag&gt; &quot;q&quot; &#39;s &#x27;t &copy; &eacute;t&eacute; &EACUTE; &nbsp;x",
    "Tom &amp; Jerry, AT&amp;T, &amp;amp; double, &hellip; &mdash; &#8217;",
    "&notanentity; &amp &#xZZ; &#65abc; &#0; &#128; &#x1F600; &#99999999;",
    "less < than &amp; stays escaped",
    "line1 &amp;\nline2 < x\nline3 &amp;",
    "\x1b[31mred text\x1b[0m normal \x1b[1;32mgreen\x1b[m",
    "control\x00chars\x01here\x07 and\x0bvertical\x0cform\x7fdel \ufeffbom",
    "c1 controls \x85 \x91quoted\x92 \x80 \x81",
    "e\u0301 vs \u00e9, A\u030a vs \u00c5, n\u0303",
    "\u0130stanbul, D\u0130YARBAKIR, \u0131s\u0131k",
    "\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3. \u03a3",
    "\u2160 \u2161 \u2162 roman numerals, \u2460\u2461\u2462 circled, \u00b2\u00b3\u00b9 superscripts, \u00bd\u00bc",
    "numbers 0123456789 3.14159 -42 +7 1,000,000 1e10 0x1F",
    "\u0661\u0662\u0663 arabic digits, \u096a\u096b devanagari digits, \u0e51\u0e52 thai digits",
    "URL https://example.com/path?query=1&x=2#frag and email someone@example.org",
    "C:\\Users\\name\\Pictures\\img_001.png, /home/user/data/1_sks dog/",
    "snake_case_tag, kebab-case-tag, CamelCaseTag, UPPER_CASE, mixed_Case-Tag",
    "ｓｔｙｌｅ, 「quote」, 【bracket】, 『book』, 〈angle〉, ・dot",
    "zero\u200bwidth\u200cnon\u200djoiner\u2060word",
    "combining a\u0300\u0301\u0302\u0303\u0304 overload",
    "\u00a9 \u00ae \u2122 \u00b0C \u00b1 \u00d7 \u00f7 \u2264 \u2265 \u2260 \u221e \u2211 \u222b",
    "math: a^2 + b^2 = c^2, f(x) = x*2, [0, 1), {a|b|c}",
    "{red|blue|green} dress, {{literal}} braces",
    "keep, tokens ||| separated, caption",
    "BREAK, AND, ADDCOMM, ADDROW",
    "a" * 40,
    "supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 3,
    "aaaa bbbb aaaaaa",
    "\U0001d400\U0001d401 math bold, \U0001f170 \U0001f171",
    "\ud7a3 \uac00 hangul syllables, \u1100\u1161 jamo",
    "\u0345 ypogegrammeni, \u1fb3 \u1fbc alpha with ypogegrammeni",
    "\u00b5 micro, \u212b angstrom sign, \u2126 ohm, \u212a kelvin",
    "\u1e9e capital sharp s, \u00df, \ufb05",
    "\u0149 napostrophe, \u01f0 j caron",
    "\U000e0067\U000e0062 tag chars \U0001f3f4\U000e0067\U000e0062\U000e0077\U000e006c\U000e0073\U000e007f",
    "\ufff9\ufffa\ufffb interlinear \ufffc object \ufffd replacement",
    "\u206a\u206f deprecated arabic controls",
    "\u200e\u200f\u202a\u202e bidi marks",
    "tab-separated\ttags\t\t\tlots",
    "\u3000\u3000fullwidth indent",
    "'s 't 're 've 'm 'll 'd alone",
    "''s ''t ' s",
    "\u2018s \u2019t \u201bre",
    # Mojibake along each of ftfy's repair paths.
    "caf\u00e9".encode("utf-8").decode("cp437") + " and " + "caf\u00e9".encode("utf-8").decode("macroman"),
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439".encode("utf-8").decode("windows-1251"),
    "caf\u00e9".encode("utf-8").decode("latin-1").encode("utf-8").decode("windows-1252"),  # twice
    "\u00e2\u20ac\u0153 like this \u00e2\u20ac\ufffd",  # lossy windows-1252
    "\u00ed\u00a0\u00bd\u00ed\u00b8\u0080 cesu-8 emoji, nul\u00c0\u0080here",
    "\x93smart\x94 quotes as C1 controls",
    "The word \u00e2\u20ac\u0153caf\u00c3\u00a9\u00e2\u20ac\u009d is fine, ok",
]

TAGS = (
    "1girl solo long_hair short_hair looking_at_viewer smile open_mouth blush blue_eyes red_eyes "
    "brown_hair black_hair blonde_hair white_hair shirt skirt dress jacket hat gloves thighhighs "
    "outdoors indoors sky cloud day night tree flower cherry_blossoms water beach city "
    "upper_body full_body cowboy_shot portrait close-up from_side from_behind from_above "
    "simple_background white_background gradient_background depth_of_field blurry_background "
    "holding holding_sword weapon sword katana school_uniform serafuku maid maid_headdress "
    "animal_ears cat_ears fox_ears tail wings halo horns glasses earrings jewelry necklace "
    "masterpiece best_quality highres absurdres ultra-detailed official_art anime_coloring "
    "hatsune_miku kaname_madoka saber_(fate) rem_(re:zero) artoria_pendragon_(fate) "
    "2boys 3girls multiple_girls 1990s_(style) 4koma comic monochrome greyscale"
).split()

WORDS = (
    "a an the of in on with and photo painting portrait landscape woman man girl boy cat dog "
    "beautiful detailed dramatic soft golden hour lighting cinematic wide angle lens shot by "
    "trending artstation octane render unreal engine volumetric fog sunset sunrise mountains "
    "river forest castle city street night neon rain reflections highly intricate sharp focus "
    "illustration concept art smooth elegant fantasy sci-fi cyberpunk steampunk watercolor oil"
).split()


def generated_prompts(rng):
    out = []
    # Tag captions with shuffled tags, weights and escapes (kohya-style).
    for _ in range(40):
        tags = rng.sample(TAGS, rng.randint(3, 25))
        parts = []
        for t in tags:
            r = rng.random()
            if r < 0.1:
                t = f"({t}:{rng.choice(['0.5', '0.8', '1.1', '1.2', '1.35', '2'])})"
            elif r < 0.15:
                t = "((" + t + "))"
            elif r < 0.2:
                t = "[" + t + "]"
            elif r < 0.25:
                t = t.replace("(", "\\(").replace(")", "\\)")
            elif r < 0.35:
                t = t.replace("_", " ")
            parts.append(t)
        sep = rng.choice([", ", ",", " , ", ",  ", ", "])
        out.append(sep.join(parts))
    # Natural-language captions.
    for _ in range(30):
        n = rng.randint(4, 40)
        s = " ".join(rng.choice(WORDS) for _ in range(n))
        s = s[0].upper() + s[1:] + rng.choice([".", "", "!", "...", "?"])
        out.append(s)
    # Long captions: over 225 tokens, some over 300.
    for k in range(8):
        n = 120 + 40 * k
        if k % 2 == 0:
            out.append(", ".join(rng.choice(TAGS) for _ in range(n // 2)))
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    # Random strings over a mixed alphabet.
    alphabet = (
        "abcXYZ019 ,.!?'()[]{}<>:;_-\\/|&#@*^%$~`\"\t\n"
        "éÉàçñöüßøåæœ" "日本語中文한국어" "ΣσςАя" "😀🐱👍🏽" "\u00a0\u3000\u2019\u201c\u201d\ufb01\uff21"
    )
    for _ in range(25):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))))
    return out


def all_prompts():
    rng = random.Random(1234)
    prompts = HAND_WRITTEN + generated_prompts(rng)
    seen = set()
    uniq = []
    for p in prompts:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


# --------------------------------------------------------------------------------------------
# sd-scripts' chunking, through its own code


def sd_scripts_chunks(tokenizer, text, max_token_length):
    """`SdTokenizeStrategy.tokenize` for one text, with our tokenizer instead of the hub's."""
    from library.strategy_sd import SdTokenizeStrategy

    strategy = SdTokenizeStrategy.__new__(SdTokenizeStrategy)
    strategy.tokenizer = tokenizer
    strategy.max_length = tokenizer.model_max_length if max_token_length is None else max_token_length + 2
    (ids,) = strategy.tokenize(text)  # (1, n_chunks, 77) for one text
    assert ids.dim() == 3 and ids.shape[0] == 1 and ids.shape[2] == 77, ids.shape
    return ids[0].tolist()


# --------------------------------------------------------------------------------------------


def big_corpus(sd1, sd2, n, path):
    rng = random.Random(99)
    clue_chars = "".join(ftfy.badness.MOJIBAKE_CATEGORIES.values()) + "".join(ftfy.chardata.UTF8_CLUES.values())
    clue_chars = [c for c in clue_chars if not (0xD800 <= ord(c) <= 0xDFFF)]
    words = TAGS + WORDS + ["café", "naïve", "日本", "😀", "&amp;", "&lt;", "don’t", "\uff21\uff22"]

    def rand_cp():
        while True:
            r = rng.random()
            if r < 0.5:
                cp = rng.randint(0x80, 0x2FFF)
            elif r < 0.8:
                cp = rng.randint(0, 0x10FFFF)
            else:
                cp = rng.randint(0xFF00, 0xFFFF)
            if not (0xD800 <= cp <= 0xDFFF):
                return chr(cp)

    def mojibake(s):
        enc = rng.choice(["latin-1", "windows-1252", "windows-1251", "macroman", "cp437", "iso-8859-2"])
        try:
            return s.encode("utf-8").decode(enc, errors="replace")
        except Exception:
            return s

    # ftfy's territory, systematically: every HTML entity, numeric references, and text put
    # through the mojibake ftfy repairs (UTF-8 read as each single-byte codec it knows, twice,
    # with lost bytes, with 0xA0 turned into spaces, CESU-8 surrogates, Java NULs).
    items = []
    for name in sorted(ftfy.chardata.HTML_ENTITIES):
        items.append(f"x {name} y{name}z")
    for num in list(range(0, 300)) + [0xD7FF, 0xD800, 0xDFFF, 0xFDD0, 0xFFFE, 0xFFFF, 0x1FFFE, 0x10FFFF, 0x110000, 10**30]:
        items.append(f"&#{num}; &#x{num:x}; &#X{num:X}; &#{num}x; &#0{num};")
    samples = [
        "café crème brûlée", "naïve résumé", "Ångström", "straße", "jalapeño", "Zürich", "Łódź", "Čeština",
        "русский текст", "Ελληνικά", "日本語", "한국어", "😀 emoji 👍🏽", "‘quotes’ “double” – — … •", "½ ¼ ¾ ° ± ×",
        "à la carte", "voilà", "€100 £5 ¥3", "São Paulo", "İstanbul", "Œuvre", "™ ® ©", "ﬁne",
    ]
    codecs = ["latin-1", "windows-1252", "windows-1251", "windows-1250", "windows-1253", "windows-1254",
              "windows-1257", "iso-8859-2", "macroman", "cp437"]
    for text in samples:
        raw = text.encode("utf-8")
        for enc in codecs:
            once = raw.decode(enc, errors="replace")
            items.append(once)
            items.append("prefix " + once + " suffix")
            items.append(once.replace("\u00a0", " "))
            try:
                items.append(once.encode("utf-8").decode(enc, errors="replace"))  # twice
            except Exception:
                pass
        cesu = "".join(
            ch if ord(ch) < 0x10000 else
            (chr(0xD800 + ((ord(ch) - 0x10000) >> 10)) + chr(0xDC00 + ((ord(ch) - 0x10000) & 0x3FF)))
            for ch in text
        ).encode("utf-8", "surrogatepass")
        items.append(cesu.decode("latin-1"))
        items.append(cesu.decode("windows-1252", errors="replace"))
    items.append(b"nul\xc0\x80here \xc3\xa9".decode("latin-1"))
    items.append("line one &amp;\nline <two> &amp;\nline three &amp;")
    items.append("\u00c3\u00a9 \n\u00e2\u20ac\u2122 &lt;")
    for i in range(n):
        kind = i % 5
        if kind == 0:
            s = "".join(rand_cp() for _ in range(rng.randint(1, 20)))
        elif kind == 1:
            s = "".join(rng.choice(clue_chars + list("aeioun  .,")) for _ in range(rng.randint(1, 16)))
        elif kind == 2:
            s = mojibake(" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))))
        elif kind == 3:
            s = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
            s = "".join(ch if rng.random() > 0.05 else rand_cp() for ch in s)
        else:
            s = "".join(chr(rng.randint(0, 0x7F)) for _ in range(rng.randint(1, 30)))
        items.append(s)
    write_corpus(sd1, sd2, items, path)


def write_corpus(sd1, sd2, texts, path):
    out = []
    for s in texts:
        e = {"text": s, "ids": sd1(s).input_ids}
        b = sd2(s).input_ids
        if b != e["ids"]:
            e["ids_sd2"] = b
        out.append(e)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"prompts": out}, f, ensure_ascii=True)
    print(f"wrote {len(out)} texts to {path}")


def code_point_corpus(sd1, sd2, path):
    """Every code point (no surrogates), 16 at a time: space-separated, two runs of 8, and
    between letters, so classes, case mapping, normalisation and ftfy all see each one."""
    texts = []
    for i in range(0, len(ALL_CHARS), 16):
        block = ALL_CHARS[i : i + 16]
        texts += [" ".join(block), block[:8], block[8:], "A" + "B".join(block)]
    write_corpus(sd1, sd2, texts, path)


def dump_one_item_per_line(doc, f):
    """JSON with one record (list item of objects, or object entry) per line: readable diffs
    without one line per number."""

    def one(x):
        return json.dumps(x, ensure_ascii=True, separators=(",", ":"))

    f.write("{\n")
    keys = list(doc)
    for n, k in enumerate(keys):
        v = doc[k]
        f.write(json.dumps(k) + ": ")
        if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            f.write("[\n" + ",\n".join(one(x) for x in v) + "\n]")
        elif isinstance(v, dict):
            f.write("{\n" + ",\n".join(one(a) + ":" + one(b) for a, b in v.items()) + "\n}")
        else:
            f.write(one(v))
        f.write(",\n" if n + 1 < len(keys) else "\n")
    f.write("}\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", nargs=2, metavar=("N", "PATH"), help="also write a random differential corpus")
    ap.add_argument("--code-points", metavar="PATH", help="also write an every-code-point differential corpus")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sd1, sd2 = load_tokenizers(tmp)

        tables = text_tables()
        with open(TEXT_TABLES, "w", encoding="utf-8") as f:
            dump_one_item_per_line(tables, f)

        prompts = all_prompts()
        entries = []
        for text in prompts:
            ids = sd1(text).input_ids
            e = {"text": text, "ids": ids}
            ids2 = sd2(text).input_ids
            if ids2 != ids:
                e["ids_sd2"] = ids2
            entries.append(e)

        # Padded outputs exactly as sd-scripts calls the tokenizer (SD1: pad = eos; SD2: pad = 0).
        lengths = [(i, len(e["ids"])) for i, e in enumerate(entries)]
        short = [i for i, n in lengths if n <= 20][:6]
        mid = [i for i, n in lengths if 60 <= n <= 90][:4]
        long = [i for i, n in lengths if n > 160]
        very_long = [i for i, n in lengths if n > 229]
        assert len(very_long) >= 3, "need captions over 225 tokens"
        padded = []
        for i in short + mid + long[:3]:
            for name, tok in (("sd1", sd1), ("sd2", sd2)):
                for max_length in (77, 152, 227):
                    out = tok(entries[i]["text"], padding="max_length", truncation=True, max_length=max_length)
                    padded.append(
                        {"prompt": i, "style": name, "max_length": max_length, "pad_id": tok.pad_token_id,
                         "ids": out.input_ids}
                    )

        chunks = []
        for i in short[:3] + mid[:2] + long[:4]:
            for name, tok in (("sd1", sd1), ("sd2", sd2)):
                for mtl in (None, 150, 225):
                    chunks.append(
                        {"prompt": i, "style": name, "max_token_length": mtl, "pad_id": tok.pad_token_id,
                         "chunks": sd_scripts_chunks(tok, entries[i]["text"], mtl)}
                    )

        doc = {
            "about": (
                "HF transformers CLIPTokenizer (slow, with ftfy) ids for lorakit's CLIP tokenizer tests; "
                "generated by tools/reference/clip_tokenizer_fixture.py, do not edit. `ids` include "
                "BOS/EOS and are not truncated (pad = <|endoftext|>, openai/clip-vit-large-patch14); "
                "`ids_sd2` (only where different) is the SD2 / SDXL tokenizer_2 configuration (pad \"!\"). "
                "`padded`: tokenizer(text, padding='max_length', truncation=True, max_length). "
                "`chunks`: sd-scripts SdTokenizeStrategy.tokenize (TokenizeStrategy._get_input_ids)."
            ),
            "versions": {"transformers": transformers.__version__, "ftfy": ftfy.__version__},
            "prompts": entries,
            "padded": padded,
            "chunks": chunks,
        }
        os.makedirs(OUT_DIR, exist_ok=True)
        path = os.path.join(OUT_DIR, "prompts.json")
        with open(path, "w", encoding="utf-8") as f:
            dump_one_item_per_line(doc, f)
        n_sd2 = sum(1 for e in entries if "ids_sd2" in e)
        print(f"wrote {len(entries)} prompts ({n_sd2} with different SD2 ids), {len(padded)} padded, "
              f"{len(chunks)} chunked cases to {path}; text tables to {TEXT_TABLES}")

        if args.big:
            big_corpus(sd1, sd2, int(args.big[0]), args.big[1])
        if args.code_points:
            code_point_corpus(sd1, sd2, args.code_points)


if __name__ == "__main__":
    main()
