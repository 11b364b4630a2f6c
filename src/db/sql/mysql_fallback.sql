-- The tables the MySQL / MariaDB read fallback reads (DB_HOST, DB_PORT, DB_USER,
-- DB_PASSWORD, DB_NAME). They mirror the demo schema's business tables, column for
-- column; an existing database can offer views of these names instead. Times are UTC.
-- While PostgreSQL / Nile DB is unreachable, inventory:get-current and the
-- data:request types inventory_summary, low_stock_items, order_stats, recent_orders and
-- customer_activity are answered from here; the change log, alerts, replay and
-- orders:track need PostgreSQL.

CREATE TABLE IF NOT EXISTS products (
    tenant_id           VARCHAR(128) NOT NULL,
    id                  VARCHAR(128) NOT NULL,
    name                VARCHAR(255) NOT NULL,
    sku                 VARCHAR(128) NOT NULL,
    category            VARCHAR(128) NOT NULL,
    price               DOUBLE NOT NULL DEFAULT 0,
    low_stock_threshold DOUBLE NULL,
    updated_at          DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE IF NOT EXISTS inventory (
    tenant_id           VARCHAR(128) NOT NULL,
    product_id          VARCHAR(128) NOT NULL,
    warehouse_id        VARCHAR(128) NOT NULL,
    quantity            DOUBLE NOT NULL,
    low_stock_threshold DOUBLE NULL,
    updated_at          DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (tenant_id, product_id, warehouse_id)
);

CREATE TABLE IF NOT EXISTS orders (
    tenant_id   VARCHAR(128) NOT NULL,
    id          VARCHAR(128) NOT NULL,
    customer_id VARCHAR(128) NOT NULL,
    status      VARCHAR(64) NOT NULL,
    total       DOUBLE NOT NULL DEFAULT 0,
    currency    VARCHAR(8) NOT NULL DEFAULT 'EUR',
    created_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    updated_at  DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (tenant_id, id),
    KEY orders_updated (tenant_id, updated_at)
);

CREATE TABLE IF NOT EXISTS customer_activity (
    tenant_id     VARCHAR(128) NOT NULL,
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    customer_id   VARCHAR(128) NOT NULL,
    activity_type VARCHAR(64) NOT NULL,
    product_id    VARCHAR(128) NULL,
    category      VARCHAR(128) NULL,
    session_id    VARCHAR(128) NULL,
    updated_at    DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY customer_activity_time (tenant_id, updated_at)
);
