package adminapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// ErrUnreachable marks a failure to reach the daemon at all.
var ErrUnreachable = errors.New("adminapi: daemon unreachable")

// unreachableError says that the daemon could not be reached; it matches
// ErrUnreachable with errors.Is.
type unreachableError struct {
	path string
	err  error
}

// Error says which socket could not be reached and what to check.
func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the daemon at %s (is 'stave serve' running? set --api or STAVE_API): %v%s", e.path, e.err, tlsHint(e.err))
}

// Is matches ErrUnreachable.
func (e *unreachableError) Is(target error) bool { return target == ErrUnreachable }

// Unwrap returns the dial error.
func (e *unreachableError) Unwrap() error { return e.err }

// APIError is an error response from the daemon.
type APIError struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Message says what went wrong and what to fix.
	Message string
	// body is the response body (for Readiness, whose 503 carries the
	// state of every check).
	body []byte
}

// Error returns the daemon's message.
func (e *APIError) Error() string { return e.Message }

// Client talks to the admin API. It is safe for concurrent use.
type Client struct {
	hc    *http.Client
	path  string // the address as given, for messages
	base  string // URL prefix: http://stave for a socket, http(s)://HOST:PORT
	token string // bearer token for a TCP listener; "" for none
}

// do sends a request and decodes a JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("adminapi: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("adminapi: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return &unreachableError{path: c.path, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("adminapi: reading response: %w", err)
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.Unmarshal(b, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("daemon answered %s", resp.Status)
		}
		return &APIError{StatusCode: resp.StatusCode, Message: eb.Error, body: b}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("adminapi: bad response: %w", err)
		}
	}
	return nil
}

// CreateVolume creates a volume and returns it.
func (c *Client) CreateVolume(ctx context.Context, req CreateRequest) (*Volume, error) {
	v := new(Volume)
	if err := c.do(ctx, http.MethodPost, "/v1/volumes", req, v); err != nil {
		return nil, err
	}
	return v, nil
}

// ListVolumes returns every volume, sorted by name.
func (c *Client) ListVolumes(ctx context.Context) ([]Volume, error) {
	var vs []Volume
	if err := c.do(ctx, http.MethodGet, "/v1/volumes", nil, &vs); err != nil {
		return nil, err
	}
	return vs, nil
}

// GetVolume returns the named volume.
func (c *Client) GetVolume(ctx context.Context, name string) (*Volume, error) {
	v := new(Volume)
	if err := c.do(ctx, http.MethodGet, "/v1/volumes/"+url.PathEscape(name), nil, v); err != nil {
		return nil, err
	}
	return v, nil
}

// DeleteVolume closes the volume's sessions and deletes it.
func (c *Client) DeleteVolume(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(name), nil, nil)
}

// Sessions returns the daemon's iSCSI sessions.
func (c *Client) Sessions(ctx context.Context) ([]Session, error) {
	var ss []Session
	if err := c.do(ctx, http.MethodGet, "/v1/sessions", nil, &ss); err != nil {
		return nil, err
	}
	return ss, nil
}

// Health returns the daemon's health and version.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	h := new(Health)
	if err := c.do(ctx, http.MethodGet, "/healthz", nil, h); err != nil {
		return nil, err
	}
	return h, nil
}

// CreatePool creates the node's pool and returns its status.
func (c *Client) CreatePool(ctx context.Context, req PoolCreateRequest) (*PoolStatus, error) {
	st := new(PoolStatus)
	if err := c.do(ctx, http.MethodPost, "/v1/pool", req, st); err != nil {
		return nil, err
	}
	return st, nil
}

// PoolStatus returns the pool's devices, space and operations.
func (c *Client) PoolStatus(ctx context.Context) (*PoolStatus, error) {
	st := new(PoolStatus)
	if err := c.do(ctx, http.MethodGet, "/v1/pool", nil, st); err != nil {
		return nil, err
	}
	return st, nil
}

// AddDevice adds a device to the pool and returns the new status.
func (c *Client) AddDevice(ctx context.Context, path string) (*PoolStatus, error) {
	st := new(PoolStatus)
	if err := c.do(ctx, http.MethodPost, "/v1/pool/devices", AddDeviceRequest{Path: path}, st); err != nil {
		return nil, err
	}
	return st, nil
}

