//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (the upstream server accepts TCP connections), and the gates API under `/gates/`
//! (rules and hit counts, reload, feature flags, kill switches) and the footprints API under
//! `/footprints` (paths, approve, forget, modes), which require
//! `Authorization: Bearer <admin.token>` when a token is configured.

use super::server::ProxyCtx;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serve until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<ProxyCtx>, shutdown: CancellationToken) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(gates_routes(Arc::clone(&ctx)))
        .merge(footprint_routes(Arc::clone(&ctx)))
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin endpoint failed");
    }
}

async fn metrics(State(ctx): State<Arc<ProxyCtx>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ctx.metrics.render(),
    )
}

/// 200 `ready` when the upstream accepts connections; 200 `degraded` (reads served, writes
/// refused) while the brokers have not answered since start: taking the replica out of
/// service would take reads down too; 503 when the upstream does not answer.
async fn readyz(State(ctx): State<Arc<ProxyCtx>>) -> impl IntoResponse {
    if let Err(e) = ctx.upstream.probe().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n"));
    }
    let upstream = ctx.upstream.address();
    let unreached = ctx.capture.as_ref().and_then(|c| {
        let reach = c.sink.reach().borrow().clone();
        match reach {
            crate::audit::kafka::Reach::Reached => None,
            crate::audit::kafka::Reach::NotYet { since, error } => {
                Some((since.elapsed().as_secs(), error))
            }
        }
    });
    match unreached {
        None => (StatusCode::OK, format!("ready: upstream {upstream} reachable\n")),
        Some((secs, error)) => (
            StatusCode::OK,
            format!("degraded: upstream {upstream} reachable; kafka brokers {} not reached for {secs} s ({error}): reads are served, writes are refused with HS001\n", ctx.config.kafka.brokers.join(",")),
        ),
    }
}

fn gates_routes(ctx: Arc<ProxyCtx>) -> Router<Arc<ProxyCtx>> {
    use axum::routing::{post, put};
    Router::new()
        .route("/gates/rules", get(rules))
        .route("/gates/reload", post(reload))
        .route("/gates/flags", get(flags))
        .route("/gates/flags/{name}", put(set_flag))
        .route("/gates/killswitches", get(kill_switches))
        .route(
            "/gates/killswitches/{scope}/{value}",
            put(kill_on).delete(kill_off),
        )
        .layer(axum::middleware::from_fn_with_state(ctx, authorize))
}

type ApiResult = Result<axum::response::Response, (StatusCode, String)>;

/// Bearer-token check for the gates API (when `admin.token` is set).
async fn authorize(
    State(ctx): State<Arc<ProxyCtx>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token = &ctx.config.admin.token;
    if !token.is_empty() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !same_token(given.unwrap_or(""), token) {
            return (
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer <admin.token>)\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_exactly() {
        assert!(super::same_token("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret ", "S3cret", "s3creu"] {
            assert!(!super::same_token(wrong, "s3cret"), "{wrong:?}");
        }
    }
}

/// Whether `given` is `token`, in time that does not depend on where they differ or on their
/// lengths: their SHA-256 digests are compared in constant time (`subtle`).
fn same_token(given: &str, token: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(token.as_bytes()),
    );
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn gates(ctx: &ProxyCtx) -> Result<Arc<crate::gates::engine::Gates>, (StatusCode, String)> {
    ctx.capture.as_ref().and_then(|c| c.gates.clone()).ok_or((
        StatusCode::CONFLICT,
        "gates are not configured: start the proxy with --rules FILE (gates.rules)\n".into(),
    ))
}

fn unprocessable(e: crate::gates::GateError) -> (StatusCode, String) {
    let status = match e {
        crate::gates::GateError::UnknownFlag(_) => StatusCode::NOT_FOUND,
        crate::gates::GateError::Control(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, format!("{e}\n"))
}

async fn rules(State(ctx): State<Arc<ProxyCtx>>) -> ApiResult {
    let g = gates(&ctx)?;
    let list: Vec<serde_json::Value> = g
        .rules()
        .rules
        .iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r.def).unwrap_or_default();
            v["hits"] = r.hits.load(std::sync::atomic::Ordering::Relaxed).into();
            v
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn reload(State(ctx): State<Arc<ProxyCtx>>) -> ApiResult {
    let g = gates(&ctx)?;
    g.reload().map_err(unprocessable)?;
    Ok(format!("reloaded {}\n", g.path().display()).into_response())
}

async fn flags(State(ctx): State<Arc<ProxyCtx>>) -> ApiResult {
    Ok(axum::Json(gates(&ctx)?.flags()).into_response())
}

async fn set_flag(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: String,
) -> ApiResult {
    let g = gates(&ctx)?;
    let def: crate::gates::flags::FlagDef = serde_json::from_str(&body).map_err(|e| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("flag {name}: {e} (expected e.g. {{\"enabled\": true}} or {{\"for\": {{\"application_name\": [\"web\"]}}, \"percentage\": 10}})\n"),
        )
    })?;
    g.set_flag(&name, def).await.map_err(unprocessable)?;
    Ok(axum::Json(g.flags().get(&name).cloned()).into_response())
}

async fn kill_switches(State(ctx): State<Arc<ProxyCtx>>) -> ApiResult {
    let list: Vec<serde_json::Value> = gates(&ctx)?
        .kill_switches()
        .on
        .iter()
        .map(|(s, v)| serde_json::json!({"scope": s.label(), "value": v}))
        .collect();
    Ok(axum::Json(list).into_response())
}

async fn kill(ctx: &ProxyCtx, scope: &str, value: &str, on: bool) -> ApiResult {
    let g = gates(ctx)?;
    let s = crate::gates::killswitch::Scope::parse(scope).ok_or((
        StatusCode::NOT_FOUND,
        format!("unknown kill switch scope {scope:?} (application, user, table, database)\n"),
    ))?;
    g.set_kill_switch(s, value, on)
        .await
        .map_err(unprocessable)?;
    Ok(format!(
        "writes {} for {scope} {value:?}\n",
        if on { "switched off" } else { "back on" }
    )
    .into_response())
}

async fn kill_on(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path((scope, value)): axum::extract::Path<(String, String)>,
) -> ApiResult {
    kill(&ctx, &scope, &value, true).await
}

async fn kill_off(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path((scope, value)): axum::extract::Path<(String, String)>,
) -> ApiResult {
    kill(&ctx, &scope, &value, false).await
}

fn footprint_routes(ctx: Arc<ProxyCtx>) -> Router<Arc<ProxyCtx>> {
    use axum::routing::post;
    Router::new()
        .route("/footprints", get(footprint_list))
        .route("/footprints/modes", get(footprint_modes))
        .route(
            "/footprints/modes/{application}",
            axum::routing::put(footprint_mode).delete(footprint_mode_clear),
        )
        .route("/footprints/{id}/approve", post(footprint_approve))
        .route("/footprints/{id}/forget", post(footprint_forget))
        .layer(axum::middleware::from_fn_with_state(ctx, authorize))
}

fn footprints(
    ctx: &ProxyCtx,
) -> Result<
    (
        Arc<crate::footprint::Footprints>,
        Arc<crate::control::Control>,
    ),
    (StatusCode, String),
> {
    let c = ctx.capture.as_ref();
    match (
        c.and_then(|c| c.footprints.clone()),
        c.and_then(|c| c.control.clone()),
    ) {
        (Some(f), Some(ctl)) => Ok((f, ctl)),
        _ => Err((
            StatusCode::CONFLICT,
            "footprints are not enabled: set footprints.enabled = true (capture on)\n".into(),
        )),
    }
}

#[derive(serde::Deserialize)]
struct ListQuery {
    application: Option<String>,
    /// RFC 3339 time or milliseconds since the epoch: only paths first seen since.
    since: Option<String>,
}

async fn footprint_list(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Query(q): axum::extract::Query<ListQuery>,
) -> ApiResult {
    let (f, _) = footprints(&ctx)?;
    let since_ms = match &q.since {
        Some(t) => Some(
            crate::footprint::report::parse_time(t)
                .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, format!("since: {e}\n")))?,
        ),
        None => None,
    };
    let filter = crate::footprint::report::Filter {
        application: q.application,
        since_ms,
    };
    let book = f.read();
    let list: Vec<&crate::footprint::book::Entry> =
        crate::footprint::report::select(&book, &filter);
    Ok(axum::Json(list).into_response())
}

