//! Natural-language captions (sentences, which the tag editor leaves alone): find and replace
//! across a folder's captions with a preview, and one image's caption edited on its own. Every
//! write is atomic and goes into the undo history the tag editor uses ([`crate::undo`]), so
//! `POST /api/tags/undo` undoes either.
//!
//! - `POST /api/captions/preview`: body `{root, path, find, replace, whole_word,
//!   case_sensitive, scope}` (`scope`: `sentences`, the default — only captions whose first line
//!   reads as sentences — or `all`). Writes nothing; answers how many files will change, the
//!   first changes (before and after), and `expect`: every file that will change with a digest
//!   of its bytes now.
//! - `POST /api/captions/apply`: the same body plus that `expect`. Writes exactly the files of
//!   the preview, each only if it still holds the bytes the preview saw: a caption that vanished
//!   or changed since (or that now matches but did not then) is reported, not written.
//! - `GET /api/captions/one?root=N&image=REL`: the caption file of one image (`<stem>.txt`, as
//!   training finds it): its text and digest (`exists: false` when it has none yet).
//! - `POST /api/captions/one`: body `{root, image, text, digest}` writes that caption, refused
//!   (409) when the file changed since it was read (`digest` from the GET).

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lorakit_dataset::tags::caption_line::split_first_line;
use lorakit_dataset::tags::natural_language::is_natural_language;
use lorakit_dataset::tags::select::select_caption_files;
use serde::Deserialize;

use crate::api::{error, path_error, resolve_folder};
use crate::undo::{UndoFile, UndoRecord};
use crate::AppState;

/// Changes listed in a preview (the count and `expect` cover all of them).
const PREVIEW_ROWS: usize = 200;
/// The caption extension the GUI edits (the dataset loader's default).
const CAPTION_EXTENSION: &str = ".txt";

/// The caption editor's routes (mounted at `/api`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/captions/preview", post(preview))
        .route("/captions/apply", post(apply))
        .route("/captions/one", get(read_one).post(write_one))
}

/// How the text to find is matched.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// Only where it is not part of a longer word (no letter, digit or `_` on either side).
    pub whole_word: bool,
    /// Letters must have the same case.
    pub case_sensitive: bool,
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The length in bytes of `find` matched at the start of `text`, if it matches there.
fn match_at(text: &str, find: &str, case_sensitive: bool) -> Option<usize> {
    if case_sensitive {
        return text.starts_with(find).then_some(find.len());
    }
    let mut chars = text.char_indices();
    for f in find.chars() {
        let (_, c) = chars.next()?;
        if c != f && !c.to_lowercase().eq(f.to_lowercase()) {
            return None;
        }
    }
    Some(chars.next().map_or(text.len(), |(i, _)| i))
}

/// `text` with every match of `find` replaced by `replacement`, and the number of matches.
/// An empty `find` matches nothing.
pub fn replace_text(text: &str, find: &str, replacement: &str, options: MatchOptions) -> (String, usize) {
    if find.is_empty() {
        return (text.to_string(), 0);
    }
    let (mut out, mut count, mut at, mut copied) = (String::with_capacity(text.len()), 0, 0, 0);
    while at < text.len() {
        if let Some(len) = match_at(&text[at..], find, options.case_sensitive) {
            let before_ok = !options.whole_word || !text[..at].chars().next_back().is_some_and(is_word_char);
            let after_ok = !options.whole_word || !text[at + len..].chars().next().is_some_and(is_word_char);
            if before_ok && after_ok && len > 0 {
                out.push_str(&text[copied..at]);
                out.push_str(replacement);
                count += 1;
                at += len;
                copied = at;
                continue;
            }
        }
        at += text[at..].chars().next().map_or(1, char::len_utf8);
    }
    out.push_str(&text[copied..]);
    (out, count)
}

/// A short digest of a file's bytes, to tell whether it changed between two requests.
pub(crate) fn digest(bytes: &[u8]) -> String {
    // SipHash with fixed keys: the same bytes give the same digest for this binary.
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}-{}", h.finish(), bytes.len())
}

