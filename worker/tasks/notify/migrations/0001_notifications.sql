-- The notification example's table: one row per message a vendor accepted, written in the
-- same transaction as the item's ledger row. item_key is UNIQUE; apply_count counts
-- applications, so a delivery recorded twice (the ledger bypassed) reads apply_count > 1.
CREATE TABLE IF NOT EXISTS notifications (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    item_key          VARCHAR(256)    NOT NULL,
    vendor            VARCHAR(64)     NOT NULL,
    recipient         VARCHAR(64)     NOT NULL,
    vendor_message_id VARCHAR(128)    NOT NULL,
    replayed          BOOLEAN         NOT NULL DEFAULT FALSE,
    apply_count       INT UNSIGNED    NOT NULL DEFAULT 1,
    delivered_at      DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY notifications_item_key (item_key),
    KEY notifications_vendor (vendor, delivered_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
