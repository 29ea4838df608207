-- The processed-message ledger: one row per applied work item, keyed by the message's
-- dedup id (hex SHA-256 of task:key). Written in the same transaction as the task's effect,
-- so a redelivered message is recognised and only deleted.
CREATE TABLE processed_messages (
    dedup_id     CHAR(64)     CHARACTER SET ascii NOT NULL,
    task         VARCHAR(128) NOT NULL,
    item_key     VARCHAR(256) NOT NULL,
    message_id   VARCHAR(128) NOT NULL,
    group_id     VARCHAR(128) NOT NULL,
    processed_at DATETIME(3)  NOT NULL,
    PRIMARY KEY (dedup_id),
    KEY processed_messages_processed_at (processed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 ROW_FORMAT = DYNAMIC;