/// A find/replace as the page sends it.
#[derive(Deserialize, Clone)]
struct ReplaceRequest {
    root: usize,
    #[serde(default)]
    path: String,
    find: String,
    #[serde(default)]
    replace: String,
    #[serde(default)]
    whole_word: bool,
    #[serde(default)]
    case_sensitive: bool,
    /// `sentences` (default) or `all`.
    #[serde(default)]
    scope: Option<String>,
    /// The apply's: file (under the root) → digest from the preview.
    #[serde(default)]
    expect: Vec<Expected>,
}

#[derive(Deserialize, Clone)]
struct Expected {
    file: String,
    digest: String,
}

/// What a find/replace does to one caption file.
enum Outcome {
    Change {
        before: Vec<u8>,
        after: String,
        matches: usize,
    },
    Unchanged,
    /// A tag caption while the scope is sentences.
    SkippedTags,
    Failed(String),
}

struct Planned {
    path: PathBuf,
    /// Its name under the root, as the page shows and sends it.
    file: String,
    outcome: Outcome,
}

/// Reads every caption under the folder and works out the edit (nothing written).
async fn plan(state: &AppState, request: &ReplaceRequest) -> Result<Vec<Planned>, Response> {
    let dir = resolve_folder(state, request.root, &request.path)?;
    if request.find.is_empty() {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, "give the text to find"));
    }
    let all = match request.scope.as_deref() {
        None | Some("sentences") => false,
        Some("all") => true,
        Some(other) => {
            return Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("scope {other:?}: use sentences or all")))
        }
    };
    let options = MatchOptions { whole_word: request.whole_word, case_sensitive: request.case_sensitive };
    let (find, replacement) = (request.find.clone(), request.replace.clone());
    let (roots, root) = (state.roots().clone(), request.root);
    let planned = tokio::task::spawn_blocking(move || {
        let files = select_caption_files(&[dir], CAPTION_EXTENSION)
            .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
        Ok(files
            .into_iter()
            .map(|path| {
                let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                let file = roots.relative(root, &canonical).unwrap_or_else(|| path.display().to_string());
                let outcome = match lorakit_dataset::regular_file::read_regular(&path) {
                    Err(e) => Outcome::Failed(e.to_string()),
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Err(_) => Outcome::Failed("not UTF-8 text; save it as UTF-8 to edit it here".into()),
                        Ok(text) if !all && !is_natural_language(split_first_line(&text).0) => Outcome::SkippedTags,
                        Ok(text) => match replace_text(&text, &find, &replacement, options) {
                            (_, 0) => Outcome::Unchanged,
                            (after, matches) if after != text => {
                                Outcome::Change { before: text.into_bytes(), after, matches }
                            }
                            _ => Outcome::Unchanged,
                        },
                    },
                };
                Planned { path: canonical, file, outcome }
            })
            .collect::<Vec<_>>())
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    planned
}

/// Counts, the first changes and every changed file's digest.
fn describe(planned: &[Planned]) -> serde_json::Value {
    let count = |f: &dyn Fn(&Outcome) -> bool| planned.iter().filter(|p| f(&p.outcome)).count();
    let changes: Vec<serde_json::Value> = planned
        .iter()
        .filter_map(|p| match &p.outcome {
            Outcome::Change { before, after, matches } => Some(serde_json::json!({
                "file": p.file,
                "before": String::from_utf8_lossy(before).trim_end(),
                "after": after.trim_end(),
                "matches": matches,
            })),
            _ => None,
        })
        .take(PREVIEW_ROWS)
        .collect();
    let expect: Vec<serde_json::Value> = planned
        .iter()
        .filter_map(|p| match &p.outcome {
            Outcome::Change { before, .. } => Some(serde_json::json!({ "file": p.file, "digest": digest(before) })),
            _ => None,
        })
        .collect();
    let failed: Vec<serde_json::Value> = planned
        .iter()
        .filter_map(|p| match &p.outcome {
            Outcome::Failed(m) => Some(serde_json::json!({ "file": p.file, "error": m })),
            _ => None,
        })
        .collect();
    serde_json::json!({
        "changed": expect.len(),
        "matches": planned.iter().map(|p| match p.outcome { Outcome::Change { matches, .. } => matches, _ => 0 }).sum::<usize>(),
        "unchanged": count(&|o| matches!(o, Outcome::Unchanged)),
        "skipped_tags": count(&|o| matches!(o, Outcome::SkippedTags)),
        "failed": failed,
        "changes": changes,
        "expect": expect,
    })
}

