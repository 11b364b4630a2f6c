-- nilecast schema, part `core`, version 2: Socket.IO sessions kept for connection
-- state recovery, so a client can recover on any node of a deployment (and after a
-- restart). Written when a connection ends; taken once by the CONNECT that recovers it.
CREATE TABLE IF NOT EXISTS nilecast_recovery (
    pid        text PRIMARY KEY,
    tenant_id  text NOT NULL,
    user_id    text NOT NULL,
    namespace  text NOT NULL,
    filters    jsonb NOT NULL,
    since_seq  bigint NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS nilecast_recovery_expiry ON nilecast_recovery (expires_at);
