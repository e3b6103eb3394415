//! `GET /v1/models` and `GET /v1/models/{id}`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::server::error::ApiError;
use crate::server::extract::Path;
use crate::server::AppState;

fn model_object(state: &AppState, id: &str) -> Value {
    json!({ "id": id, "object": "model", "created": state.started, "owned_by": "clerk" })
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = state
        .model_ids()
        .iter()
        .map(|id| model_object(&state, id))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if state.model_ids().contains(&id) {
        Ok(Json(model_object(&state, &id)))
    } else {
        Err(ApiError::ModelNotFound(id))
    }
}
