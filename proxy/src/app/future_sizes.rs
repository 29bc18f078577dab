//! Keeps the connection's task small. Its future is allocated once per connection, at its full
//! size, for as long as the connection is open: at 1,000 connections every KiB of it is a MiB
//! of the proxy's memory (issue 17's target is 24 MiB peak there). It grows back easily: a
//! large value held across an `.await`, a value passed down through several `async fn`s (each
//! keeps its own copy), or a rare path (h2, hyper's HTTP/1, opaque TCP) inlined beside the
//! common one. The size is fixed for a given compiler and profile; the bound leaves headroom
//! for both, and sits far below what the task took before those paths were boxed (5.5 KB in
//! a debug build, 5.7 KB in release).

use std::mem::size_of;

use super::*;

/// The size of the future `f` returns, without calling it.
fn future_size<A, B, C, D, E, F: Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
    size_of::<F>()
}

fn size_of_serve_http<A, B, C, D, E, G, F: Future>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
    size_of::<F>()
}

/// The most a connection's task may take (1,376 bytes with rustc 1.95).
const CONNECTION_TASK_BOUND: usize = 2 * 1024;

#[test]
fn connection_task_stays_small() {
    let task = future_size(serve_task);
    let levels = [
        ("handle_connection", future_size(handle_connection)),
        ("accept", future_size(accept)),
        ("serve_http", size_of_serve_http(serve_http)),
    ];
    eprintln!("a connection's task: {task} bytes; below it: {levels:?}");
    assert!(
        task <= CONNECTION_TASK_BOUND,
        "a connection's task takes {task} bytes (bound {CONNECTION_TASK_BOUND}); below it: {levels:?}"
    );
}
