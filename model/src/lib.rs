//! `phoenix-model`: an executable model of the Phoenix homeserver (Authentication, Queuing
//! and Delivery Services), of the honest client, and of the threat model's adversaries.
//!
//! Layout:
//! - [`ids`]: identifiers (small numbers) and symbolic cryptography ([`ids::Signed`],
//!   [`ids::Sealed`]).
//! - [`queue`]: the queue lifecycle shared by direct and QS queues (dequeue semantics).
//! - [`call`]: one request variant per server operation, and the replies; outcomes carry
//!   the server's stable error codes.
//! - [`as_`], [`qs`], [`ds`]: the three services, one handler per operation, checking
//!   what the server checks in the server's order.
//! - [`client`]: the honest client (what `phoenix-client` does), built from calls.
//! - [`network`], [`adversary`]: the network (drop, duplicate, reorder), the snapshot
//!   adversary, the honest-but-curious operator, a malicious AS, forged and replayed
//!   requests. [`federation`]: not yet modelled.
//! - [`recovery`]: requests whose answer is lost, and how the client settles them.
//! - [`state`]: the world and [`state::step`], the one transition function.
//! - [`invariants`]: the properties, as `inv_*` predicates over the state.
//! - [`world`]: the configurations the model checker explores and the conformance suites
//!   start from.
//!
//! What it is: an executable reference, pure and deterministic (no I/O, no interior
//! mutability, no trait objects, `BTreeMap`/`BTreeSet` only), exhaustively model-checked
//! on bounded configurations by its tests, and compared with the real server by the
//! conformance suites. It is not extracted to a proof assistant and nothing about it is
//! proved (docs/model.md says why: the hax toolchain cannot be installed on this machine).
//! The postconditions of key transitions (`queue::enqueue`, `queue::dequeue`,
//! `qs::take_one`, `qs::publish_key_packages`, `ds::fan_out`, `as_::register`,
//! `federation::queue_config_domain`) are `debug_assert!`s over the new state, so every
//! test run and every state the model checker explores executes them.
//!
//! The model shares vocabulary with the server ([`phoenix_types::error::ErrorCode`]) and
//! nothing else: it never calls server or client code, so the conformance suite that
//! compares the two proves something.

pub mod adversary;
pub mod as_;
pub mod call;
pub mod client;
pub mod ds;
pub mod federation;
pub mod ids;
pub mod invariants;
pub mod mutants;
pub mod network;
pub mod qs;
pub mod queue;
pub mod recovery;
pub mod state;
pub mod world;
