CREATE TABLE authors (
  id   bigint PRIMARY KEY,
  name text   NOT NULL UNIQUE,
  bio  text
);
