package adminapi

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"stave.dev/stave/internal/volume"
)

// defaultReadyTimeout bounds all readiness checks of one /readyz request.
const defaultReadyTimeout = 3 * time.Second

// NodeConfig tells the API how initiators reach the node's volumes. Set
// it with SetNode; it must not be changed afterwards.
type NodeConfig struct {
	// Portals returns the HOST:PORT portals through which initiators reach
	// the named volume, the preferred one (the owner's) first: SendTargets
	// addresses, never wildcards. Today `stave serve` returns this node's
	// advertised portals; a cluster returns those of every node that
	// serves the volume. Nil, or an empty result, means no portal is
	// known. It must be safe for concurrent use.
	Portals func(volume string) []string
	// DiscoveryCHAP is the CHAP that discovery sessions must present;
	// nil when discovery needs none.
	DiscoveryCHAP *DiscoveryCHAP
}

// DiscoveryCHAP is the node's discovery CHAP (RFC 7143 §12.1.3).
type DiscoveryCHAP struct {
	User   string `json:"user"`
	Secret string `json:"secret"`
}

// SetNode sets how initiators reach the node (GET
// /v1/volumes/{name}/connection). Call it before Serve.
func (s *Server) SetNode(n NodeConfig) { s.node.Store(&n) }

// Connection is what an initiator needs to use a volume: the body of GET
// /v1/volumes/{name}/connection. It carries CHAP secrets; only callers of
// the unix socket or of an authenticated TCP listener get it.
type Connection struct {
	Volume    string `json:"volume"`
	Target    string `json:"target"`
	LUN       int    `json:"lun"`
	Size      int64  `json:"size"`
	BlockSize int    `json:"block_size"`
	// Portals are HOST:PORT addresses to log in through, preferred first.
	Portals []string `json:"portals"`
	// CHAP holds the volume's CHAP credentials (with the mutual ones),
	// nil when the volume has no CHAP.
	CHAP *volume.CHAP `json:"chap,omitempty"`
	// DiscoveryCHAP is what SendTargets needs, nil when nothing.
	DiscoveryCHAP *DiscoveryCHAP `json:"discovery_chap,omitempty"`
}

func (s *Server) connection(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		methodNotAllowed(w, "GET")
		return
	}
	name := r.PathValue("name")
	sp, err := s.vols.Get(name)
	if err != nil {
		s.fail(w, "volume connection", err)
		return
	}
	c := Connection{Volume: sp.Name, Target: sp.TargetName(), Size: sp.Size, BlockSize: sp.BlockSize, Portals: []string{}}
	if sp.CHAP != nil {
		ch := *sp.CHAP
		c.CHAP = &ch
	}
	if n := s.node.Load(); n != nil {
		if n.Portals != nil {
			if p := n.Portals(sp.Name); len(p) > 0 {
				c.Portals = slices.Clone(p)
			}
		}
		if d := n.DiscoveryCHAP; d != nil {
			dc := *d
			c.DiscoveryCHAP = &dc
		}
	}
	writeJSON(w, http.StatusOK, c)
}

// readinessCheck is one named condition of /readyz.
type readinessCheck struct {
	name  string
	check func(ctx context.Context) error
}

// AddReadinessCheck adds a condition that GET /readyz requires: check
// returns nil when it holds, or an error that says what is wrong and what
// to do. Checks run on every /readyz request, concurrently with each
// other and with requests; all of them together get three seconds. The
// API adds "volumes" itself (every catalogued volume is exported);
// `stave serve` adds "portals" and "pool", and the cluster store adds its
// own (e.g. "etcd"). A name given twice replaces the earlier check.
func (s *Server) AddReadinessCheck(name string, check func(ctx context.Context) error) {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	s.checks = slices.DeleteFunc(s.checks, func(c readinessCheck) bool { return c.name == name })
	s.checks = append(s.checks, readinessCheck{name, check})
}

// Readiness is the body of GET /readyz.
type Readiness struct {
	// Status is "ready" or "not ready".
	Status string `json:"status"`
	// Error lists the failing checks and why; empty when ready.
	Error string `json:"error,omitempty"`
	// Checks maps each check's name to "ok" or its error.
	Checks map[string]string `json:"checks"`
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		methodNotAllowed(w, "GET")
		return
	}
	rd := s.readiness(r.Context())
	code := http.StatusOK
	if rd.Error != "" {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, rd)
}

// readiness runs every check concurrently.
func (s *Server) readiness(ctx context.Context) Readiness {
	s.readyMu.Lock()
	checks := slices.Clone(s.checks)
	s.readyMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.readyTimeout)
	defer cancel()
	errs := make([]error, len(checks))
	done := make(chan int, len(checks))
	for i, c := range checks {
		go func() {
			errs[i] = c.check(ctx)
			done <- i
		}()
	}
	rd := Readiness{Status: "ready", Checks: make(map[string]string, len(checks))}
	finished := make([]bool, len(checks))
	for range checks {
		select {
		case i := <-done:
			finished[i] = true
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	var bad []string
	for i, c := range checks {
		msg := "ok"
		switch {
		case !finished[i]:
			msg = fmt.Sprintf("no answer within %v", s.readyTimeout)
		case errs[i] != nil:
			msg = errs[i].Error()
		}
		rd.Checks[c.name] = msg
		if msg != "ok" {
			bad = append(bad, c.name+": "+msg)
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		rd.Status = "not ready"
		rd.Error = "not ready: " + strings.Join(bad, "; ")
	}
	return rd
}

// volumesExported is the "volumes" readiness check.
func (s *Server) volumesExported(context.Context) error {
	var missing []string
	for _, sp := range s.vols.List() {
		if s.vols.Local(sp) && !s.targets.Exported(sp.Name) {
			missing = append(missing, sp.Name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("volumes not exported: %s: see the daemon log for why they could not be opened",
			strings.Join(missing, ", "))
	}
	return nil
}

// Connection returns how initiators reach the named volume, with its CHAP
// secrets and the node's discovery CHAP.
func (c *Client) Connection(ctx context.Context, name string) (*Connection, error) {
	cn := new(Connection)
	if err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name)+"/connection", nil, cn); err != nil {
		return nil, err
	}
	return cn, nil
}

// Ready returns the daemon's readiness. A daemon that is not ready gives
// an *APIError (status 503) whose message lists what is wrong.
func (c *Client) Ready(ctx context.Context) (*Readiness, error) {
	rd := new(Readiness)
	if err := c.do(ctx, http.MethodGet, "/readyz", nil, rd); err != nil {
		return nil, err
	}
	return rd, nil
}
