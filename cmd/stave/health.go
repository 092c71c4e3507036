package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"stave.dev/stave/internal/adminapi"
)

// defaultHealthTimeout bounds `stave health` when --timeout is not given;
// /readyz itself gives all its checks three seconds.
const defaultHealthTimeout = 10 * time.Second

func healthCommand() *cli.Command {
	return &cli.Command{
		Name:  "health",
		Usage: "check that the daemon is alive (/healthz) or, with --ready, ready to serve (/readyz); exit 1 when not",
		Description: "Without --ready, asks GET /healthz: the daemon's API answers (a liveness probe).\n" +
			"With --ready, asks GET /readyz and prints each check: \"portals\" (every configured portal is\n" +
			"listening), \"pool\" (the node's pool is open), \"volumes\" (every volume of this node is exported)\n" +
			"and \"etcd\" (the cluster store answers). A daemon that is not ready makes it exit with status 1\n" +
			"after printing the failing checks, so it serves as a readiness or startup probe:\n" +
			"  stave --api unix:/run/stave/stave.sock health --ready",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "ready", Usage: "check readiness (/readyz): portals listening, pool open, volumes exported, etcd healthy"},
			&cli.DurationFlag{Name: "timeout", Value: defaultHealthTimeout, Usage: "give up after `DURATION` (e.g. 5s)"},
		},
		Action: healthAction,
	}
}

func healthAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("health takes no arguments, got %q", c.Args().Slice())
	}
	o, err := output(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("timeout")
	if timeout <= 0 {
		return fmt.Errorf("--timeout %v: give a positive duration, e.g. 5s", timeout)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(c.Context, timeout)
	defer cancel()
	if !c.Bool("ready") {
		h, err := cl.Health(ctx)
		if err != nil {
			return healthErr(ctx, timeout, err)
		}
		if o == "json" {
			return writeJSON(c.App.Writer, h)
		}
		fmt.Fprintf(c.App.Writer, "%s (version %s)\n", h.Status, h.Version)
		return nil
	}
	rd, err := cl.Readiness(ctx)
	if err != nil {
		return healthErr(ctx, timeout, err)
	}
	if o == "json" {
		err = writeJSON(c.App.Writer, rd)
	} else {
		err = writeReadiness(c, rd)
	}
	if err != nil {
		return err
	}
	if rd.Status != "ready" {
		if rd.Error != "" {
			return errors.New(rd.Error)
		}
		return fmt.Errorf("daemon reports status %q", rd.Status)
	}
	return nil
}

// healthErr says that the daemon did not answer in time, else returns err.
func healthErr(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("no answer from the daemon within --timeout %v: %w", timeout, err)
	}
	return err
}

// writeReadiness renders the checks one per line, by name.
func writeReadiness(c *cli.Context, rd *adminapi.Readiness) error {
	tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tSTATE")
	for _, name := range slices.Sorted(maps.Keys(rd.Checks)) {
		fmt.Fprintf(tw, "%s\t%s\n", name, rd.Checks[name])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(c.App.Writer, rd.Status)
	return err
}
