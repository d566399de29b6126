// Package sql embeds Atrium's database migrations (sql/migrations, applied
// by goose in order) so the binary carries its own schema.
package sql

import (
	"embed"
	"io/fs"
)

//go:embed migrations/*.sql
var files embed.FS

// Migrations returns the migration files, named NNNNN_description.sql.
func Migrations() fs.FS {
	sub, err := fs.Sub(files, "migrations")
	if err != nil {
		panic(err) // the directory is embedded at build time; cannot fail
	}
	return sub
}
