//! The merchant dashboard and the ops console: server-rendered pages and their JSON twins. Nothing here yet.
