//! `applianced controller`: the fleet side. This release has its foundations: the
//! configuration (`crate::config::controller`), the store ([`store`]) on SQLite or
//! PostgreSQL through one code path, and operator credentials ([`auth`]).

pub mod auth;
pub mod store;
