//go:build !linux

package floatip

import (
	"context"
	"fmt"
)

// Claim returns an error wrapping ErrUnsupported: floating addresses need
// Linux (rtnetlink and AF_PACKET).
func Claim(ctx context.Context, c Config) error {
	return fmt.Errorf("%w: cannot claim %s on %s", ErrUnsupported, c.Prefix, c.Link)
}

// Renew returns an error wrapping ErrUnsupported.
func Renew(c Config) error {
	return fmt.Errorf("%w: cannot renew %s on %s", ErrUnsupported, c.Prefix, c.Link)
}

// Release returns an error wrapping ErrUnsupported.
func Release(c Config) error {
	return fmt.Errorf("%w: cannot release %s on %s", ErrUnsupported, c.Prefix, c.Link)
}
