-- +goose Up
INSERT INTO goose_items (id, name) VALUES (1, 'a'), (2, 'b');

-- +goose Down
DELETE FROM goose_items;
