package config

import (
	"fmt"
	"io"

	"go.yaml.in/yaml/v3"
)

// Print writes c as YAML that Load accepts, with CHAP secrets replaced by
// "<redacted>" (the output goes to terminals and tickets). Call it after
// Finish to show the effective configuration.
func (c *Config) Print(w io.Writer) error {
	d := c.Clone()
	if d.DiscoveryCHAP != nil && d.DiscoveryCHAP.Secret != "" {
		d.DiscoveryCHAP.Secret = redacted
	}
	if _, err := fmt.Fprintln(w, "# Effective configuration of stave serve (docs/configuration.md)."); err != nil {
		return err
	}
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(d); err != nil {
		return err
	}
	return enc.Close()
}
