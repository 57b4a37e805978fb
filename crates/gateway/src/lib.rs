//! The HTTP gateway: the API users and tools reach nimbus through.
//!
//! Owns: the HTTP routes, the translation of requests into calls on the service
//! manager and the cluster, and of every failure into a status code with a JSON
//! body `{"error": "..."}` (429 carries `Retry-After`); the bearer tokens that
//! authorise every call ([`tokens`]: kept hashed in `<data>/gateway/tokens.json`,
//! each admin or scoped to a list of apps); and the [`DataPlane`], which serves the
//! same invocations over the binary protocol of `nimbus-dataplane`, checking the
//! token of each connection's hello against the same store.
//!
//! Every route requires `Authorization: Bearer TOKEN`: none or an unknown one is
//! answered 401 with `WWW-Authenticate: Bearer` before anything is done; a token
//! scoped to apps may deploy, invoke and list those apps and read their instances'
//! logs, and gets 403 for anything else.
//!
//! Must not: hold platform state or logic of its own beyond its tokens; it is a thin layer over a
//! [`nimbus_services::ServiceFront`] (the node's own [`nimbus_services::Services`], or
//! [`nimbus_services::PlacedServices`] on the workers of a cluster) and
//! [`nimbus_node::Cluster`].
//!
//! | method and path | does |
//! |---|---|
//! | `PUT /v1/apps/{name}?memory=&idle=&max_instances=&queue_depth=&timeout=&max_body=` | deploy the module in the body |
//! | `GET /v1/apps` | list apps |
//! | `POST /v1/apps/{name}/invoke/{handler}?session=` | invoke; the body is the request, the response body the handler's output |
//! | `GET /v1/processes` | list processes |
//! | `GET /v1/processes/{pid}/logs` | a service instance's recent stderr |
//! | `POST /v1/processes/{pid}/messages` | send the body as a message to the process |
//! | `DELETE /v1/processes/{pid}` | kill the process (a service instance loses its state since its last snapshot) |
//! | `GET /v1/hosts` | the hosts of the cluster the gateway fronts (admin) |
//! | `POST /v1/tokens` | create a token from `{"name", "admin": bool, "apps": [...]}`; answers its text, once (admin) |
//! | `GET /v1/tokens` | list tokens' names and scopes (admin) |
//! | `DELETE /v1/tokens/{name}` | revoke a token (admin) |

pub mod tokens;
mod upload;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt;
use nimbus_core::{Pid, parse_duration, parse_size};
use nimbus_dataplane::{Access, Failure as DataFailure, Grant, Invoker, Request, Status};
use nimbus_node::Cluster;
use nimbus_runtime::{InvokeError, Kernel};
use nimbus_services::{AppConfig, AppInfo, ServiceError, ServiceFront};
use serde_json::{Value, json};
use tokens::{Scope, TokenError, TokenStore};

/// Largest module a deployment may upload.
pub const MAX_MODULE_SIZE: usize = 256 << 20;
/// Largest request body the gateway reads; each app has its own, lower, limit.
pub const MAX_REQUEST_SIZE: usize = 64 << 20;
/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_SECONDS: u64 = 1;
/// How long a refused request's body is read and discarded, so that the client,
/// still sending, gets the refusal rather than a broken connection.
const DISCARD_BOUND: Duration = Duration::from_secs(5);

/// What the routes work on.
pub struct Gateway {
    /// The deployed apps.
    pub services: Arc<dyn ServiceFront>,
    /// The hosts and their processes.
    pub cluster: Arc<Cluster>,
    /// The cluster this node fronts (its worker processes, or one it was pointed
    /// at), whose processes `ps` lists too and whose hosts `GET /v1/hosts` lists.
    pub planner: Option<ClusterAccess>,
    /// Who may call, and on what.
    pub tokens: Arc<TokenStore>,
    /// Where deployments' uploads are kept while they arrive (each an unnamed file,
    /// gone once the upload ends): a directory of the node's data directory.
    pub uploads: PathBuf,
}

/// How a gateway reaches the cluster it fronts.
pub struct ClusterAccess {
    /// The planner's address.
    pub planner: String,
    /// This node's credentials in that cluster.
    pub tls: Arc<nimbus_trust::Tls>,
}

/// The gateway's routes, every one behind the token check.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{name}", put(deploy))
        .route("/v1/apps/{name}/invoke/{handler}", post(invoke))
        .route("/v1/processes", get(list_processes))
        .route("/v1/processes/{pid}/logs", get(logs))
        .route("/v1/processes/{pid}/messages", post(send_message))
        .route("/v1/processes/{pid}", delete(kill))
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/tokens", post(create_token).get(list_tokens))
        .route("/v1/tokens/{name}", delete(revoke_token))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(
            gateway.clone(),
            authenticate,
        ))
        // Bodies are read with explicit limits below, so that an oversized one gets
        // a JSON 413 like every other error.
        .layer(DefaultBodyLimit::disable())
        .with_state(gateway)
}

