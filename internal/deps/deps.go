// Package deps pins the project's chosen third-party modules in go.mod
// before every package that uses them has landed. Delete a line once a
// real package imports that module.
package deps

import (
	_ "github.com/cockroachdb/datadriven"
)