async fn preview(State(state): State<AppState>, Json(request): Json<ReplaceRequest>) -> Response {
    match plan(&state, &request).await {
        Ok(planned) => Json(describe(&planned)).into_response(),
        Err(r) => r,
    }
}

impl ReplaceRequest {
    fn summary(&self) -> String {
        format!("replace {:?} with {:?} in captions", self.find, self.replace)
    }
}

async fn apply(State(state): State<AppState>, Json(request): Json<ReplaceRequest>) -> Response {
    let planned = match plan(&state, &request).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let expected: BTreeMap<&str, &str> = request.expect.iter().map(|e| (e.file.as_str(), e.digest.as_str())).collect();
    let mut changed_since = Vec::new();
    let mut to_write = Vec::new();
    let mut listed = std::collections::HashSet::new();
    for p in planned {
        listed.insert(p.file.clone());
        match (p.outcome, expected.get(p.file.as_str())) {
            (Outcome::Change { before, after, .. }, Some(&d)) if digest(&before) == d => {
                to_write.push((p.path, p.file, before, after))
            }
            (Outcome::Change { .. }, None) => {
                changed_since.push(format!("{}: not in the preview (it changed since); preview again", p.file))
            }
            (_, Some(_)) => changed_since.push(format!("{}: changed since the preview; not written", p.file)),
            _ => {}
        }
    }
    for file in expected.keys().filter(|f| !listed.contains(**f)) {
        changed_since.push(format!("{file}: no longer exists; not written"));
    }
    let summary = request.summary();
    let written = tokio::task::spawn_blocking(move || {
        let (mut files, mut failures) = (Vec::new(), Vec::new());
        for (path, file, before, after) in to_write {
            match lorakit_dataset::fs_atomic::write_atomic(&path, after.as_bytes()) {
                Ok(()) => files.push(UndoFile { path, before: Some(before), after: after.into_bytes() }),
                Err(e) => failures.push(format!("{file}: {e}")),
            }
        }
        (files, failures)
    })
    .await;
    let (files, failures) = match written {
        Ok(w) => w,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut answer = serde_json::json!({
        "written": files.len(),
        "changed_since": changed_since,
        "write_failures": failures,
    });
    if let Err(e) = crate::tags::record_undo(&state, UndoRecord { summary, files }).await {
        answer["undo_error"] = e.into();
    }
    Json(answer).into_response()
}

/// The caption file of image `image` under root `root`: the one training reads, else where a
/// new one goes (`<stem>.txt`).
fn caption_of(state: &AppState, root: usize, image: &str) -> Result<PathBuf, Response> {
    let path = state.roots().resolve(root, image).map_err(path_error)?;
    let is_image =
        lorakit_dataset::folders::image_extension_kind(&path) == lorakit_dataset::folders::ExtensionKind::Image;
    if !path.is_file() || !is_image {
        return Err(error(StatusCode::UNPROCESSABLE_ENTITY, format!("{image}: not an image file")));
    }
    let found = lorakit_dataset::caption::read_caption(&path, CAPTION_EXTENSION, false)
        .map_err(|e| error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let caption = match found {
        Some(c) => c.path,
        None => lorakit_dataset::caption::caption_candidates(&path, CAPTION_EXTENSION).remove(0),
    };
    // A caption reached through a symlink must stay under the root too.
    let checked = caption.canonicalize().unwrap_or_else(|_| caption.clone());
    let inside =
        checked.parent().and_then(|p| p.canonicalize().ok()).is_some_and(|p| p.starts_with(&state.roots().all()[root]));
    if !inside {
        return Err(error(StatusCode::FORBIDDEN, format!("{image}: its caption file is not inside the root")));
    }
    Ok(checked)
}

/// `?root=N&image=REL`.
#[derive(Deserialize)]
struct OneQuery {
    root: usize,
    image: String,
}

/// The text and digest of a caption file (`None` when it does not exist).
fn read_caption_file(path: &Path) -> Result<Option<(String, String)>, String> {
    match lorakit_dataset::regular_file::read_regular(path) {
        Ok(bytes) => {
            let d = digest(&bytes);
            String::from_utf8(bytes)
                .map(|text| Some((text, d)))
                .map_err(|_| format!("{}: not UTF-8 text; save it as UTF-8 to edit it here", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

async fn read_one(State(state): State<AppState>, Query(q): Query<OneQuery>) -> Response {
    let path = match caption_of(&state, q.root, &q.image) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let file = state.roots().relative(q.root, &path).unwrap_or_default();
    match read_caption_file(&path) {
        Ok(Some((text, digest))) => {
            Json(serde_json::json!({ "file": file, "exists": true, "text": text, "digest": digest })).into_response()
        }
        Ok(None) => {
            Json(serde_json::json!({ "file": file, "exists": false, "text": "", "digest": null })).into_response()
        }
        Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// One caption as the page saves it.
#[derive(Deserialize)]
struct OneCaption {
    root: usize,
    image: String,
    text: String,
    /// The digest the GET answered (`null`: the file did not exist then).
    digest: Option<String>,
}

async fn write_one(State(state): State<AppState>, Json(body): Json<OneCaption>) -> Response {
    let path = match caption_of(&state, body.root, &body.image) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let file = state.roots().relative(body.root, &path).unwrap_or_default();
    let current = match read_caption_file(&path) {
        Ok(c) => c,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    if current.as_ref().map(|(_, d)| d) != body.digest.as_ref() {
        return error(StatusCode::CONFLICT, format!("{file}: changed since it was opened; open it again"));
    }
    let before = current.map(|(text, _)| text.into_bytes());
    if before.as_deref() == Some(body.text.as_bytes()) {
        return Json(serde_json::json!({ "file": file, "written": false })).into_response();
    }
    let after = body.text.into_bytes();
    if let Err(e) = lorakit_dataset::fs_atomic::write_atomic(&path, &after) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{file}: {e}"));
    }
    let record =
        UndoRecord { summary: format!("edit the caption {file}"), files: vec![UndoFile { path, before, after }] };
    let mut answer = serde_json::json!({ "file": file, "written": true });
    if let Err(e) = crate::tags::record_undo(&state, record).await {
        answer["undo_error"] = e.into();
    }
    Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replace(text: &str, find: &str, with: &str, whole_word: bool, case_sensitive: bool) -> (String, usize) {
        replace_text(text, find, with, MatchOptions { whole_word, case_sensitive })
    }

    #[test]
    fn plain_text_replacement_with_word_and_case_options() {
        let text = "A cat sat. The Cat catches a caterpillar.";
        assert_eq!(replace(text, "cat", "dog", false, true).1, 3, "cat, catches, caterpillar");
        assert_eq!(replace(text, "cat", "dog", false, false).1, 4);
        assert_eq!(replace(text, "cat", "dog", true, false).0, "A dog sat. The dog catches a caterpillar.");
        assert_eq!(replace(text, "cat", "dog", true, true).0, "A dog sat. The Cat catches a caterpillar.");
        // Plain text: regex characters mean themselves.
        assert_eq!(replace("a.b a*b", ".", "!", false, true).0, "a!b a*b");
        assert_eq!(replace("x", "", "y", false, true), ("x".into(), 0), "empty find matches nothing");
        // Non-ASCII text and case folding.
        assert_eq!(replace("ÄPFEL und äpfel", "äpfel", "Birnen", false, false).0, "Birnen und Birnen");
        assert_eq!(replace("แมวนอน แมว", "แมว", "หมา", false, true).0, "หมานอน หมา");
        assert_eq!(replace("แมวนอน แมว", "แมว", "หมา", true, true).0, "แมวนอน หมา", "Thai letters are word letters");
    }

    #[test]
    fn digests_tell_bytes_apart() {
        assert_eq!(digest(b"abc"), digest(b"abc"));
        assert_ne!(digest(b"abc"), digest(b"abd"));
        assert_ne!(digest(b"abc"), digest(b"abc\n"));
    }
}
