-- accounting.post's record of what it posted to the accounting API: one row per invoice key.
-- apply_count counts applications (above 1 means one got past the ledger), like invoices'.
CREATE TABLE IF NOT EXISTS accounting_posts (
    id                BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    item_key          VARCHAR(256)    NOT NULL,
    amount_cents      BIGINT          NOT NULL,
    currency          CHAR(3)         CHARACTER SET ascii NOT NULL,
    vendor_message_id VARCHAR(128)    NOT NULL,
    replayed          BOOLEAN         NOT NULL DEFAULT FALSE,
    apply_count       INT UNSIGNED    NOT NULL DEFAULT 1,
    posted_at         DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY accounting_posts_item_key (item_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
