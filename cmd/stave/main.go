// Command stave is the Stave daemon and its command-line client.
//
//	stave serve [--config FILE] [--print-config] [--data-dir DIR] [--portal HOST:PORT]...
//	            [--advertise HOST:PORT]... [--api unix:PATH] [--discovery-chap USER:SECRET]
//	            [--log-level debug|info|warn|error] [--log-format text|json]
//	            [--nop-interval D] [--nop-timeout D] [--queue-depth N] [--scrub-rate SIZE]
//	            [--gc-interval D]   (flags override /etc/stave/stave.yaml, docs/configuration.md)
//	stave [--api unix:PATH] [--output table|json] volume create NAME --size 1GiB
//	            [--allow IQN]... [--chap USER:SECRET] [--mutual-chap USER:SECRET] [--block-size 512]
//	            [--policy K+M]
//	stave volume list | volume show NAME | volume delete NAME
//	stave volume clone VOL SNAP NEWVOL | volume clone VOL@SNAP NEWVOL | volume revert VOL SNAP
//	stave snapshot create VOL NAME | snapshot list [VOL] | snapshot delete VOL NAME
//	stave pool create --device PATH... [--segment-size 64MiB] | pool status | pool add-device PATH
//	stave pool replace-device OLD NEW | pool scrub | pool recover --data-dir DIR (daemon stopped)
//	stave session list
//	stave k8s pv VOLUME [--fs ext4] [--name PV] [--capacity SIZE] | k8s secret VOLUME [--name] [--namespace]
//	stave completion bash
//	stave version
//
// The client verbs reach the daemon at --api: unix:PATH, unix:///PATH, a
// socket path, or http(s)://HOST:PORT (serve's --http-listen) with
// --api-token-file and/or --api-cert, --api-key, --api-ca.
//
// serve exports every volume under DATA/volumes as the iSCSI target
// iqn.2026-11.dev.stave:<name>, LUN 0, and serves the admin API on a unix
// socket; the other verbs are clients of that API, except pool recover,
// which works on the data directory of a stopped daemon. Once the node
// has a pool (DATA/pool), new volumes live in it; older ones keep their
// sparse files. This is the only package that reads flags and the
// environment and calls os.Exit.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, restore the default action so that a
		// second Ctrl-C kills a shutdown that hangs.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit status: 0 on
// success, 1 after printing "stave: <message>" to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runApp(ctx, newApp(stdout, stderr), args)
}

// runApp is run with a given app (tests set app.Metadata).
func runApp(ctx context.Context, app *cli.App, args []string) int {
	if err := app.RunContext(ctx, reorderArgs(app, args)); err != nil {
		fmt.Fprintf(app.ErrWriter, "stave: %v\n", err)
		return 1
	}
	return 0
}
