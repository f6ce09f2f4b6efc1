-- Where to reach other homeservers (from `--resolve DOMAIN=URL`); others are at
-- https://DOMAIN.
CREATE TABLE resolve (
    domain TEXT PRIMARY KEY,
    url TEXT NOT NULL
);