/// The scope of the token a request came with, put there by [`authenticate`].
#[derive(Clone)]
struct Caller(Scope);

impl Caller {
    /// Refuses a caller without an admin token.
    fn admin(&self) -> Result<(), ApiError> {
        if self.0.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this needs an admin token; this token is scoped to apps",
            ))
        }
    }

    /// Refuses a caller whose token may not touch `app`.
    fn app(&self, app: &str) -> Result<(), ApiError> {
        if self.0.allows_app(app) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token may not touch app `{app}`"),
            ))
        }
    }
}

/// Lets a request through only with a known bearer token, whose scope it then
/// carries ([`Caller`]); else answers 401 with `WWW-Authenticate: Bearer`, having
/// done nothing.
async fn authenticate(
    State(gateway): State<Arc<Gateway>>,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let scope = token.and_then(|token| gateway.tokens.authorize(token));
    match scope {
        Some(scope) => {
            request.extensions_mut().insert(Caller(scope));
            next.run(request).await
        }
        None => {
            let message = match token {
                None => "no bearer token: send `Authorization: Bearer TOKEN`",
                Some(_) => "unknown bearer token: it was revoked, or belongs to another nimbus",
            };
            discard(request.into_body()).await;
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

/// The request's body if `check` passed; else the refusal, after reading the body
/// away (see [`discard`]).
async fn admit(check: Result<(), ApiError>, body: Body) -> Result<Body, ApiError> {
    match check {
        Ok(()) => Ok(body),
        Err(refused) => {
            discard(body).await;
            Err(refused)
        }
    }
}

/// Reads and drops a refused request's body, up to [`MAX_MODULE_SIZE`] and for at
/// most [`DISCARD_BOUND`], holding one chunk at a time.
async fn discard(body: Body) {
    let mut body = body;
    let mut left = MAX_MODULE_SIZE;
    let _ = tokio::time::timeout(DISCARD_BOUND, async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len());
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => break,
            }
        }
    })
    .await;
}

/// Serves the gateway on `listener` until `shutdown` completes and its connections
/// have finished, or `grace` after `shutdown` at the latest.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(true);
    };
    let server = axum::serve(listener, router(gateway))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::select! {
        served = server => served,
        // Connections still open once the grace period is over (a client holding an
        // idle keep-alive connection, one that never sent a request) do not hold
        // the shutdown up any longer.
        () = async {
            if stopped.wait_for(|stopping| *stopping).await.is_err() {
                // The signal is gone without firing: only the server ending stops us.
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        } => Ok(()),
    }
}

/// A failed request: a status and a message, sent as `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> ApiError {
        let status = match &error {
            ServiceError::UnknownApp(_) | ServiceError::Handler(InvokeError::NoSuchHandler(_)) => {
                StatusCode::NOT_FOUND
            }
            ServiceError::InvalidName(_)
            | ServiceError::InvalidConfig(_)
            | ServiceError::Module(_) => StatusCode::BAD_REQUEST,
            ServiceError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServiceError::Handler(_) | ServiceError::Storage(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ServiceError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, error.to_string())
    }
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the limit of {limit} bytes (or unreadable)"),
        )
    })
}

fn app_json(app: &AppInfo) -> Value {
    json!({
        "name": app.config.name,
        "module": app.module,
        "instances": app.instances,
        "live": app.live,
        "queued": app.queued,
        "rejected_snapshots": app.rejected_snapshots,
        "pids": app.pids.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "memory": app.config.memory,
        "idle_ms": app.config.idle.as_millis() as u64,
        "max_instances": app.config.max_instances,
        "queue_depth": app.config.queue_depth,
        "timeout_ms": app.config.timeout.as_millis() as u64,
        "max_body": app.config.max_body,
    })
}

