DROP TABLE accounting_posts;
