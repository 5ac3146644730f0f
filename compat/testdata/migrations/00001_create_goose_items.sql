-- +goose Up
CREATE TABLE goose_items (
  id   bigint PRIMARY KEY,
  name text   NOT NULL
);

-- +goose Down
DROP TABLE goose_items;
