-- How many times each invoice was applied. The UNIQUE key keeps a second application from adding
-- a row, so counting rows cannot show one; the insert bumps this counter instead, so an invoice
-- applied twice (the ledger bypassed or lost) reads apply_count > 1 and the checks can fail.
-- depends: 0002_invoices
ALTER TABLE invoices
    ADD COLUMN apply_count INT UNSIGNED NOT NULL DEFAULT 1 AFTER description;