/// Applies the deployment's query parameters to the defaults.
fn app_config(name: String, query: &HashMap<String, String>) -> Result<AppConfig, ApiError> {
    let mut config = AppConfig::new(name);
    for (key, value) in query {
        let invalid = |e: &dyn std::fmt::Display| ApiError::bad_request(format!("{key}: {e}"));
        let count = || value.parse::<usize>().map_err(|e| invalid(&e));
        match key.as_str() {
            "memory" => config.memory = parse_size(value).map_err(|e| invalid(&e))?,
            "idle" => config.idle = parse_duration(value).map_err(|e| invalid(&e))?,
            "timeout" => config.timeout = parse_duration(value).map_err(|e| invalid(&e))?,
            "max_instances" => config.max_instances = count()?,
            "queue_depth" => config.queue_depth = count()?,
            "max_body" => config.max_body = parse_size(value).map_err(|e| invalid(&e))? as usize,
            _ => return Err(ApiError::bad_request(format!("unknown parameter `{key}`"))),
        }
    }
    Ok(config)
}

async fn deploy(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut body = admit(caller.app(&name), body).await?;
    // The upload is read before anything is refused, so that the client, still
    // sending, gets the answer rather than a broken connection.
    let module = match upload::receive(&mut body, &gateway.uploads, MAX_MODULE_SIZE).await {
        Ok(module) => module,
        Err(error) => {
            discard(body).await;
            return Err(error.into());
        }
    };
    let config = app_config(name, &query)?;
    let info = gateway.services.clone().deploy(config, module).await?;
    Ok((StatusCode::CREATED, Json(app_json(&info))))
}

async fn list_apps(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
) -> Json<Value> {
    Json(Value::Array(
        gateway
            .services
            .apps()
            .await
            .iter()
            .filter(|app| caller.0.allows_app(&app.config.name))
            .map(app_json)
            .collect(),
    ))
}

async fn invoke(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path((app, handler)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
    let body = admit(caller.app(&app), body).await?;
    let session = match (query.get("session"), headers.get("x-nimbus-session")) {
        (Some(session), _) => Some(session.clone()),
        (None, Some(header)) => Some(
            header
                .to_str()
                .map_err(|_| ApiError::bad_request("x-nimbus-session is not text"))?
                .to_owned(),
        ),
        (None, None) => None,
    };
    let body = read_body(body, MAX_REQUEST_SIZE).await?;
    Ok(gateway
        .services
        .invoke(&app, &handler, body.to_vec(), session.as_deref())
        .await?)
}

async fn list_processes(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.admin()?;
    let mut processes = gateway.cluster.processes();
    if let Some(access) = &gateway.planner
        && let Ok((on_workers, _)) =
            nimbus_node::cluster_processes(&access.planner, access.tls.clone()).await
    {
        processes.extend(on_workers);
    }
    let processes = processes.into_iter().map(|p| {
        json!({
            "pid": p.pid.to_string(),
            "parent": p.parent.map(|p| p.to_string()),
            "host": p.host.to_string(),
            "state": p.state.name(),
        })
    });
    Ok(Json(Value::Array(processes.collect())))
}

async fn list_hosts(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.admin()?;
    let Some(access) = &gateway.planner else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this gateway fronts no cluster: its apps run in this node itself \
             (start it with `nimbus up --workers N` or `--planner ADDR` for hosts)",
        ));
    };
    let hosts = nimbus_control::hosts(&access.planner, &access.tls)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))?;
    Ok(Json(serde_json::to_value(hosts).expect("hosts serialise")))
}

fn parse_pid(text: &str) -> Result<Pid, ApiError> {
    text.parse::<i64>()
        .ok()
        .and_then(Pid::from_guest)
        .ok_or_else(|| ApiError::bad_request(format!("`{text}` is not a process id")))
}

/// The sender of messages that come from outside the cluster through the gateway.
fn gateway_pid() -> Pid {
    Pid::new(nimbus_core::HostId(0), 1)
}

async fn send_message(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(pid): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body = admit(caller.admin(), body).await?;
    let pid = parse_pid(&pid)?;
    let body = read_body(body, nimbus_runtime::MAX_MESSAGE_SIZE).await?;
    gateway
        .cluster
        .send(gateway_pid(), pid, body.to_vec())
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("process {pid}: {e}")))?;
    Ok(StatusCode::ACCEPTED)
}

async fn kill(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(pid): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    let pid = parse_pid(&pid)?;
    if gateway.services.kill(pid).await {
        return Ok(StatusCode::ACCEPTED);
    }
    gateway
        .cluster
        .kill(pid)
        .map(|()| StatusCode::ACCEPTED)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("no process {pid}")))
}

async fn logs(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(pid): Path<String>,
) -> Result<Vec<u8>, ApiError> {
    let pid = parse_pid(&pid)?;
    if !caller.0.is_admin() {
        let apps = gateway.services.apps().await;
        let owner = apps.iter().find(|app| app.pids.contains(&pid));
        match owner {
            Some(app) => caller.app(&app.config.name)?,
            None => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("process {pid} is no instance of this token's apps"),
                ));
            }
        }
    }
    gateway.services.logs(pid).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service instance with pid {pid}"),
        )
    })
}

