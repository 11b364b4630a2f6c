-- nilecast schema, part `core`, version 1: the change log, feed state, and the demo
-- schema. Plain tables and indexes only (Nile DB has no triggers or functions). Applied by `nilecast migrate` (or `nilecast --migrate`) in one transaction; every
-- statement is idempotent, so applying it twice changes nothing.

-- The change log. Column order matters for direct INSERTs: `xid` comes before `seq`, so
-- a transaction has its transaction id before it takes a seq (see the feed's horizon
-- rule in src/db/feed.rs).
CREATE TABLE IF NOT EXISTS nilecast_changes (
    xid            xid8        NOT NULL DEFAULT pg_current_xact_id(),
    seq            bigserial   PRIMARY KEY,
    tenant_id      text        NOT NULL,
    data_type      text        NOT NULL,
    entity_id      text,
    operation      text        NOT NULL DEFAULT 'update',
    payload        jsonb       NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- table-poll only: the watched row's key and updated_at, so a row version is logged
    -- once.
    source_key     text,
    source_version timestamptz
);
CREATE INDEX IF NOT EXISTS nilecast_changes_entity
    ON nilecast_changes (tenant_id, data_type, entity_id, seq);
CREATE INDEX IF NOT EXISTS nilecast_changes_time ON nilecast_changes (committed_at);
CREATE UNIQUE INDEX IF NOT EXISTS nilecast_changes_source_version
    ON nilecast_changes (tenant_id, data_type, source_key, source_version)
    WHERE source_version IS NOT NULL;

-- Where each feed reader stopped, and how far retention pruned.
CREATE TABLE IF NOT EXISTS nilecast_feed_state (
    name  text   PRIMARY KEY,
    seq   bigint NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);

-- table-poll cursors: the newest updated_at seen per watched table.
CREATE TABLE IF NOT EXISTS nilecast_table_cursors (
    table_name text PRIMARY KEY,
    updated_at timestamptz NOT NULL
);

-- The demo schema: tenant_id on every table.
CREATE TABLE IF NOT EXISTS products (
    tenant_id           text NOT NULL,
    id                  text NOT NULL,
    name                text NOT NULL,
    sku                 text NOT NULL,
    category            text NOT NULL,
    price               double precision NOT NULL DEFAULT 0,
    low_stock_threshold double precision,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE TABLE IF NOT EXISTS inventory (
    tenant_id           text NOT NULL,
    product_id          text NOT NULL,
    warehouse_id        text NOT NULL,
    quantity            double precision NOT NULL,
    low_stock_threshold double precision,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, product_id, warehouse_id)
);
CREATE INDEX IF NOT EXISTS inventory_updated ON inventory (updated_at, product_id, warehouse_id);
CREATE TABLE IF NOT EXISTS orders (
    tenant_id   text NOT NULL,
    id          text NOT NULL,
    customer_id text NOT NULL,
    status      text NOT NULL,
    total       double precision NOT NULL DEFAULT 0,
    currency    text NOT NULL DEFAULT 'EUR',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX IF NOT EXISTS orders_updated ON orders (updated_at, id);
CREATE TABLE IF NOT EXISTS order_tracking (
    tenant_id       text NOT NULL,
    id              bigserial PRIMARY KEY,
    order_id        text NOT NULL,
    customer_id     text,
    status          text NOT NULL,
    carrier         text,
    tracking_number text,
    location        text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS order_tracking_order ON order_tracking (tenant_id, order_id, id);
CREATE TABLE IF NOT EXISTS customer_activity (
    tenant_id     text NOT NULL,
    id            bigserial PRIMARY KEY,
    customer_id   text NOT NULL,
    activity_type text NOT NULL,
    product_id    text,
    category      text,
    session_id    text,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS customer_activity_time ON customer_activity (tenant_id, updated_at);
CREATE TABLE IF NOT EXISTS alerts (
    tenant_id       text NOT NULL,
    id              text NOT NULL,
    type            text NOT NULL,
    severity        text NOT NULL,
    message         text NOT NULL,
    data            jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    acknowledged_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
