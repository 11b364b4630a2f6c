-- nilecast schema, part `triggers`, version 1: the trigger function behind
-- CHANGE_DETECTION=notify, and the demo tables' triggers. Not applied for `poll` or
-- `table-poll` (Nile DB supports neither triggers nor user-defined functions).

-- snake_case -> camelCase, for payloads built from whole rows.
CREATE OR REPLACE FUNCTION nilecast_camel(name text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT lower(left(t, 1)) || substr(t, 2)
    FROM (SELECT replace(initcap(replace(name, '_', ' ')), ' ', '') AS t) s
$$;

-- A row as a change payload: the mapping's keys taken from the row's columns, or, with
-- no mapping, every column but tenant_id with its name in camelCase.
CREATE OR REPLACE FUNCTION nilecast_payload(row_data jsonb, mapping jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN mapping IS NULL OR mapping = 'null'::jsonb THEN
            (SELECT coalesce(jsonb_object_agg(nilecast_camel(key), value), '{}'::jsonb)
             FROM jsonb_each(row_data) WHERE key <> 'tenant_id')
        ELSE
            (SELECT coalesce(jsonb_object_agg(key, row_data -> (value #>> '{}')), '{}'::jsonb)
             FROM jsonb_each(mapping))
    END
$$;

-- The trigger: one change-log row per changed row, then pg_notify of its seq.
-- Arguments: data type, mapping (JSON text or ''), tenant column, entity id column.
-- `SET nilecast.skip = 'on'` in a session turns it off for bulk loads.
CREATE OR REPLACE FUNCTION nilecast_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    row_data  jsonb;
    mapping   jsonb := NULLIF(TG_ARGV[1], '')::jsonb;
    tenant_col text := coalesce(NULLIF(TG_ARGV[2], ''), 'tenant_id');
    id_col    text := coalesce(NULLIF(TG_ARGV[3], ''), 'id');
    new_seq   bigint;
BEGIN
    IF current_setting('nilecast.skip', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        row_data := to_jsonb(OLD);
    ELSE
        row_data := to_jsonb(NEW);
    END IF;
    INSERT INTO nilecast_changes (tenant_id, data_type, entity_id, operation, payload)
    VALUES (
        coalesce(row_data ->> tenant_col, 'default'),
        TG_ARGV[0],
        row_data ->> id_col,
        lower(TG_OP),
        nilecast_payload(row_data, mapping)
    )
    RETURNING seq INTO new_seq;
    PERFORM pg_notify('nilecast_changes', new_seq::text);
    RETURN NULL;
END
$$;

-- Attaches the trigger to a table of yours:
--   SELECT nilecast_attach('my_stock', 'inventory',
--       '{"productId": "sku", "warehouseId": "site", "quantity": "qty"}', 'tenant_id', 'sku');
CREATE OR REPLACE FUNCTION nilecast_attach(
    table_name regclass, data_type text, mapping jsonb DEFAULT NULL,
    tenant_column text DEFAULT 'tenant_id', id_column text DEFAULT 'id'
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    trigger_name text := 'nilecast_' || replace(table_name::text, '.', '_');
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', trigger_name, table_name);
    EXECUTE format(
        'CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW '
        'EXECUTE FUNCTION nilecast_log_change(%L, %L, %L, %L)',
        trigger_name, table_name, data_type, coalesce(mapping::text, ''), tenant_column, id_column);
END
$$;

CREATE OR REPLACE FUNCTION nilecast_detach(table_name regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s',
        'nilecast_' || replace(table_name::text, '.', '_'), table_name);
END
$$;

-- The demo tables' triggers.
SELECT nilecast_attach('inventory', 'inventory', NULL, 'tenant_id', 'product_id');
SELECT nilecast_attach('orders', 'orders',
    '{"orderId": "id", "customerId": "customer_id", "status": "status", "total": "total",
      "currency": "currency", "updatedAt": "updated_at"}', 'tenant_id', 'id');
SELECT nilecast_attach('order_tracking', 'order_tracking',
    '{"orderId": "order_id", "customerId": "customer_id", "status": "status",
      "carrier": "carrier", "trackingNumber": "tracking_number", "location": "location"}',
    'tenant_id', 'order_id');
SELECT nilecast_attach('customer_activity', 'customer_activity', NULL, 'tenant_id', 'customer_id');
