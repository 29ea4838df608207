ALTER TABLE invoices DROP COLUMN apply_count;
