package main

import (
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// reorderArgs lets flags follow positional arguments, which urfave/cli v2
// does not: it stops parsing flags at the first positional argument. Given
// os.Args-style args (program name first), it finds the command path
// (global flags, command, subcommand, ...), then moves every flag of the
// leaf command, with its value, in front of the leaf's positional
// arguments, and moves global flags given after the command path back to
// the global position. So
//
//	stave volume create db --size 1GiB --output json
//
// becomes
//
//	stave --output json volume create --size 1GiB db
//
// Everything after "--" is left alone.
func reorderArgs(app *cli.App, args []string) []string {
	// Shell completion (urfave/cli looks for its flag at the very end).
	if len(args) < 2 || args[len(args)-1] == "--generate-bash-completion" {
		return args
	}
	out := []string{args[0]}
	var global []string
	rest := args[1:]

	// Global flags before the command.
	for len(rest) > 0 && isFlag(rest[0]) {
		n := flagLen(app.Flags, rest)
		global = append(global, rest[:n]...)
		rest = rest[n:]
	}
	// Command path.
	var path []string
	cmds := app.Commands
	var leaf *cli.Command
	for len(rest) > 0 && !isFlag(rest[0]) {
		c := findCommand(cmds, rest[0])
		if c == nil {
			break
		}
		leaf = c
		path = append(path, rest[0])
		rest = rest[1:]
		cmds = c.Subcommands
		if len(cmds) == 0 {
			break
		}
		// Flags of an intermediate command stay with it.
		for len(rest) > 0 && isFlag(rest[0]) {
			n := flagLen(c.Flags, rest)
			path = append(path, rest[:n]...)
			rest = rest[n:]
		}
	}
	if leaf == nil {
		return args
	}
	var flags, pos []string
	for len(rest) > 0 {
		a := rest[0]
		switch {
		case a == "--":
			pos = append(pos, rest...)
			rest = nil
		case isFlag(a) && lookupFlag(leaf.Flags, a) == nil && lookupFlag(app.Flags, a) != nil:
			n := flagLen(app.Flags, rest)
			global = append(global, rest[:n]...)
			rest = rest[n:]
		case isFlag(a):
			n := flagLen(leaf.Flags, rest)
			flags = append(flags, rest[:n]...)
			rest = rest[n:]
		default:
			pos = append(pos, a)
			rest = rest[1:]
		}
	}
	out = append(out, global...)
	out = append(out, path...)
	out = append(out, flags...)
	return append(out, pos...)
}

// isFlag reports whether a looks like a flag ("-x", "--xy", not "-").
func isFlag(a string) bool { return len(a) > 1 && a[0] == '-' && a != "--" }

// flagName returns the name of flag argument a without dashes and "=value".
func flagName(a string) string {
	a = strings.TrimLeft(a, "-")
	name, _, _ := strings.Cut(a, "=")
	return name
}

func lookupFlag(flags []cli.Flag, a string) cli.Flag {
	name := flagName(a)
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	if name == "help" || name == "h" {
		return cli.HelpFlag
	}
	return nil
}

// flagLen returns how many of args (starting with a flag) the flag takes:
// 1 for booleans, "--x=v" and unknown flags, else 2 (flag and value).
func flagLen(flags []cli.Flag, args []string) int {
	a := args[0]
	if strings.Contains(a, "=") {
		return 1
	}
	f := lookupFlag(flags, a)
	if f == nil {
		return 1
	}
	if _, ok := f.(*cli.BoolFlag); ok {
		return 1
	}
	if len(args) < 2 {
		return 1
	}
	return 2
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
