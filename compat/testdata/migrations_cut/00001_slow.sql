-- +goose Up
SELECT pg_sleep(0.05);

-- +goose Down
SELECT 1;