impl From<upload::UploadError> for ApiError {
    fn from(error: upload::UploadError) -> ApiError {
        let status = match &error {
            upload::UploadError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            upload::UploadError::Body(_) => StatusCode::BAD_REQUEST,
            upload::UploadError::Disk { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<TokenError> for ApiError {
    fn from(error: TokenError) -> ApiError {
        let status = match &error {
            TokenError::InvalidName(_) | TokenError::InvalidScope => StatusCode::BAD_REQUEST,
            TokenError::Exists(_) | TokenError::Full => StatusCode::CONFLICT,
            TokenError::Io { .. } | TokenError::Corrupt { .. } | TokenError::Random(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, error.to_string())
    }
}

/// What `POST /v1/tokens` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    apps: Vec<String>,
}

fn scope_json(scope: &Scope) -> Value {
    match scope {
        Scope::Admin => json!({ "admin": true, "apps": [] }),
        Scope::Apps(apps) => json!({ "admin": false, "apps": apps }),
    }
}

/// Runs a change of the token store (it writes a file) off the async threads.
async fn blocking<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, TokenError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(change)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

async fn create_token(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = admit(caller.admin(), body).await?;
    let body = read_body(body, 64 << 10).await?;
    let new: NewToken = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("expected {{\"name\", \"admin\" or \"apps\"}}: {e}"))
    })?;
    let scope = match (new.admin, new.apps.is_empty()) {
        (true, true) => Scope::Admin,
        (false, false) => Scope::Apps(new.apps.into_iter().collect()),
        (true, false) => {
            return Err(ApiError::bad_request(
                "a token is admin or lists apps, not both",
            ));
        }
        (false, true) => {
            return Err(ApiError::bad_request(
                "a token is admin or lists the apps it may touch",
            ));
        }
    };
    let tokens = gateway.tokens.clone();
    let (name, stored_scope) = (new.name.clone(), scope.clone());
    let token = blocking(move || tokens.create(&name, stored_scope, false)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "name": new.name, "scope": scope_json(&scope), "token": token })),
    ))
}

async fn list_tokens(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    caller.admin()?;
    let tokens = gateway
        .tokens
        .list()
        .into_iter()
        .map(|token| json!({ "name": token.name, "scope": scope_json(&token.scope) }));
    Ok(Json(Value::Array(tokens.collect())))
}

async fn revoke_token(
    State(gateway): State<Arc<Gateway>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    let tokens = gateway.tokens.clone();
    let revoke = name.clone();
    if blocking(move || tokens.revoke(&revoke)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no token named `{name}`"),
        ))
    }
}

/// Serves invocations over the binary data plane, for the lowest latency.
pub struct DataPlane {
    services: Arc<dyn ServiceFront>,
    tokens: Arc<TokenStore>,
}

impl DataPlane {
    /// A data plane over `services`, its connections' tokens checked in `tokens`.
    pub fn new(services: Arc<dyn ServiceFront>, tokens: Arc<TokenStore>) -> Arc<DataPlane> {
        Arc::new(DataPlane { services, tokens })
    }
}

impl Invoker for DataPlane {
    fn authorize(&self, token: &str) -> Option<Grant> {
        let (scope, revoked) = self.tokens.grant(token)?;
        let access = match scope {
            Scope::Admin => Access::All,
            Scope::Apps(apps) => Access::Apps(apps.into_iter().collect()),
        };
        Some(Grant { access, revoked })
    }

    fn invoke(
        &self,
        request: Request,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, DataFailure>> + Send + 'static>> {
        let services = self.services.clone();
        Box::pin(async move {
            services
                .invoke(
                    &request.app,
                    &request.handler,
                    request.body,
                    request.session.as_deref(),
                )
                .await
                .map_err(|error| {
                    let status = match &error {
                        ServiceError::UnknownApp(_)
                        | ServiceError::Handler(InvokeError::NoSuchHandler(_)) => Status::NotFound,
                        ServiceError::TooLarge { .. } => Status::TooLarge,
                        ServiceError::Busy { .. } => Status::Busy,
                        ServiceError::Handler(_) => Status::HandlerFailed,
                        ServiceError::InvalidName(_)
                        | ServiceError::InvalidConfig(_)
                        | ServiceError::Module(_) => Status::BadRequest,
                        ServiceError::Unavailable(_) | ServiceError::Storage(_) => {
                            Status::Unavailable
                        }
                    };
                    DataFailure::new(status, error.to_string())
                })
        })
    }
}
