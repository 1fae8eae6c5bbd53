//! `lorakit gui`: a local web GUI served by the lorakit binary.
//!
//! This crate is the server: an axum [`router`] behind one security layer ([`security`]:
//! a random token per start exchanged for an HttpOnly cookie, Host checks against DNS
//! rebinding, Origin checks on every state-changing request, a strict CSP), file access only
//! under the roots the server was started with ([`roots`]), a JSON API ([`api`]) and the pages,
//! plain ES modules embedded in the binary ([`assets`]), and the job queue ([`jobs`]: training
//! runs as child processes of this binary, recorded under the state folder). Nothing is loaded
//! from the network and nothing here needs Node.

pub mod api;
pub mod assets;
pub mod autocaption;
pub mod captions;
pub mod datasets;
pub mod forms;
pub mod images;
pub mod jobs;
pub mod library;
pub mod repeats;
pub mod roots;
pub mod runs;
pub mod security;
pub mod tags;
pub mod tools;
pub mod undo;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;

pub use jobs::{Jobs, JobsOptions};
pub use roots::Roots;

/// How `lorakit gui` was started.
#[derive(Debug, Clone)]
pub struct GuiConfig {
    /// Folders the GUI may read and write under (canonicalised at start; never changed from the
    /// browser).
    pub roots: Vec<PathBuf>,
    /// Address to listen on (127.0.0.1 unless `--listen`).
    pub listen: IpAddr,
    /// Port (0: any free one).
    pub port: u16,
    /// The access token; `None`: a random one.
    pub token: Option<String>,
    /// Extra host names the browser may use to reach the server (`--allow-host`).
    pub allow_hosts: Vec<String>,
    /// Where the job queue lives (`--state`; `~/.lorakit/gui` by default).
    pub state_dir: PathBuf,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum GuiError {
    /// A root could not be used.
    #[error("--root {path}: {reason}")]
    Root {
        /// The root as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No root was given and none could be derived.
    #[error("no root folder: give --root DIR")]
    NoRoot,
    /// The token is unusable.
    #[error("--token: {0}")]
    Token(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<StateInner>,
}

#[derive(Clone)]
struct StateInner {
    guard: security::Guard,
    roots: Roots,
    jobs: Option<Jobs>,
    /// Caption edits (tag editor, find/replace, one caption) that can be undone: in memory, or
    /// on disk under the state folder ([`AppState::with_state_dir`]) so it survives a restart.
    tag_undo: Arc<undo::UndoHistory>,
    /// The ids image addresses use ([`images`]).
    images: Arc<images::ImageIds>,
}

impl AppState {
    /// The state for a server with `roots`, `token` and the host names it answers to
    /// (loopback names always; `allow_hosts` besides), its cookie named after `port`.
    pub fn new(roots: Roots, token: String, port: u16, allow_hosts: Vec<String>) -> Result<AppState, GuiError> {
        let guard = security::Guard::new(token, port, allow_hosts).map_err(GuiError::Token)?;
        let tag_undo = Arc::new(undo::UndoHistory::in_memory());
        let images = Arc::new(images::ImageIds::default());
        Ok(AppState { inner: Arc::new(StateInner { guard, roots, jobs: None, tag_undo, images }) })
    }

    /// This state with a job store (without one the job routes answer 503).
    pub fn with_jobs(self, jobs: Jobs) -> AppState {
        let mut inner = (*self.inner).clone();
        inner.jobs = Some(jobs);
        AppState { inner: Arc::new(inner) }
    }

    /// This state with the GUI's state folder: the caption undo history is kept in
    /// `<state_dir>/tag-undo/` (it survives a restart) instead of in memory.
    pub fn with_state_dir(self, state_dir: &std::path::Path) -> AppState {
        let mut inner = (*self.inner).clone();
        inner.tag_undo = Arc::new(undo::UndoHistory::on_disk(state_dir.join("tag-undo")));
        AppState { inner: Arc::new(inner) }
    }

    /// The job store, when the server has one.
    pub fn jobs(&self) -> Option<&Jobs> {
        self.inner.jobs.as_ref()
    }

    /// The roots.
    pub fn roots(&self) -> &Roots {
        &self.inner.roots
    }

    /// The security guard.
    pub fn guard(&self) -> &security::Guard {
        &self.inner.guard
    }

    /// The undo history of caption edits.
    pub(crate) fn tag_undo(&self) -> &undo::UndoHistory {
        &self.inner.tag_undo
    }

    /// The image ids handed out to pages.
    pub fn images(&self) -> &images::ImageIds {
        &self.inner.images
    }
}

/// The whole application: pages, assets and API, behind the security layer.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(assets::routes())
        .nest("/api", api::routes())
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::guard))
        .with_state(state)
}

/// [`serve`] on a runtime of its own (for the command line, which has none).
pub fn run(config: GuiConfig) -> Result<(), GuiError> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(config))
}

/// Binds, prints the URL to open (with the token) and serves until Ctrl-C.
pub async fn serve(config: GuiConfig) -> Result<(), GuiError> {
    let roots = Roots::new(&config.roots)?;
    let token = match config.token {
        Some(t) => t,
        None => security::random_token(),
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(config.listen, config.port)).await?;
    let addr = listener.local_addr()?;
    let mut allow_hosts = config.allow_hosts.clone();
    if !config.listen.is_loopback() {
        allow_hosts.push(config.listen.to_string());
        eprintln!(
            "warning: listening on {} — anyone who can reach this address and has the token can read and write files under the roots",
            addr
        );
    }
    let options = jobs::JobsOptions::lorakit()?;
    let (jobs, notes) = Jobs::open(&config.state_dir, roots.clone(), options)?;
    for note in notes {
        eprintln!("note: {note}");
    }
    jobs.start();
    let closing = jobs.clone();
    let state = AppState::new(roots, token.clone(), addr.port(), allow_hosts)?
        .with_jobs(jobs)
        .with_state_dir(&config.state_dir);
    let host = if config.listen.is_loopback() || config.listen.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        config.listen.to_string()
    };
    println!("lorakit gui: open http://{host}:{}/?token={token}", addr.port());
    for (i, root) in state.roots().all().iter().enumerate() {
        println!("  root {i}: {}", root.display());
    }
    println!("  jobs: {}", config.state_dir.join("jobs").display());
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            if let Some(id) = closing.close() {
                eprintln!("job {id} keeps running (its own process group); the next `lorakit gui` with this --state watches it");
            }
        })
        .await?;
    Ok(())
}
