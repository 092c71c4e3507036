// Package lint holds no code: its tests check the repository's conventions
// (STYLE.md §30), like pebble's internal/lint. They parse every Go file of
// the module and fail with file:line for each violation:
//
//   - no fmt.Print*/log.* outside cmd/, tools/, tests/ and _test.go files
//     (components log through the *slog.Logger in their Config);
//   - no time.Now/Since/Until in the pure packages target/iscsi/login,
//     target/scsi/pr and cluster/ownership (they take time as an argument);
//   - no raw sync/atomic functions (atomic.AddInt64 …): use the typed
//     atomic.Int64 and friends;
//   - no init functions outside tests (no init() registration);
//   - package-level errors.New sentinels start with "<package>: "
//     (a command's directory name for package main);
//   - every package has a package doc comment.
//
// Run them with `go test ./internal/lint`.
package lint
