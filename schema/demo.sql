-- A small legacy-style schema for trying hindsight locally (loaded by scripts/dev-up.sh).
CREATE TABLE IF NOT EXISTS brieff (
    bfkey     text PRIMARY KEY,          -- case id
    bfcorlid  text NOT NULL,             -- veteran file number
    bfso      text,                      -- representative type: the column the incident nulled
    bfregoff  text,                      -- regional office
    bfdloout  timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS representatives (
    id      bigserial PRIMARY KEY,
    bfkey   text NOT NULL REFERENCES brieff (bfkey) ON DELETE CASCADE,
    name    text NOT NULL,
    kind    text NOT NULL
);
INSERT INTO brieff (bfkey, bfcorlid, bfso, bfregoff)
SELECT 'C' || lpad(g::text, 6, '0'), lpad((100000000 + g)::text, 9, '0'),
       (ARRAY['A', 'B', 'F', 'O'])[1 + g % 4], 'RO' || (10 + g % 30)
FROM generate_series(1, 200) g
ON CONFLICT DO NOTHING;
