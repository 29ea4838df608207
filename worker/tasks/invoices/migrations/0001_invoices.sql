-- The invoice example's tables. invoices.item_key is UNIQUE, so a duplicate invoice is
-- impossible even if the ledger were bypassed; apply_count counts applications instead, so an
-- invoice applied twice (the ledger bypassed or lost) reads apply_count > 1 and the checks fail.
-- IF NOT EXISTS: databases migrated before the task owned its schema already hold both tables.
CREATE TABLE IF NOT EXISTS customers (
    id         INT UNSIGNED NOT NULL AUTO_INCREMENT,
    code       VARCHAR(64)  NOT NULL,
    name       VARCHAR(200) NOT NULL,
    created_at DATETIME(3)  NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (id),
    UNIQUE KEY customers_code (code)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS invoices (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    item_key     VARCHAR(256)    NOT NULL,
    customer_id  INT UNSIGNED    NOT NULL,
    amount_cents BIGINT          NOT NULL,
    currency     CHAR(3)         CHARACTER SET ascii NOT NULL,
    description  VARCHAR(500)    NULL,
    apply_count  INT UNSIGNED    NOT NULL DEFAULT 1,
    created_at   DATETIME(3)     NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY invoices_item_key (item_key),
    KEY invoices_customer (customer_id, created_at),
    CONSTRAINT invoices_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id),
    CONSTRAINT invoices_amount_positive CHECK (amount_cents > 0)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 ROW_FORMAT = DYNAMIC;

INSERT IGNORE INTO customers (code, name) VALUES
    ('acme', 'Acme Corporation'),
    ('globex', 'Globex Corporation'),
    ('initech', 'Initech'),
    ('umbrella', 'Umbrella Corporation'),
    ('hooli', 'Hooli');