async fn footprint_modes(State(ctx): State<Arc<ProxyCtx>>) -> ApiResult {
    let (f, _) = footprints(&ctx)?;
    Ok(axum::Json(f.modes()).into_response())
}

async fn publish_path(
    ctl: &crate::control::Control,
    id: crate::footprint::path::PathId,
    d: &crate::footprint::book::Decision,
) -> Result<(), (StatusCode, String)> {
    let v = serde_json::to_value(d).expect("decisions serialise");
    ctl.publish("path", &id.to_string(), Some(&v))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))
}

fn path_id(id: &str) -> Result<crate::footprint::path::PathId, (StatusCode, String)> {
    id.parse()
        .map_err(|e: String| (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")))
}

async fn footprint_approve(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    let (f, ctl) = footprints(&ctx)?;
    let pid = path_id(&id)?;
    let entry = f.read().get(pid).map(|s| s.entry.clone()).ok_or((
        StatusCode::NOT_FOUND,
        format!("no write path {id} in the footprints (GET /footprints lists them)\n"),
    ))?;
    let d = crate::footprint::book::Decision::Approved {
        actor: entry.actor.clone(),
        path: entry.path.clone(),
        by: "admin-api".into(),
        at_ms: crate::footprint::report::now_ms(),
    };
    publish_path(&ctl, pid, &d).await?;
    Ok(format!("approved {id}: {}\n", entry.path.describe()).into_response())
}

async fn footprint_forget(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    let (_, ctl) = footprints(&ctx)?;
    let pid = path_id(&id)?;
    let d = crate::footprint::book::Decision::Forgotten {
        at_ms: crate::footprint::report::now_ms(),
    };
    publish_path(&ctl, pid, &d).await?;
    Ok(format!("forgot {id}\n").into_response())
}

async fn footprint_mode(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path(app): axum::extract::Path<String>,
    body: String,
) -> ApiResult {
    let (_, ctl) = footprints(&ctx)?;
    let word = body.trim().trim_matches('"');
    let mode = crate::footprint::decide::Mode::parse(word).ok_or((
        StatusCode::UNPROCESSABLE_ENTITY,
        format!("mode {word:?}: expected learn, alert or enforce\n"),
    ))?;
    let v =
        serde_json::json!({ "mode": mode.label(), "at_ms": crate::footprint::report::now_ms() });
    ctl.publish("mode", &app, Some(&v))
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))?;
    Ok(format!("application {app:?}: mode {}\n", mode.label()).into_response())
}

async fn footprint_mode_clear(
    State(ctx): State<Arc<ProxyCtx>>,
    axum::extract::Path(app): axum::extract::Path<String>,
) -> ApiResult {
    let (_, ctl) = footprints(&ctx)?;
    ctl.publish("mode", &app, None)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")))?;
    Ok(format!("application {app:?}: back to its configured mode\n").into_response())
}
