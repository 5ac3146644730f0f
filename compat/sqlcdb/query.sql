-- name: GetAuthor :one
SELECT * FROM authors
WHERE id = $1;

-- name: ListAuthors :many
SELECT * FROM authors
ORDER BY id;

-- name: CreateAuthor :one
INSERT INTO authors (id, name, bio)
VALUES ($1, $2, $3)
RETURNING *;

-- name: Sleep :exec
SELECT pg_sleep($1::float8);
