package main

import (
	"context"
	"fmt"

	"stave.dev/stave/internal/initiator"
)

// The QD1 latency runs use internal/initiator: neither iscsi-perf nor
// qemu-img bench reports percentiles, and Debian's fio has no libiscsi
// engine. It is written from the RFC, not from Stave's codec, so that it
// measures Stave and tgt alike.

// dialSession connects to u, logs in as initiator and asks the LU's
// capacity (retrying past the unit attention of a new nexus).
func dialSession(ctx context.Context, u initiator.URL, name string) (*initiator.Session, initiator.Capacity, error) {
	s, err := initiator.Dial(ctx, initiator.Config{Addr: u.Addr, Target: u.Target, LUN: u.LUN, InitiatorName: name})
	if err != nil {
		return nil, initiator.Capacity{}, err
	}
	for i := 0; ; i++ {
		c, err := s.ReadCapacity(ctx)
		if err == nil {
			return s, c, nil
		}
		if _, isStatus := initiator.StatusOf(err); !isStatus || i == 4 {
			s.Abort()
			return nil, initiator.Capacity{}, fmt.Errorf("READ CAPACITY: %w", err)
		}
	}
}
