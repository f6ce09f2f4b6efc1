-- A registration in progress (CL-AMBIG-2): the keys, ids and exact request bytes of
-- `as/register` and `qs/create_user`, written before either is sent, and what each
-- answered once it did. A lost answer is settled by sending the same bytes again (the
-- server answers a repeated registration with its first result); `phoenix register` run
-- again on this home finishes from here. Deleted when the registration is complete
-- (identity stored, packages published).
CREATE TABLE pending_registration (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    -- JSON of crate::client::registration::Pending
    state TEXT NOT NULL
);
