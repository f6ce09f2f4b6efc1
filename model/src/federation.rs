//! Federation: not yet modelled.
//!
//! The federation requirements and the malicious remote server adversary are therefore
//! not modelled yet. The federation issue (several homeservers, the durable outbox between them, signed
//! server-to-server requests, a malicious remote server that forges, replays and
//! misroutes) is being built in the server now. Until it lands, the model has any number
//! of homeservers but no link between them: a call to a domain that has no server in the
//! state answers `UNAVAILABLE`, and fan-out to a queue config of another domain is
//! dropped. The invariants are stated per homeserver so that they
//! carry over unchanged once federation is modelled.
