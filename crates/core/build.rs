//! `sqlx::migrate!` embeds `migrations/` at compile time, but cargo cannot see that
//! directory: without this a new migration file leaves a stale build (cached CI targets,
//! bench worktrees) applying the old set.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
