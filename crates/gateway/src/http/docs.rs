//! `/openapi.json` and a browsable `/docs` page that renders it without external assets.

use axum::{
    body::Bytes,
    http::header,
    response::{Html, IntoResponse},
};

pub async fn page() -> Html<&'static str> {
    Html(include_str!("../../assets/docs.html"))
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../assets/docs.js"),
    )
}

pub fn json(document: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], document)
}
