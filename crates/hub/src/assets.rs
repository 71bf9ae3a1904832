//! The browser client and demo pages, compiled into the binary so `duplex serve` is
//! self-contained.

/// One embedded file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Asset {
    pub(crate) path: &'static str,
    pub(crate) content_type: &'static str,
    pub(crate) body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! web {
    ($file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file))
    };
}

/// Every page and asset with the path it is served at.
pub(crate) const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: web!("index.html"),
    },
    Asset {
        path: "/ticker",
        content_type: HTML,
        body: web!("ticker.html"),
    },
    Asset {
        path: "/stats",
        content_type: HTML,
        body: web!("stats.html"),
    },
    Asset {
        path: "/duplex.js",
        content_type: JS,
        body: web!("duplex.js"),
    },
    Asset {
        path: "/chat.js",
        content_type: JS,
        body: web!("chat.js"),
    },
    Asset {
        path: "/ticker.js",
        content_type: JS,
        body: web!("ticker.js"),
    },
    Asset {
        path: "/stats.js",
        content_type: JS,
        body: web!("stats.js"),
    },
    Asset {
        path: "/style.css",
        content_type: CSS,
        body: web!("style.css"),
    },
];
