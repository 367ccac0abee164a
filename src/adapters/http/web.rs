//! The web client, embedded in the binary at build time so that `cargo run`, the container image
//! and the chart need nothing beside it. It is one response at `/` — style and script inlined —
//! because the public Ingress routes `/` and `/api/` only.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../../../web/index.html");
const APP: &str = include_str!("../../../web/app.js");
const STYLE: &str = include_str!("../../../web/style.css");

static PAGE: LazyLock<String> = LazyLock::new(|| {
    INDEX
        .replace(
            r#"<link rel="stylesheet" href="/style.css">"#,
            &format!("<style>\n{STYLE}</style>"),
        )
        .replace(
            r#"<script type="module" src="/app.js"></script>"#,
            &format!("<script type=\"module\">\n{APP}</script>"),
        )
});

pub async fn get_index() -> impl IntoResponse {
    // The page changes with the binary; the browser must not keep an old one.
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE.as_str(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_carries_its_style_and_script_inline() {
        assert!(!super::PAGE.contains("/app.js") && !super::PAGE.contains("/style.css"));
        assert!(super::PAGE.contains("openStream") && super::PAGE.contains("--accent"));
    }
}