// ReplaceDevice starts rebuilding device old onto device newDev and returns
// the operation to follow with Operation.
func (c *Client) ReplaceDevice(ctx context.Context, old, newDev string) (*Operation, error) {
	op := new(Operation)
	if err := c.do(ctx, http.MethodPost, "/v1/pool/replace-device", ReplaceDeviceRequest{Old: old, New: newDev}, op); err != nil {
		return nil, err
	}
	return op, nil
}

// Scrub starts a scrub and returns the operation to follow with Operation.
func (c *Client) Scrub(ctx context.Context) (*Operation, error) {
	op := new(Operation)
	if err := c.do(ctx, http.MethodPost, "/v1/pool/scrub", struct{}{}, op); err != nil {
		return nil, err
	}
	return op, nil
}

// Operation returns a long operation's state and progress.
func (c *Client) Operation(ctx context.Context, id string) (*Operation, error) {
	op := new(Operation)
	if err := c.do(ctx, http.MethodGet, "/v1/pool/operations/"+url.PathEscape(id), nil, op); err != nil {
		return nil, err
	}
	return op, nil
}

// CreateSnapshot takes snapshot snap of volume vol.
func (c *Client) CreateSnapshot(ctx context.Context, vol, snap string) (*Snapshot, error) {
	s := new(Snapshot)
	if err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots", SnapshotRequest{Name: snap}, s); err != nil {
		return nil, err
	}
	return s, nil
}

// Snapshots lists the snapshots of vol, or of every pool volume when vol
// is empty.
func (c *Client) Snapshots(ctx context.Context, vol string) ([]Snapshot, error) {
	p := "/v1/snapshots"
	if vol != "" {
		p = "/v1/volumes/" + url.PathEscape(vol) + "/snapshots"
	}
	var ss []Snapshot
	if err := c.do(ctx, http.MethodGet, p, nil, &ss); err != nil {
		return nil, err
	}
	return ss, nil
}

// DeleteSnapshot deletes snapshot snap of volume vol.
func (c *Client) DeleteSnapshot(ctx context.Context, vol, snap string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+url.PathEscape(vol)+"/snapshots/"+url.PathEscape(snap), nil, nil)
}

// Clone creates volume newVol from snapshot snap of volume vol.
func (c *Client) Clone(ctx context.Context, vol, snap, newVol string) (*Volume, error) {
	v := new(Volume)
	if err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(vol)+"/clone", CloneRequest{Snapshot: snap, Name: newVol}, v); err != nil {
		return nil, err
	}
	return v, nil
}

// Revert sets volume vol back to snapshot snap.
func (c *Client) Revert(ctx context.Context, vol, snap string) (*Volume, error) {
	v := new(Volume)
	if err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(vol)+"/revert", RevertRequest{Snapshot: snap}, v); err != nil {
		return nil, err
	}
	return v, nil
}

// ResizeVolume grows the named volume to size bytes and returns it.
func (c *Client) ResizeVolume(ctx context.Context, name string, size int64) (*Volume, error) {
	v := new(Volume)
	if err := c.do(ctx, http.MethodPost, "/v1/volumes/"+url.PathEscape(name)+"/resize", ResizeRequest{Size: SizeValue(size)}, v); err != nil {
		return nil, err
	}
	return v, nil
}

// Readiness returns the daemon's readiness with the state of every
// check, whether it is ready (200) or not (503, Status "not ready", Error
// listing the failing checks): unlike Ready, a daemon that is not ready
// is no error here. An unreachable daemon or any other answer is.
func (c *Client) Readiness(ctx context.Context) (*Readiness, error) {
	rd := new(Readiness)
	err := c.do(ctx, http.MethodGet, "/readyz", nil, rd)
	var ae *APIError
	if errors.As(err, &ae) && ae.StatusCode == http.StatusServiceUnavailable {
		if json.Unmarshal(ae.body, rd) == nil && rd.Status != "" {
			return rd, nil
		}
	}
	if err != nil {
		return nil, err
	}
	return rd, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	c.hc.CloseIdleConnections()
}
